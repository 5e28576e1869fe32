"""Where ehr-ssl may write, checked before anything is written.

- An output directory carries a marker naming its kind (`layout.OUTPUT_MARKER_FILE`; a bundle is
  known by its bundle.json), so an existing directory is reused or replaced only when it is
  ehr-ssl's own output of the same kind; any other non-empty directory is refused, never emptied.
- No output lies at, inside or above an input (paths resolved, symlinks followed): writing there
  would overwrite the input or change what it holds.
- One process at a time writes an output, under a lock beside it (`.<name>.lock`, flock: it dies
  with its process); holding it, the writer removes the temporaries killed writers left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ehr_ssl import __version__
from ehr_ssl.artifacts import read_json
from ehr_ssl.atomic import atomic_write_text, remove_stale_temporaries
from ehr_ssl.errors import InputError
from ehr_ssl.layout import (
    BUNDLE_FILE,
    FINETUNE_SUMMARY_FILE,
    MANIFEST_FILE,
    OUTPUT_MARKER_FILE,
    RUN_CONFIG_FILE,
    STAGES_FILE,
    TOKENIZER_FILE,
)

OUTPUT_FORMAT = "ehr-ssl-output"
KINDS = {
    "dataset": "synthetic dataset directory (ehr-ssl synth)",
    "tokens": "tokens directory (ehr-ssl tokenize)",
    "pretrain": "pretraining directory (ehr-ssl pretrain)",
    "finetune": "fine-tuning directory (ehr-ssl finetune)",
    "run": "run directory (ehr-ssl run)",
    "bundle": "model bundle (ehr-ssl bundle)",
    "demo": "demo directory (ehr-ssl demo)",
}
# Outputs without a marker: a bundle always; the others when an earlier version wrote them. Each
# kind is known by the files it holds (any one group, all of its files), tried in this order:
# a run directory holds run_config.json too, so "run" comes before "pretrain" (whose
# run_config.json is written first, so a pretraining killed at once is still known by it).
_RECOGNIZED = {
    "bundle": [(BUNDLE_FILE,)],
    "run": [(RUN_CONFIG_FILE, STAGES_FILE)],
    "pretrain": [(RUN_CONFIG_FILE,)],
    "finetune": [(FINETUNE_SUMMARY_FILE,)],
    "tokens": [(MANIFEST_FILE, TOKENIZER_FILE)],
    # the data contract's visits file and the synthetic cohort's oracle (ehr_ssl.data.schema,
    # a layer above this module): a dataset of one's own has no oracle
    "dataset": [("visits.parquet", "oracle.parquet")],
    "demo": [("data/visits.parquet", "data/oracle.parquet")],
}


class OutputLocked(InputError):
    """Another process is writing the same output."""


def output_kind(path: Path) -> str | None:
    """The kind of ehr-ssl output directory at `path`: its marker's, else the kind whose files it
    holds (an output of an earlier version, or a bundle); None when it is neither.

    Raises:
        InputError: naming the marker when it is damaged.
    """
    path = Path(path)
    marker = path / OUTPUT_MARKER_FILE
    if marker.is_file():
        document = read_json(marker, what="ehr-ssl output marker")
        kind = document.get("kind")
        return kind if document.get("format") == OUTPUT_FORMAT and kind in KINDS else None
    for kind, groups in _RECOGNIZED.items():
        if any(all((path / name).exists() for name in group) for group in groups):
            return kind
    return None


def check_output_dir(path: Path, kind: str, *, flag: str = "--out") -> None:
    """Refuse `path` as an output directory of `kind` unless it is absent, empty, or ehr-ssl's
    own output of that kind (which the caller may then reuse or replace).

    Raises:
        InputError: naming `path`, when it is a file, or a directory holding anything else.
    """
    assert kind in KINDS, kind
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"exists and is not a directory: choose another {flag}", file=str(path))
    if not path.exists() or not any(path.iterdir()):
        return
    found = output_kind(path)
    if found == kind:
        return
    what = f"an ehr-ssl {KINDS[found]}" if found else "not empty and not an ehr-ssl output"
    raise InputError(
        f"exists and is {what}, not a {KINDS[kind]}: refusing to write there (choose a new or "
        f"empty {flag})",
        file=str(path),
    )


def write_marker(directory: Path, kind: str) -> None:
    """Mark `directory` as an ehr-ssl output of `kind` (inside an atomic directory's temporary,
    before the rename, for outputs written at once)."""
    assert kind in KINDS, kind
    marker = {"format": OUTPUT_FORMAT, "kind": kind, "ehr_ssl_version": __version__}
    atomic_write_text(Path(directory) / OUTPUT_MARKER_FILE, json.dumps(marker, indent=2) + "\n")


def mark_output_dir(path: Path, kind: str) -> None:
    """Create the output directory `path` (written in place, as a run directory is) and mark it
    as `kind`; one an earlier version wrote gains its marker. Call `check_output_dir` first."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / OUTPUT_MARKER_FILE).is_file():
        write_marker(path, kind)


def check_outside_inputs(out: Path, inputs: dict[str, Path | None], *, flag: str = "--out") -> None:
    """Refuse an output at, inside or above any of `inputs` ({flag or name: path}; None is
    skipped), comparing resolved paths (symlinks followed).

    Raises:
        InputError: naming `out` and the input it would overwrite or change.
    """
    target = Path(out).resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        source = Path(path).resolve()
        if target == source:
            where = "is"
        elif source in target.parents:
            where = "lies inside"
        elif target in source.parents:
            where = "contains"
        else:
            continue
        raise InputError(
            f"{flag} {where} the input {name} ({path}): write the output outside every input",
            file=str(out),
        )


@contextlib.contextmanager
def output_lock(
    target: Path, *, enabled: bool = True, clean_inside: bool = False
) -> Iterator[None]:
    """Hold the lock of output `target` for the block, after removing the temporaries killed
    writers of `target` left beside it (and, with `clean_inside`, those in `target` itself: a
    directory written in place, whose files' writers all hold this lock).

    The lock is `.<name>.lock` beside `target`, removed when released; parent directories made
    for it are removed again if the block leaves them empty. `enabled` False (a torchrun process
    other than rank 0, which never writes) does nothing.

    Raises:
        OutputLocked: at once, when another process holds the lock.
    """
    if not enabled:
        yield
        return
    target = Path(os.path.abspath(target))
    if not target.name:
        raise InputError("cannot write an output there", file=str(target))
    made = _make_parents(target.parent)
    lock = target.parent / f".{target.name}.lock"
    try:
        fd = _acquire(lock, target)
        try:
            remove_stale_temporaries(target.parent, target.name)
            if clean_inside:
                remove_stale_temporaries(target)
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # before the close: a process waiting on it then retries afresh
            os.close(fd)
    finally:
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty: nothing was written there


def _make_parents(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents; returns those made, outermost first."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _acquire(lock: Path, target: Path) -> int:
    """The open, locked lock file, written with who holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise OutputLocked(
                f"another ehr-ssl process ({holder or 'holder unknown'}) is writing this output; "
                "wait until it ends, or write elsewhere",
                file=str(target),
            ) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, lock):
            break
        os.close(fd)  # its holder removed it on release: lock the one that is there now
    os.ftruncate(fd, 0)
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {since}".encode(), 0)
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)
