"""The model registry of scheduled retraining: numbered bundles, a production pointer and the
history of every decision, safe against killed and concurrent retrains.

Layout of a registry directory:

    registry.json       format marker
    versions/<n>/       one bundle per retrain (ehr_ssl.deploy.bundle), with its retrain report
    history.jsonl       one JSON record per retrain: its figures and the promotion decision
    production          {"version": n}: the version in production (mirrors history)
    .lock               held (flock) by the retrain that is running
    work/retrain-<key>-<attempt>/  an unfinished retrain's stages: resumed by the next retrain
                        with the same key (data, settings and production), removed by any other
    tmp/                a rollback's copy in progress; removed by the next lock
    cache/tokens/       visits' tokens under the production tokenizer (ehr_ssl.tokens.incremental)

A retrain commits by one atomic rename of history.jsonl (the version directory is moved into
place just before, the production pointer rewritten just after). history.jsonl is the truth:
the production version is the last one promoted there. So a retrain killed at any point leaves
history and production as they were, or, killed after the commit, fully recorded (the next
retrain then removes versions no record points to and rewrites a lagging pointer). A retrain
killed before its commit leaves its work in work/, and the next one on the same inputs resumes
from its last complete stage (pretraining from its last checkpoint).

Every file is checked when read: a damaged marker, history record or pointer is bad input (one
line naming the file and the problem), never a silent default.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from ehr_ssl.artifacts import read_json
from ehr_ssl.atomic import atomic_write_text, remove_stale_temporaries
from ehr_ssl.errors import InputError
from ehr_ssl.layout import STAGES_FILE

REGISTRY_FORMAT = "ehr-ssl-registry"
REGISTRY_VERSION = 1
MARKER_FILE = "registry.json"
HISTORY_FILE = "history.jsonl"
PRODUCTION_FILE = "production"
LOCK_FILE = ".lock"
WORK_DIR = "work"
WORK_PREFIX = "retrain-"

log = logging.getLogger("ehr_ssl")


class RegistryLocked(InputError):
    """Another retrain holds the registry's lock."""


class Registry:
    """A registry directory (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def is_registry(path: Path) -> bool:
        return (Path(path) / MARKER_FILE).is_file()

    @classmethod
    def open(cls, root: Path, *, create: bool = False) -> Registry:
        """Open a registry; with `create`, make an empty one where there is none."""
        root = Path(root)
        if cls.is_registry(root):
            _check_marker(root / MARKER_FILE)
            return cls(root)
        if not create:
            raise InputError("not a model registry (no registry.json)", file=str(root))
        if root.exists() and not _is_unfinished_registry(root) and not cls.is_registry(root):
            raise InputError(
                "exists and is not empty: refusing to make a registry there", file=str(root)
            )
        (root / "versions").mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            root / MARKER_FILE,
            json.dumps({"format": REGISTRY_FORMAT, "version": REGISTRY_VERSION}) + "\n",
        )
        return cls(root)

    # --- reading --------------------------------------------------------------------------

    def history(self) -> list[dict]:
        """The history's records, oldest first, each with an integer "version" (increasing)
        and a boolean "promoted".

        Raises:
            InputError: naming history.jsonl and the line of the first bad record.
        """
        path = self.root / HISTORY_FILE
        if not path.exists():
            return []
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read the history ({e})", file=str(path)) from None
        records: list[dict] = []
        for number, line in enumerate(lines, start=1):
            if line.strip():
                previous = records[-1]["version"] if records else 0
                records.append(_history_record(line, number, previous, path))
        return records

    def production_version(self) -> int | None:
        """The version in production: the last one promoted in the history (None: none yet).
        The pointer file mirrors it and may lag behind by a killed retrain, never more.

        Raises:
            InputError: when the history or the pointer is damaged.
        """
        promoted = [r["version"] for r in self.history() if r["promoted"]]
        _check_pointer(self.root / PRODUCTION_FILE, promoted)
        return promoted[-1] if promoted else None

    def record(self, version: int) -> dict | None:
        """The history's record of `version` (None: no such version)."""
        return next((r for r in self.history() if r["version"] == version), None)

    def production_path(self) -> Path:
        version = self.production_version()
        if version is None:
            raise InputError("no model in production yet", file=str(self.root))
        return self.version_path(version)

    def version_path(self, version: int) -> Path:
        return self.root / "versions" / str(version)

    @property
    def token_cache_dir(self) -> Path:
        """Where retrains keep tokens for incremental tokenization (derived data: deleting it
        costs one full tokenization)."""
        return self.root / "cache" / "tokens"

    # --- writing (under the lock) -----------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, timeout: float = 0.0) -> Iterator[None]:
        """Hold the registry's lock; another holder makes this wait up to `timeout` seconds,
        then raise RegistryLocked. The lock dies with its process (flock), so a killed retrain
        never leaves the registry locked."""
        path = self.root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as every file
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                        raise RegistryLocked(
                            f"locked by another retrain ({holder or 'unknown holder'}); "
                            "try again when it ends, or pass --wait SECONDS",
                            file=str(self.root),
                        ) from None
                    time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))
            os.ftruncate(fd, 0)
            os.pwrite(
                fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0
            )
            self._recover()
            yield
        finally:
            os.close(fd)  # releases the flock

    def is_locked(self) -> bool:
        """Whether a retrain (or rollback) holds the lock now (a glance: it may end next)."""
        path = self.root / LOCK_FILE
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # releases a lock taken here

    def _recover(self) -> None:
        """Undo what a killed retrain or rollback left: tmp/, work already committed, versions
        no record points to, and a production pointer behind the history. Uncommitted work is
        kept for `work_dir` to resume or remove."""
        shutil.rmtree(self.root / "tmp", ignore_errors=True)
        history = self.history()
        committed = {r.get("work") for r in history}  # killed after its commit
        for path in self.unfinished_work():
            if path.name in committed:
                shutil.rmtree(path, ignore_errors=True)
        recorded = {r["version"] for r in history}
        versions = self.root / "versions"
        for path in versions.iterdir() if versions.is_dir() else []:
            if not (path.name.isdigit() and int(path.name) in recorded):
                shutil.rmtree(path, ignore_errors=True)
        self._write_pointer()

    def _write_pointer(self) -> None:
        version = self.production_version()  # checks the pointer there is
        path = self.root / PRODUCTION_FILE
        text = json.dumps({"version": version}) + "\n"
        if version is not None and (not path.exists() or path.read_text() != text):
            atomic_write_text(path, text)

    def unfinished_work(self) -> list[Path]:
        """The work directories of retrains killed before their commit (one at most, unless
        another version of ehr-ssl left more). Read under `lock`: outside it, one may be a
        running retrain's, or one committed just before a kill (removed by the next lock)."""
        work = self.root / WORK_DIR
        return sorted(p for p in work.iterdir() if p.name.startswith(WORK_PREFIX)) if (
            work.is_dir()
        ) else []  # fmt: skip

    @contextlib.contextmanager
    def work_dir(self, key: str, *, fresh: bool = False) -> Iterator[Path]:
        """The work directory of a retrain on inputs identified by `key`, inside the registry
        (same file system, so the finished bundle moves into versions/ by a rename): a killed
        retrain's on the same key is resumed (`fresh`: removed, started over). Each attempt has
        its own name (`retrain-<key>-<attempt>`), which its commit records, so that work
        committed before a kill is told from a later attempt on the same inputs. Removed when
        the block ends, unless it failed for a reason other than bad input after a stage
        finished (an interruption, a crash: the next retrain resumes). Call under `lock`;
        `prune_work` removes the work of other inputs once this retrain's input is checked."""
        mine = [p for p in self.unfinished_work() if p.name.startswith(f"{WORK_PREFIX}{key}-")]
        for path in mine[1:] if not fresh else mine:
            log.info("retrain: removing unfinished work %s", path.name)
            shutil.rmtree(path, ignore_errors=True)
        if mine and not fresh:
            path = mine[0]
            remove_stale_temporaries(path)
        else:
            path = self.root / WORK_DIR / f"{WORK_PREFIX}{key}-{secrets.token_hex(4)}"
            path.mkdir(parents=True)
        try:
            yield path
        except InputError:
            shutil.rmtree(path, ignore_errors=True)
            raise
        except BaseException:
            if not (path / STAGES_FILE).exists():  # nothing finished: nothing to resume
                shutil.rmtree(path, ignore_errors=True)
            raise
        shutil.rmtree(path, ignore_errors=True)

    def prune_work(self, keep: Path) -> None:
        """Remove every unfinished retrain's work but `keep` (other inputs: kept, its disk
        would never be freed). Called once a retrain has checked its own input, so that one
        run by mistake on a bad snapshot does not cost the killed retrain's progress."""
        for path in self.unfinished_work():
            if path != keep:
                log.info("retrain: removing unfinished work %s (other inputs)", path.name)
                shutil.rmtree(path, ignore_errors=True)

    def commit(self, bundle_dir: Path, record: dict, *, promote: bool) -> int:
        """Record a retrain: move its bundle in as the next version, append `record` (with
        "version" and "promoted") to the history (the commit point), then move the pointer.
        Call under `lock`. Returns the version number."""
        existing = [int(p.name) for p in (self.root / "versions").iterdir() if p.name.isdigit()]
        recorded = [r["version"] for r in self.history()]  # a deleted version's number stays used
        version = max(existing + recorded, default=0) + 1
        os.replace(bundle_dir, self.version_path(version))
        record = {"version": version, "promoted": promote} | {
            k: v for k, v in record.items() if k not in ("version", "promoted")
        }  # the number and the decision are the commit's, whatever `record` says
        history = self.root / HISTORY_FILE
        previous = history.read_text() if history.exists() else ""
        atomic_write_text(history, previous + json.dumps(record, sort_keys=True) + "\n")
        self._write_pointer()
        return version


def rollback(registry: Registry, version: int) -> int:
    """Serve an earlier version again: a copy of it committed as the next version, promoted,
    its record the original's with "rollback_of" (the history stays append-only, and the next
    retrain warm-starts from, and is gated against, the model that serves). Only a version
    that served before qualifies. Call under `lock`. Returns the new version.

    Raises:
        InputError: naming the registry, for a version absent, never promoted or serving.
    """
    original = registry.record(version)
    if original is None:
        raise InputError(f"no version {version} to roll back to", file=str(registry.root))
    if not registry.version_path(version).is_dir():
        raise InputError(f"version {version}'s directory was deleted", file=str(registry.root))
    if not original["promoted"]:
        raise InputError(
            f"version {version} never served (its gate failed): a rollback serves only a version "
            "that was in production",
            file=str(registry.root),
        )
    serving = registry.production_version()
    if version == serving:
        raise InputError(f"version {version} is in production already", file=str(registry.root))
    copy = registry.root / "tmp" / f"rollback-{os.getpid()}-{time.time_ns()}"
    shutil.copytree(registry.version_path(version), copy)
    record = {k: v for k, v in original.items() if k not in ("version", "promoted", "work")}
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record |= {
        "time": when,
        "reasons": [f"rollback to version {version}"],
        "rollback_of": version,
        "production_version": serving,  # the version it replaces
        "anchor_version": None,  # the gate counts its tolerance from what serves
    }
    return registry.commit(copy, record, promote=True)


def _is_unfinished_registry(root: Path) -> bool:
    """Empty, or what another `open(create=True)` leaves before its marker (an empty
    versions/, the lock file): a concurrent first retrain, or one killed in between."""
    marker_temporary = f".{MARKER_FILE}.tmp-"  # a marker half-written (any process's)
    for entry in root.iterdir():
        empty_versions = entry.name == "versions" and entry.is_dir() and not any(entry.iterdir())
        ours = entry.name == LOCK_FILE or entry.name.startswith(marker_temporary)
        if not (empty_versions or ours):
            return False
    return True


def _check_marker(path: Path) -> None:
    """registry.json: this format and version."""
    marker = read_json(path, what="registry marker")
    if marker.get("format") != REGISTRY_FORMAT or marker.get("version") != REGISTRY_VERSION:
        raise InputError(
            f"registry format {marker.get('format')!r} version {marker.get('version')!r} is not "
            f"{REGISTRY_FORMAT!r} version {REGISTRY_VERSION}",
            file=str(path),
        )


def _history_record(line: str, number: int, previous: int, path: Path) -> dict:
    """One line of history.jsonl, checked: a JSON object with a "version" above `previous`
    (versions are numbered in commit order) and a boolean "promoted"."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"line {number}: not valid JSON ({e.msg})", file=str(path)) from None
    if not isinstance(record, dict):
        raise InputError(f"line {number}: not a JSON object", file=str(path))
    version = record.get("version")
    if not _is_integer(version):
        raise InputError(f"line {number}: no integer 'version' (damaged?)", file=str(path))
    if version <= previous:
        raise InputError(
            f"line {number}: version {version} after version {previous} (versions increase; "
            "damaged?)",
            file=str(path),
        )
    if not isinstance(record.get("promoted"), bool):
        raise InputError(f"line {number}: 'promoted' is not true or false", file=str(path))
    return record


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_pointer(path: Path, promoted: list[int]) -> None:
    """The production pointer, if there is one, names a version the history promoted (the
    latest, or an earlier one when a retrain was killed before moving it)."""
    if not path.exists():
        return
    remedy = "remove it, the next retrain rewrites it from history.jsonl"
    pointer = read_json(path, what="production pointer")
    version = pointer.get("version")
    if set(pointer) != {"version"} or not _is_integer(version):
        raise InputError(
            f'production pointer is not {{"version": N}} (damaged?): {remedy}', file=str(path)
        )
    if version not in promoted:
        raise InputError(
            f"production pointer names version {version}, which history.jsonl never promoted "
            f"(damaged?): {remedy}",
            file=str(path),
        )
