"""Checked reading and writing of the files ehr-ssl writes: a damaged safetensors file is one
line naming it, a full disk an OSError naming the file, and every file gets the same mode."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ehr_ssl.artifacts import (
    check_tensor_shapes,
    load_safetensors,
    save_safetensors,
    write_failure,
)
from ehr_ssl.errors import InputError


def _weights(path: Path) -> Path:
    save_file({"weight": torch.arange(12.0).reshape(3, 4), "bias": torch.zeros(3)}, str(path))
    return path


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:40] = bytes(b ^ 0xFF for b in data[8:40])  # inside the JSON header
    path.write_bytes(bytes(data))


def _pickle(path: Path) -> None:
    torch.save({"weight": torch.zeros(3, 4)}, path)


@pytest.mark.parametrize(
    "damage", [lambda p: p.write_bytes(b""), _truncate, _flip_header, _pickle, Path.unlink]
)
def test_a_damaged_safetensors_file_is_one_line_naming_it(tmp_path, damage):
    path = _weights(tmp_path / "w.safetensors")
    damage(path)
    with pytest.raises(InputError) as caught:
        load_safetensors(path, what="model weights")
    message = str(caught.value)
    assert message.startswith(str(path)) and "model weights" in message
    assert "\n" not in message


def test_non_finite_weights_are_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"weight": torch.tensor([1.0, float("nan")])}, str(path))
    with pytest.raises(InputError, match="'weight' holds NaN or infinity"):
        load_safetensors(path)


def test_shapes_name_the_missing_unexpected_and_reshaped_tensors(tmp_path):
    tensors = load_safetensors(_weights(tmp_path / "w.safetensors"))
    check_tensor_shapes(tensors, {"weight": (3, 4), "bias": (3,)}, path=tmp_path)
    expected = {"weight": (3, 5), "norm": (3,)}
    with pytest.raises(InputError) as caught:
        check_tensor_shapes(tensors, expected, path=tmp_path, what="head")
    message = str(caught.value)
    assert "1 missing (first 'norm')" in message and "1 unexpected (first 'bias')" in message
    assert "'weight': [3, 4] instead of [3, 5]" in message


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, full_disk):
    path = tmp_path / "w.safetensors"
    with pytest.raises(OSError) as caught:
        save_safetensors({"a": torch.zeros(2)}, path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert not path.exists()


def test_an_os_error_behind_a_library_error_gives_the_cause():
    """torch.save on a full disk raises RuntimeError("... unexpected pos ...") while handling
    the OSError of the file it writes to (measured on a 64 KiB tmpfs)."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")  # noqa: B904
    except RuntimeError as e:
        error = write_failure(Path("x/state.pt"), e)
    assert error.errno == errno.ENOSPC and error.filename == "x/state.pt"


def test_weights_get_the_mode_of_every_other_file(tmp_path):
    previous = os.umask(0o027)
    try:
        save_safetensors({"a": torch.zeros(2)}, tmp_path / "w.safetensors")
        (tmp_path / "r.json").write_text("{}")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"w.safetensors": 0o640, "r.json": 0o640}
