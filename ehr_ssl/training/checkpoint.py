"""Training checkpoints: everything a killed run needs to continue bit for bit.

A checkpoint is a directory `checkpoints/step-XXXXXXXX/` written atomically (temp + rename):
`model.safetensors` (the weights), `state.safetensors` (the optimizer's per-parameter tensors and
the RNG states), `state.json` (step, data position, the optimizer's hyper-parameters and any
per-parameter numbers) and `meta.json`: nothing is pickled. A checkpoint of an earlier version
(`state.pt`) is still read, with `torch.load(weights_only=True)`, which refuses arbitrary pickled
objects. The learning-rate schedule is a pure function of the step, so the step is the
scheduler's whole state.

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

STATE_TENSORS_FILE = "state.safetensors"
STATE_JSON_FILE = "state.json"
LEGACY_STATE_FILE = "state.pt"  # before 2026-12-07: the same state, torch.save'd
STATE_KEYS = ("step", "data_position", "optimizer", "torch_rng", "cuda_rng", "generator",
              "generator_device")  # fmt: skip
_OPTIMIZER = "optimizer"  # tensor names "optimizer/<parameter index>/<name>"


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
        tensors, plain = _split_state(state)
        save_safetensors(tensors, tmp / STATE_TENSORS_FILE)
        try:
            (tmp / STATE_JSON_FILE).write_text(json.dumps(plain))
        except OSError as e:
            raise write_failure(path / STATE_JSON_FILE, e) from None
        try:
            meta = json.dumps({"step": step, "data_position": data_position})
            (tmp / "meta.json").write_text(meta)
        except OSError as e:
            raise write_failure(path / "meta.json", e) from None
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _split_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A training state as tensors (for safetensors) and JSON-ready rest (`_join_state`'s
    inverse)."""
    optimizer = state["optimizer"]
    tensors, numbers = {}, {}
    for index, entry in optimizer["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{_OPTIMIZER}/{index}/{name}"] = value.detach().contiguous().cpu()
            else:
                numbers.setdefault(str(index), {})[name] = value
    tensors["torch_rng"] = state["torch_rng"]
    tensors |= {f"cuda_rng/{i}": rng for i, rng in enumerate(state["cuda_rng"])}
    tensors["generator"] = state["generator"]
    plain = {key: state[key] for key in ("step", "data_position", "generator_device")}
    plain |= {"param_groups": optimizer["param_groups"], "optimizer_numbers": numbers,
              "cuda_devices": len(state["cuda_rng"])}  # fmt: skip
    return tensors, plain


def _join_state(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    """The training state `_split_state` split."""
    per_parameter: dict[int, dict] = {}
    for key, tensor in tensors.items():
        if key.startswith(_OPTIMIZER + "/"):
            _, index, name = key.split("/", 2)
            per_parameter.setdefault(int(index), {})[name] = tensor
    for index, entry in plain["optimizer_numbers"].items():
        per_parameter.setdefault(int(index), {}).update(entry)
    return {
        "step": plain["step"],
        "data_position": plain["data_position"],
        "optimizer": {"state": per_parameter, "param_groups": plain["param_groups"]},
        "torch_rng": tensors["torch_rng"],
        "cuda_rng": [tensors[f"cuda_rng/{i}"] for i in range(plain["cuda_devices"])],
        "generator": tensors["generator"],
        "generator_device": plain["generator_device"],
    }


def _read_state(path: Path, remedy: str) -> dict:
    """The training state of checkpoint `path` (either format), or InputError naming the file
    that cannot be used."""
    legacy = path / LEGACY_STATE_FILE
    if legacy.exists() and not (path / STATE_JSON_FILE).exists():
        try:
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle and OS errors alike: the file cannot be used
            raise InputError(
                f"unreadable checkpoint ({type(e).__name__}); {remedy}", file=str(legacy)
            ) from None
        if not isinstance(state, dict) or any(key not in state for key in STATE_KEYS):
            raise InputError(
                f"unreadable checkpoint (not a training state); {remedy}", file=str(legacy)
            )
        return state
    try:
        tensors = load_safetensors(path / STATE_TENSORS_FILE, what="checkpoint state")
    except InputError as e:
        raise InputError(f"{e.problem}; {remedy}", file=e.file) from None
    source = path / STATE_JSON_FILE
    try:
        return _join_state(tensors, json.loads(source.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(
            f"unreadable checkpoint ({type(e).__name__}); {remedy}", file=str(source)
        ) from None


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
    state = _read_state(path, remedy)
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
