"""Checkpoints: what is saved is restored (nothing pickled; an earlier version's pickled state
still read), a damaged one stops a resume with one line naming the file, and a full disk while
saving one names the file and leaves no partial checkpoint."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ehr_ssl.artifacts import load_safetensors
from ehr_ssl.errors import InputError
from ehr_ssl.training.checkpoint import _join_state, load_checkpoint, save_checkpoint


def _training_state() -> dict:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return {"model": model, "optimizer": optimizer, "generator": torch.Generator()}


def _save(run: Path, step: int = 5) -> Path:
    return save_checkpoint(run, step=step, data_position={"epoch": 0, "batch": step}, keep=2,
                           **_training_state())  # fmt: skip


def _restored(path: Path) -> dict:
    """A fresh training state (its weights zeroed, its RNGs moved on) loaded from `path`."""
    state = _training_state()
    with torch.no_grad():
        state["model"].weight.zero_()
    state["generator"].manual_seed(123)
    torch.manual_seed(456)
    assert load_checkpoint(path, **state) == (5, {"epoch": 0, "batch": 5})
    return state


def _same(a: dict, b: dict) -> bool:
    """Weights, optimizer state (tensors and hyper-parameters) and RNG states equal."""
    sa, sb = a["optimizer"].state_dict(), b["optimizer"].state_dict()
    return (
        all(torch.equal(x, y) for x, y in zip(a["model"].state_dict().values(),
                                              b["model"].state_dict().values(), strict=True))
        and sa["state"].keys() == sb["state"].keys()
        and all(torch.equal(sa["state"][i][k], sb["state"][i][k])
                for i in sa["state"] for k in sa["state"][i])
        and [{**g, "betas": list(g["betas"])} for g in sa["param_groups"]]
        == [{**g, "betas": list(g["betas"])} for g in sb["param_groups"]]
        and torch.equal(a["generator"].get_state(), b["generator"].get_state())
    )  # fmt: skip


def test_a_checkpoint_restores_what_it_saved_and_pickles_nothing(tmp_path):
    saved = _training_state()
    rng = torch.get_rng_state()
    path = save_checkpoint(tmp_path, step=5, data_position={"epoch": 0, "batch": 5}, keep=2,
                           **saved)  # fmt: skip
    assert sorted(p.name for p in path.iterdir()) == [
        "meta.json", "model.safetensors", "state.json", "state.safetensors"
    ]  # fmt: skip
    restored = _restored(path)
    assert _same(restored, saved) and torch.equal(torch.get_rng_state(), rng)


def test_a_checkpoint_of_the_earlier_pickled_format_is_still_read(tmp_path):
    """Runs killed under an earlier version resume: its state.pt, read with weights_only."""
    saved = _training_state()
    path = save_checkpoint(tmp_path, step=5, data_position={"epoch": 0, "batch": 5}, keep=2,
                           **saved)  # fmt: skip
    tensors = load_safetensors(path / "state.safetensors")
    state = _join_state(tensors, json.loads((path / "state.json").read_text()))
    torch.save(state, path / "state.pt")
    (path / "state.json").unlink()
    (path / "state.safetensors").unlink()
    assert _same(_restored(path), saved)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:50])


@pytest.mark.parametrize(
    ("file", "damage", "expected"),
    [
        ("model.safetensors", _truncate, "checkpoint weights is not a readable safetensors"),
        ("model.safetensors", Path.unlink, "checkpoint weights not found"),
        ("state.safetensors", _truncate, "checkpoint state is not a readable safetensors"),
        ("state.json", _truncate, "unreadable checkpoint (JSONDecodeError)"),
        ("state.json", lambda p: p.write_text('{"step": 5}'), "unreadable checkpoint (KeyError)"),
    ],
)
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, file, damage, expected):
    path = _save(tmp_path)
    damage(path / file)
    with pytest.raises(InputError) as caught:
        load_checkpoint(path, **_training_state())
    message = str(caught.value)
    assert message.startswith(str(path / file)) and expected in message, message
    assert "remove step-00000005 to resume from the checkpoint before it" in message


def test_a_full_disk_while_saving_names_the_file_and_leaves_nothing(tmp_path, full_disk):
    """A full disk during a checkpoint was `internal error: SafetensorError`."""
    with pytest.raises(OSError) as caught:
        _save(tmp_path)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename.endswith("model.safetensors")
    assert list((tmp_path / "checkpoints").iterdir()) == []
