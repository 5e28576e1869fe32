"""Checkpoints: a damaged one stops a resume with one line naming the file, and a full disk
while saving one names the file and leaves no partial checkpoint."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from torch import nn

from ehr_ssl.errors import InputError
from ehr_ssl.training.checkpoint import load_checkpoint, save_checkpoint


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


def test_a_checkpoint_restores_what_it_saved(tmp_path):
    path = _save(tmp_path)
    state = _training_state()
    with torch.no_grad():
        state["model"].weight.zero_()
    assert load_checkpoint(path, **state) == (5, {"epoch": 0, "batch": 5})
    assert torch.equal(state["model"].weight, _training_state()["model"].weight)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:50])


@pytest.mark.parametrize(
    ("file", "damage", "expected"),
    [
        ("model.safetensors", _truncate, "checkpoint weights is not a readable safetensors"),
        ("model.safetensors", Path.unlink, "checkpoint weights not found"),
        ("state.pt", _truncate, "unreadable checkpoint"),
        ("state.pt", lambda p: torch.save([1, 2], p), "not a training state"),
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


def test_torch_reporting_a_full_disk_names_the_state_file(tmp_path, monkeypatch):
    """torch.save on a full disk raises RuntimeError("... unexpected pos ...") while handling
    the OSError of the file it writes to (measured on a 64 KiB tmpfs)."""

    def save(obj, f):
        try:
            f.write(b"x" * 10)
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")  # noqa: B904

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as caught:
        _save(tmp_path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith("state.pt")
    assert list((tmp_path / "checkpoints").iterdir()) == []
