"""Atomic outputs: everything is written under a temporary name beside its target and renamed into
place only when complete, so a failed or killed run never leaves a partial output behind.

Temporary work goes beside the output it serves (the same filesystem, so the final rename is
atomic, and data with identifiers stays where the output with identifiers goes), as hidden
entries named `.<output name>.<what>-<pid>-<random>`: `tmp` (an output being written), `old` (the
output being replaced), `chunks` and `work` (a stage's scratch files). The name says whose
temporary it is and which process made it, so that the next writer of the same output can remove
what a killed one left (`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ehr_ssl.artifacts import write_failure

TEMPORARY_KINDS = ("tmp", "old", "chunks", "work")
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old|chunks|work)-(?P<rest>.*)$")
# The temporaries this process made: one of its own process id that is not among them was left
# by a killed process that had the same id (a container's CLI often runs as the same pid).
_MADE_HERE: set[str] = set()


def temporary_prefix(target: Path, what: str) -> str:
    """The name prefix of this process's temporaries of kind `what` for output `target`."""
    assert what in TEMPORARY_KINDS, what
    return f".{Path(target).name}.{what}-{os.getpid()}-"


def make_temporary_dir(target: Path, what: str) -> Path:
    """A fresh hidden directory beside `target` (see the module docstring), mode by the umask."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(target, what), dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp creates mode 0700
    _MADE_HERE.add(os.path.abspath(tmp))
    return tmp


@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `target` when the block succeeds.

    On an exception the temporary directory is removed and `target` is left as it was; an
    OSError about a file in it names the file's place in `target` instead. With `overwrite`, an
    existing `target` is replaced (moved aside, then deleted after the swap); without, only an
    empty one is.
    """
    target = Path(target)
    if (target.exists() or target.is_symlink()) and not overwrite and not _is_empty_dir(target):
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary_dir(target, "tmp")
    try:
        yield tmp
        _fsync_tree(tmp)  # contents on disk before the rename makes them visible
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        renamed = renamed_error(e, tmp, target) if isinstance(e, OSError) else e
        if renamed is e:
            raise
        raise renamed from e
    old = None
    if target.exists() or target.is_symlink():
        old = _aside(target)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink(missing_ok=True)


def _aside(target: Path) -> Path:
    """A fresh name beside `target` to move it to before it is replaced: an empty directory for a
    directory (rename(2) replaces an empty one), an empty file for anything else."""
    if target.is_dir() and not target.is_symlink():
        return make_temporary_dir(target, "old")
    return _make_temporary_file(target, "old")


def _make_temporary_file(target: Path, what: str) -> Path:
    """A fresh hidden empty file beside `target` (see the module docstring), mode by the umask."""
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(target, what), dir=target.parent)
    os.close(fd)
    _MADE_HERE.add(os.path.abspath(tmp))
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates mode 0600
    return Path(tmp)


def renamed_error(
    error: OSError, temporary: Path, target: Path, *, counterpart: bool = True
) -> OSError:
    """`error` naming `target` instead of the file in `temporary` it names, which is removed by
    the time the error is reported: the file's place in `target` when `temporary` is its
    counterpart (an atomic directory), else `target` itself (scratch work for it). Errors about
    other files are returned as they are."""
    if error.filename is None:
        return error
    name, temporary = Path(os.path.abspath(error.filename)), Path(os.path.abspath(temporary))
    if name != temporary and temporary not in name.parents:
        return error
    place = Path(target)
    if counterpart and name != temporary:
        place = place / name.relative_to(temporary)
    return OSError(error.errno, error.strerror or str(error), str(place))


def remove_stale_temporaries(directory: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries killed writers left in `directory`: those of output `name` (None:
    of every output) whose process is no longer running on this machine, and those of earlier
    versions of ehr-ssl, whose names carry no process id. Returns the paths removed.

    Call it only while holding the output lock of what they serve (`ehr_ssl.outputs.
    output_lock`): every ehr-ssl writer of an output holds it, so a temporary found then is not
    being written by a live process of another machine either.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        match = _TEMPORARY.match(path.name)
        if (
            match
            and (name is None or match["name"] == name)
            and not _writer_alive(path, match["rest"])
        ):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _writer_alive(path: Path, rest: str) -> bool:
    """Whether the process that made temporary `path` (its `<pid>-<random>` suffix `rest`)
    still runs here: for this process's id, whether this process made it."""
    pid_text = rest.split("-", 1)[0]
    if not pid_text.isdigit():  # an earlier version's temporary (no process id)
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return os.path.abspath(path) in _MADE_HERE
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):  # no such process (or no possible pid)
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        _fsync_file(path)
    _fsync_file(root)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` when the block succeeds. An
    OSError naming the temporary names `path` instead."""
    path = Path(path)
    tmp = _make_temporary_file(path, "tmp")
    try:
        yield tmp
        _fsync_file(tmp)  # the contents on disk before the rename makes them visible
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        renamed = renamed_error(e, Path(tmp), path) if isinstance(e, OSError) else e
        if renamed is e:
            raise
        raise renamed from e


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename. A failed write (a full
    disk) raises an OSError naming `path`."""
    try:
        with atomic_file(path) as tmp, tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.filename:
            raise
        raise write_failure(path, e) from e


def fsync_file(path: Path) -> None:
    """Flush a written file to disk, so that the rename that publishes it never shows it empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
