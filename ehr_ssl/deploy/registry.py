"""The model registry of scheduled retraining: numbered bundles, a production pointer and the
history of every decision, safe against killed and concurrent retrains.

Layout of a registry directory:

    registry.json       format marker
    versions/<n>/       one bundle per retrain (ehr_ssl.deploy.bundle), with its retrain report
    history.jsonl       one JSON record per retrain: its figures and the promotion decision
    production          {"version": n}: the version in production (mirrors history)
    .lock               held (flock) by the retrain that is running
    tmp/                work in progress; removed by the next retrain
    cache/tokens/       visits' tokens under the production tokenizer (ehr_ssl.tokens.incremental)

A retrain commits by one atomic rename of history.jsonl (the version directory is moved into
place just before, the production pointer rewritten just after). history.jsonl is the truth:
the production version is the last one promoted there. So a retrain killed at any point leaves
history and production as they were, or, killed after the commit, fully recorded (the next
retrain then removes versions no record points to and rewrites a lagging pointer).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from ehr_ssl.atomic import atomic_write_text
from ehr_ssl.errors import InputError

REGISTRY_FORMAT = "ehr-ssl-registry"
MARKER_FILE = "registry.json"
HISTORY_FILE = "history.jsonl"
PRODUCTION_FILE = "production"
LOCK_FILE = ".lock"


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
            return cls(root)
        if not create:
            raise InputError("not a model registry (no registry.json)", file=str(root))
        if root.exists() and any(root.iterdir()):
            raise InputError(
                "exists and is not empty: refusing to make a registry there", file=str(root)
            )
        (root / "versions").mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            root / MARKER_FILE, json.dumps({"format": REGISTRY_FORMAT, "version": 1}) + "\n"
        )
        return cls(root)

    # --- reading --------------------------------------------------------------------------

    def history(self) -> list[dict]:
        path = self.root / HISTORY_FILE
        if not path.exists():
            return []
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise InputError(f"damaged history ({e})", file=str(path)) from None

    def production_version(self) -> int | None:
        """The version in production: the last one promoted in the history (None: none yet)."""
        promoted = [r["version"] for r in self.history() if r.get("promoted")]
        return promoted[-1] if promoted else None

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
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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

    def _recover(self) -> None:
        """Undo what a killed retrain left: work in tmp/, versions no record points to, and a
        production pointer behind the history."""
        shutil.rmtree(self.root / "tmp", ignore_errors=True)
        recorded = {r["version"] for r in self.history()}
        versions = self.root / "versions"
        for path in versions.iterdir() if versions.is_dir() else []:
            if not (path.name.isdigit() and int(path.name) in recorded):
                shutil.rmtree(path, ignore_errors=True)
        self._write_pointer()

    def _write_pointer(self) -> None:
        version = self.production_version()
        path = self.root / PRODUCTION_FILE
        text = json.dumps({"version": version}) + "\n"
        if version is not None and (not path.exists() or path.read_text() != text):
            atomic_write_text(path, text)

    @contextlib.contextmanager
    def work_dir(self) -> Iterator[Path]:
        """A fresh directory for a retrain's work, inside the registry (same file system, so
        the finished bundle moves into versions/ by a rename), removed when the block ends,
        whether it succeeded or failed (a killed retrain's is removed by the next `lock`)."""
        path = self.root / "tmp" / f"retrain-{os.getpid()}-{time.time_ns()}"
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def commit(self, bundle_dir: Path, record: dict, *, promote: bool) -> int:
        """Record a retrain: move its bundle in as the next version, append `record` (with
        "version" and "promoted") to the history (the commit point), then move the pointer.
        Call under `lock`. Returns the version number."""
        existing = [int(p.name) for p in (self.root / "versions").iterdir() if p.name.isdigit()]
        version = max(existing, default=0) + 1
        os.replace(bundle_dir, self.version_path(version))
        record = {"version": version, "promoted": promote, **record}
        history = self.root / HISTORY_FILE
        previous = history.read_text() if history.exists() else ""
        atomic_write_text(history, previous + json.dumps(record, sort_keys=True) + "\n")
        self._write_pointer()
        return version
