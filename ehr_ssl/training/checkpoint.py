"""Training checkpoints: everything a killed run needs to continue bit for bit.

A checkpoint is a directory `checkpoints/step-XXXXXXXX/` written atomically (temp + rename):
`model.safetensors` (the weights), `state.pt` (optimizer state, RNG states, step and data
position: tensors and plain containers only, read back with `torch.load(weights_only=True)`,
which refuses arbitrary pickled objects) and `meta.json`. The learning-rate schedule is a pure
function of the step, so the step is the scheduler's whole state.

A damaged newest checkpoint stops a resume with one line naming it (never a silent fall back to
an older one: removing it, the user chooses to resume from the one before).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from ehr_ssl.artifacts import load_safetensors, save_safetensors, write_failure
from ehr_ssl.atomic import atomic_directory
from ehr_ssl.errors import InputError
from ehr_ssl.layout import CHECKPOINTS_DIR, WEIGHTS_FILE

STATE_FILE = "state.pt"
STATE_KEYS = ("step", "data_position", "optimizer", "torch_rng", "cuda_rng", "generator",
              "generator_device")  # fmt: skip


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    data_position: dict[str, int],
    keep: int,
) -> Path:
    """Write the checkpoint of `step` and delete all but the newest `keep`."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    path = root / f"step-{step:08d}"
    for stale in root.glob(".step-*.tmp-*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_directory(path, overwrite=True) as tmp:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_safetensors(weights, tmp / WEIGHTS_FILE)
        state = {
            "step": step,
            "data_position": data_position,
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            # Only a run that used CUDA has CUDA RNG state (asking would initialize every GPU).
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "generator": generator.get_state(),
            "generator_device": generator.device.type,
        }
        _save_state(state, tmp / STATE_FILE)
        try:
            meta = json.dumps({"step": step, "data_position": data_position})
            (tmp / "meta.json").write_text(meta)
        except OSError as e:
            raise write_failure(path / "meta.json", e) from None
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _save_state(state: dict, path: Path) -> None:
    """torch.save, a failure raised as an OSError naming the file. torch reports a full disk
    as a RuntimeError ("unexpected pos"); writing through a Python file keeps the OSError
    behind it, and with it the cause."""
    try:
        with path.open("wb") as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:
        raise write_failure(path, e) from None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (temporary directories of interrupted writes are skipped)."""
    found = sorted((Path(run_dir) / CHECKPOINTS_DIR).glob("step-*"))
    return found[-1] if found else None


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[int, dict[str, int]]:
    """Restore model, optimizer and RNG states in place; returns (step, data position).

    Raises:
        InputError: naming the checkpoint file that is damaged or does not fit the model.
    """
    remedy = f"remove {path.name} to resume from the checkpoint before it (or from the start)"
    try:
        weights = load_safetensors(path / WEIGHTS_FILE, what="checkpoint weights")
    except InputError as e:
        raise InputError(f"{e.problem}; {remedy}", file=e.file) from None
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle and OS errors alike: the file cannot be used
        raise InputError(
            f"unreadable checkpoint ({type(e).__name__}); {remedy}", file=str(path / STATE_FILE)
        ) from None
    if not isinstance(state, dict) or any(key not in state for key in STATE_KEYS):
        raise InputError(
            f"unreadable checkpoint (not a training state); {remedy}", file=str(path / STATE_FILE)
        )
    if state.get("generator_device") != generator.device.type:
        raise InputError(
            f"written on {state.get('generator_device')}, resumed on {generator.device.type}: "
            "resume on the device type the run started on",
            file=str(path),
        )
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise InputError(
            f"does not fit this model ({type(e).__name__}): was the configuration or the "
            "tokenizer changed?",
            file=str(path),
        ) from None

    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    generator.set_state(state["generator"])
    return state["step"], state["data_position"]
