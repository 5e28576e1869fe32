"""Training checkpoints: everything a killed run needs to continue bit for bit.

A checkpoint is a directory `checkpoints/step-XXXXXXXX/` written atomically (temp + rename):
`model.safetensors` (the weights), `state.pt` (optimizer state, RNG states, step and data
position: tensors and plain containers only, read back with `torch.load(weights_only=True)`,
which refuses arbitrary pickled objects) and `meta.json`. The learning-rate schedule is a pure
function of the step, so the step is the scheduler's whole state.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ehr_ssl.atomic import atomic_directory
from ehr_ssl.errors import InputError
from ehr_ssl.layout import CHECKPOINTS_DIR, WEIGHTS_FILE


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
        save_file(weights, str(tmp / WEIGHTS_FILE))
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
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "data_position": data_position}))
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


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
    """Restore model, optimizer and RNG states in place; returns (step, data position)."""
    try:
        weights = load_file(str(path / WEIGHTS_FILE))
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors, pickle and OS errors all mean the same thing here
        raise InputError(f"unreadable checkpoint ({type(e).__name__})", file=str(path)) from None
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
