"""Stages that are skipped when their outputs are complete with the same fingerprint, shared by
`ehr-ssl run` (ehr_ssl.pipeline) and `ehr-ssl retrain` (ehr_ssl.deploy.retraining): a run or a
retrain killed part way resumes from its last complete stage, and pretraining from its last
checkpoint."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ehr_ssl.artifacts import sha256_file
from ehr_ssl.atomic import atomic_write_text
from ehr_ssl.data.meds_input import sources
from ehr_ssl.layout import (
    CHECKPOINTS_DIR,
    PRETRAIN_SUMMARY_FILE,
    RUN_CONFIG_FILE,
    WEIGHTS_FILE,
    RunLayout,
)
from ehr_ssl.outputs import check_output_dir
from ehr_ssl.settings import to_dict
from ehr_ssl.training import distributed

log = logging.getLogger("ehr_ssl")


def data_fingerprint(data_dir: Path) -> str:
    """Identity of a dataset directory's files: relative path, size and modification time of
    each (as make does: content is not read, so an 8M-visit dataset costs nothing to check)."""
    files = sorted(p for p in Path(data_dir).rglob("*") if p.is_file())
    entries = [
        (str(p.relative_to(data_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    ]
    return stage_hash(entries)


def data_identity(data_dir: Path, config: Any) -> str:
    """The data's fingerprint. A MEDS root's is its own files and its label files, not the
    temporary contract-form copy every stage reads (a new one each time: a rerun must not redo
    the stages)."""
    fingerprint = data_fingerprint(data_dir)
    outside = [_file_identity(path) for path in sources(data_dir, config)]
    return stage_hash([fingerprint, *outside]) if outside else fingerprint


def _file_identity(path: Path) -> list:
    if path.is_dir():
        return [str(path), data_fingerprint(path)]
    return [str(path), path.stat().st_size, path.stat().st_mtime_ns]


def stage_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def stage_settings(config: Any) -> dict:
    """A stage's settings for its fingerprint: all but where it runs (moving a finished run to
    a GPU machine must not redo it)."""
    values = to_dict(config)
    values.pop("device", None)
    values.get("train", {}).pop("device", None)
    for bound in ("chunk_visits", "chunk_events"):  # memory bounds: the tokens are the same
        values.pop(bound, None)
    return values


class Stages:
    """RUN/stages.json: the fingerprint of each complete stage, rewritten atomically.

    A fingerprint hashes what the stage was made from (the data files, the settings, the
    upstream stages' fingerprints), so a later run skips a stage whose outputs are complete with
    the same fingerprint, and reruns it and everything downstream otherwise. An interrupted
    pretraining resumes from its last checkpoint. The test split is read once, by the evaluate
    stage; every choice before it uses train and val only.
    """

    def __init__(self, run_dir: Path, *, write: bool = True):
        """`write` False: a torchrun process other than rank 0, which reads but never writes."""
        self.path = RunLayout(run_dir).stages
        self.write = write
        self.done: dict[str, str] = {}
        if self.path.exists():
            try:
                self.done = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.done = {}  # a damaged record only costs a rerun

    def is_done(self, name: str, fingerprint: str, marker: Path) -> bool:
        return self.done.get(name) == fingerprint and marker.exists()

    def mark(self, name: str, fingerprint: str) -> None:
        self.done[name] = fingerprint
        if self.write:
            atomic_write_text(self.path, json.dumps(self.done, indent=2, sort_keys=True) + "\n")


def pretrain_stage(
    layout: RunLayout,
    stages: Stages,
    pretrain_config: Any,
    fp_tokens: str,
    *,
    tokens_rerun: bool,
    init_encoder: Path | None = None,
    is_main: bool = True,
) -> str:
    """Pretrain, or resume an interrupted pretraining on unchanged tokens, or skip a finished
    one. Returns the fingerprint of the encoder's weights."""
    from ehr_ssl.training.pretrain import pretrain

    parts = ["pretrain", fp_tokens, stage_settings(pretrain_config)]
    if init_encoder is not None:  # a warm start: from these weights
        parts.append(sha256_file(Path(init_encoder) / WEIGHTS_FILE))
    fp_pretrain = stage_hash(parts)
    if stages.is_done("pretrain", fp_pretrain, layout.pretrain / PRETRAIN_SUMMARY_FILE):
        log.info("pretrain: unchanged since the last run, skipped")
    else:
        resume = not tokens_rerun and resumable(layout.pretrain, pretrain_config)
        distributed.barrier()
        if not resume and is_main:
            check_output_dir(layout.pretrain, "pretrain")  # never remove what is not ours
            shutil.rmtree(layout.pretrain, ignore_errors=True)
        log.info("pretrain: %s preset%s -> %s", pretrain_config.preset, " (resumed)" * resume,
                 layout.pretrain)  # fmt: skip
        pretrain(layout.tokens, layout.pretrain, pretrain_config, resume=resume,
                 init_encoder=init_encoder)  # fmt: skip
        stages.mark("pretrain", fp_pretrain)
    # Downstream stages depend on the encoder's weights themselves (a rerun on GPU need not
    # reproduce them bit for bit), not only on the settings that made them.
    return sha256_file(layout.encoder / WEIGHTS_FILE)


def resumable(pretrain_dir: Path, config: Any) -> bool:
    """An interrupted pretraining of the same configuration (on unchanged tokens) can resume."""
    saved = pretrain_dir / RUN_CONFIG_FILE
    if not (saved.exists() and (pretrain_dir / CHECKPOINTS_DIR).is_dir()):
        return False
    try:
        return json.loads(saved.read_text()).get("config") == to_dict(config)
    except json.JSONDecodeError:
        return False
