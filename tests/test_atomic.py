"""Atomic outputs: complete or absent, never partial."""

import errno
import os

import pytest

from ehr_ssl.atomic import atomic_directory, atomic_file, atomic_write_text


def test_success_renames_into_place_with_umask_mode(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("x")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "x"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask
    assert os.listdir(tmp_path) == ["out"]


def test_failure_leaves_nothing_and_keeps_the_old_output(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileExistsError), atomic_directory(target):
        pass
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("killed")
    assert sorted(os.listdir(target)) == ["old.txt"]
    assert os.listdir(tmp_path) == ["out"]
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(os.listdir(target)) == ["new.txt"]
    assert os.listdir(tmp_path) == ["out"]


def test_atomic_write_text_replaces_whole_file(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert os.listdir(tmp_path) == ["f.json"]


def test_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_temporaries_carry_the_output_name_and_the_process_id(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        assert tmp.name.startswith(f".out.tmp-{os.getpid()}-")
    with atomic_file(tmp_path / "f.json") as tmp:
        assert tmp.name.startswith(f".f.json.tmp-{os.getpid()}-")
        tmp.write_text("{}")


def test_a_full_disk_names_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "tokens"
    with pytest.raises(OSError) as error, atomic_directory(target) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "train" / "part.arrow"))
    assert error.value.filename == str(target / "train" / "part.arrow")
    assert error.value.errno == errno.ENOSPC

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # as os.fsync says it: no path

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as error:
        atomic_write_text(tmp_path / "manifest.json", "{}")
    assert error.value.filename == str(tmp_path / "manifest.json")
    assert "No space left on device" in error.value.strerror
    assert os.listdir(tmp_path) == []


def test_an_empty_directory_is_replaced_without_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("x")
    assert os.listdir(tmp_path / "out") == ["a.txt"]


def test_replacing_a_file_or_a_link_leaves_nothing_aside(tmp_path):
    (tmp_path / "out").write_text("a file where the output goes")
    with atomic_directory(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "x").write_text("1")
    assert sorted(os.listdir(tmp_path)) == ["out"] and (tmp_path / "out" / "x").exists()
    os.symlink(tmp_path / "nowhere", tmp_path / "link")  # dangling
    with pytest.raises(FileExistsError), atomic_directory(tmp_path / "link"):
        pass
    with atomic_directory(tmp_path / "link", overwrite=True) as tmp:
        (tmp / "y").write_text("2")
    assert sorted(os.listdir(tmp_path)) == ["link", "out"] and not (tmp_path / "link").is_symlink()
