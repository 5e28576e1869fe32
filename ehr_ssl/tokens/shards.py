"""Token shards on disk: per-split Arrow IPC files plus a manifest, read back memory-mapped.

Layout of a tokens directory:

    tokenizer.json          the fitted tokenizer
    manifest.json           settings, input fingerprints, counts per split, shard list
    config.json             the resolved run configuration
    train/part-00000.arrow  one row per visit: visit_id, patient_id, split, labeled, label,
    val/...                 length and the list columns input_ids (int32), value_bins (int8),
    test/...                time_deltas (float32, hours) and segment_ids (int8)

Shards are uncompressed Arrow IPC files, so a reader memory-maps them and takes the flat token
arrays and their offsets without copying or loading the whole dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from ehr_ssl.artifacts import write_failure
from ehr_ssl.data.splits import SPLITS
from ehr_ssl.errors import InputError
from ehr_ssl.layout import MANIFEST_FILE

TOKENS_FORMAT = "ehr-ssl-tokens"


class ShardWriter:
    """One split's shards, written as its rows arrive in frames of any size: every shard but the
    last holds exactly `shard_visits` visits, each as one record batch (so that a reader takes
    its arrays without a copy, see `flat_tokens`). At most one shard's rows wait in memory."""

    def __init__(self, directory: Path, split: str, shard_visits: int) -> None:
        self.directory, self.split, self.shard_visits = Path(directory), split, shard_visits
        (self.directory / split).mkdir(parents=True, exist_ok=True)
        self.shards: list[str] = []
        self._pending: pl.DataFrame | None = None  # rows of the next shard, fewer than a shard
        self._empty: pl.DataFrame | None = None  # the columns, for a split without visits
        self._patients: list[pl.Series] = []
        self._visits = self._labeled = self._positives = self._tokens = 0

    def append(self, frame: pl.DataFrame) -> None:
        """Add rows: the columns of a tokens shard (visit_id, patient_id, split, labeled, label,
        length, token lists). Counts are summed, patients counted once however split up."""
        labeled = frame.filter(pl.col("labeled"))
        self._visits += frame.height
        self._labeled += labeled.height
        self._positives += int(labeled["label"].sum())
        self._tokens += int(frame["length"].sum())
        self._patients.append(frame["patient_id"].unique())
        self._empty = frame.clear()
        if self._pending is not None:
            frame = pl.concat([self._pending, frame], rechunk=False)
        full = frame.height - frame.height % self.shard_visits
        for offset in range(0, full, self.shard_visits):
            self._write(frame.slice(offset, self.shard_visits))
        rest = frame.slice(full)
        if full and rest.height:  # copied: the slice would keep the whole frame's buffers alive
            rest = rest.select(pl.all().gather(pl.int_range(pl.len())))
        self._pending = rest if rest.height else None

    def close(self) -> dict:
        """Write the last shard (an empty one for a split without visits) and return the split's
        manifest entry: counts and shard paths relative to the directory."""
        assert self._empty is not None, "close() before any append()"
        if self._pending is not None or not self.shards:
            self._write(self._empty if self._pending is None else self._pending)
            self._pending = None
        return {
            "visits": self._visits,
            "patients": pl.concat(self._patients).n_unique(),
            "labeled": self._labeled,
            "positives": self._positives,
            "tokens": self._tokens,
            "shards": self.shards,
        }

    def _write(self, part: pl.DataFrame) -> None:
        name = f"{self.split}/part-{len(self.shards):05d}.arrow"
        table = part.rechunk().to_arrow(compat_level=pl.CompatLevel.oldest())
        try:
            with (
                pa.OSFile(str(self.directory / name), "wb") as sink,
                pa.ipc.new_file(sink, table.schema) as writer,
            ):
                writer.write_table(table)
        except (OSError, pa.ArrowException) as e:  # a full disk, in pyarrow's words
            raise write_failure(self.directory / name, e) from e
        self.shards.append(name)


def write_split_shards(frame: pl.DataFrame, directory: Path, split: str, shard_visits: int) -> dict:
    """Write one split's rows as shards of at most `shard_visits` visits; returns its manifest
    entry (counts and shard paths relative to `directory`)."""
    writer = ShardWriter(directory, split, shard_visits)
    writer.append(frame)
    return writer.close()


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("not a tokens directory (no manifest.json)", file=str(directory)) from None
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e})", file=str(path)) from None
    if manifest.get("format") != TOKENS_FORMAT:
        raise InputError(f"format is not {TOKENS_FORMAT}", file=str(path))
    return manifest


def open_shard(path: Path) -> pa.Table:
    """Memory-map one shard: the returned table's buffers point into the file (no copy)."""
    try:
        source = pa.memory_map(str(path), "r")
        return pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"not a readable token shard ({e})", file=str(path)) from None


def read_split(directory: Path, split: str) -> pl.DataFrame:
    """All visits of one split as a polars frame over memory-mapped shards."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    manifest = read_manifest(directory)
    tables = [open_shard(Path(directory) / name) for name in manifest["splits"][split]["shards"]]
    return pl.from_arrow(pa.concat_tables(tables), rechunk=False)


def flat_tokens(table: pa.Table, column: str = "input_ids") -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column: visit i's tokens are values[offsets[i]:offsets[i+1]].

    Shape: values (N_tokens,), offsets (V + 1,). Zero-copy views for a single-chunk shard.
    """
    chunked = table.column(column)
    # combine_chunks() copies even a single chunk: take that chunk as it is (a view of the map).
    array = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
    offsets = np.asarray(array.offsets)
    values = array.values.to_numpy(zero_copy_only=True)
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def format_manifest(manifest: dict) -> str:
    """A per-split table of the tokenized cohort, for a terminal or a log."""
    header = f"{'split':<6} {'visits':>9} {'patients':>9} {'labeled':>8} {'positive':>8} "
    header += f"{'tokens':>11} {'tokens/visit':>12}"
    lines = [f"tokenized cohort: vocabulary {manifest['vocab_size']} tokens", header]
    for name, entry in manifest["splits"].items():
        per_visit = entry["tokens"] / entry["visits"] if entry["visits"] else 0.0
        lines.append(
            f"{name:<6} {entry['visits']:>9,} {entry['patients']:>9,} {entry['labeled']:>8,} "
            f"{entry['positives']:>8,} {entry['tokens']:>11,} {per_visit:>12.1f}"
        )
    return "\n".join(lines)
