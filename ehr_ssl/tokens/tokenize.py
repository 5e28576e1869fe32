"""The tokenize stage: read and check a dataset, split patients, fit the tokenizer on the
training visits, encode every visit and write the tokens directory atomically.

Three strategies give the same tokens: in memory (`Tokenizer`), streamed chunk by chunk for data
larger than `chunk_visits` visits or `chunk_events` event rows (`ehr_ssl.tokens.stream`), and
incremental against a registry's cache (`ehr_ssl.tokens.incremental`). The directory's files
are named in `ehr_ssl.layout`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import polars as pl

from ehr_ssl import __version__
from ehr_ssl.atomic import atomic_directory, atomic_write_text
from ehr_ssl.config import DataConfig, TokenizeConfig
from ehr_ssl.data.meds_input import copy_code_hierarchy
from ehr_ssl.data.parquet import parquet_rows
from ehr_ssl.data.readers import (
    dataset_files,
    input_fingerprint,
    read_events,
    read_labels,
    read_visits,
)
from ehr_ssl.data.schema import LABELS, SCHEMA_VERSION
from ehr_ssl.data.splits import SPLITS, visit_splits
from ehr_ssl.data.windows import build_windows
from ehr_ssl.errors import InputError
from ehr_ssl.layout import CODES_FILE, MANIFEST_FILE, TOKENS_CONFIG_FILE
from ehr_ssl.outputs import check_output_dir, check_outside_inputs, output_lock, write_marker
from ehr_ssl.settings import to_dict
from ehr_ssl.tokens.incremental import cached_tokens
from ehr_ssl.tokens.shards import TOKENS_FORMAT, ShardWriter
from ehr_ssl.tokens.stream import encode_chunks, fit_chunks, partitioned_events
from ehr_ssl.tokens.tokenizer import Tokenizer, check_fit_mask, event_budget, fit_tokenizer
from ehr_ssl.tokens.vocab import TOKEN_COLUMNS

log = logging.getLogger("ehr_ssl")


def tokenize_dataset(
    data_dir: Path,
    out_dir: Path,
    config: TokenizeConfig,
    *,
    overwrite: bool = False,
    tokenizer: Tokenizer | None = None,
    splits: Callable[[pl.DataFrame], pl.Series] | None = None,
    cache_dir: Path | None = None,
    split_settings: Mapping[str, str] | None = None,
    require_classes: bool = False,
) -> dict:
    """The tokenize stage: read and check a dataset, split patients, fit the tokenizer on the
    training visits, encode every visit and write the tokens directory atomically.

    A dataset of more than `config.chunk_visits` visits or `config.chunk_events` event rows
    streams (`chunk_count`): its events are partitioned by
    patient into a temporary work directory beside `out_dir` and read chunk by chunk
    (`ehr_ssl.tokens.stream`), with the same tokenizer and tokens as in memory (shard rows may
    come in another order). `tokenizer` replaces the fitted one (a production model's, for
    retraining: new codes read as [UNK]); `splits` maps the checked visits to their split
    (default: `visit_splits`: the visits' split column, else by patient; a null split leaves
    the visit out). With a
    `tokenizer`, `cache_dir` makes the tokenization incremental (`ehr_ssl.tokens.incremental`, in
    memory): a rerun on a dataset that grew tokenizes only new and changed visits. Returns the
    manifest (also written as manifest.json). Raises InputError on bad input, before anything
    is written. When labels exist but a split's labels miss a class, names the setting that
    sizes that split (`split_settings`, default split.val_fraction / split.test_fraction): an
    InputError with `require_classes` (a run about to train), else a logged warning.
    """
    out_dir = Path(out_dir)
    _check_output(Path(data_dir), out_dir, overwrite=overwrite)
    settings = {**SPLIT_SETTINGS, **(split_settings or {})}

    def check(visits: pl.DataFrame, split: pl.Series, labels: pl.DataFrame) -> None:
        check_split_classes(visits["visit_id"], split, labels, required=require_classes,
                            settings=sizing_settings(visits, settings))  # fmt: skip

    with output_lock(out_dir):
        return _tokenize(data_dir, out_dir, config, overwrite, tokenizer, splits, cache_dir, check)


def _tokenize(
    data_dir: Path,
    out_dir: Path,
    config: TokenizeConfig,
    overwrite: bool,
    tokenizer: Tokenizer | None,
    splits: Callable[[pl.DataFrame], pl.Series] | None,
    cache_dir: Path | None,
    check_classes: Callable[..., None],
) -> dict:
    """`tokenize_dataset` once the output is checked and locked."""
    split_of = splits or (lambda v: visit_splits(v, config.split))
    write = partial(_write_tokens, data_dir=Path(data_dir), out_dir=out_dir, config=config,
                    overwrite=overwrite, check_classes=check_classes)  # fmt: skip
    if tokenizer is not None and cache_dir is not None:
        return _tokenize_incremental(data_dir, cache_dir, tokenizer, split_of, write)
    dataset = _read_split_visits(data_dir, config, tokenizer, split_of)
    written = partial(write, visits=dataset.visits, split=dataset.split, files=dataset.files)
    n_chunks = chunk_count(dataset.visits.height, dataset.files["events"], config)
    if n_chunks <= 1:
        return _tokenize_in_memory(data_dir, dataset, config, tokenizer, written)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return _tokenize_streamed(data_dir, dataset, config, tokenizer, written, n_chunks, out_dir)


def chunk_count(n_visits: int, event_files: list[Path], config: TokenizeConfig) -> int:
    """How many chunks the stage reads the events in: enough that none holds more than about
    `chunk_visits` visits or `chunk_events` event rows (counted from the files' footers);
    1 = in memory. Memory follows the events per chunk, which real data has many more of per
    visit than a visit count suggests."""
    n_events = sum(parquet_rows(path) for path in event_files)
    by_visits = math.ceil(n_visits / config.chunk_visits)
    return max(by_visits, math.ceil(n_events / config.chunk_events), 1)


# The setting that sizes each split, named when a split's labels miss a class.
SPLIT_SETTINGS = {
    "train": "split.val_fraction and split.test_fraction (train is what they leave)",
    "val": "split.val_fraction (--val-fraction)",
    "test": "split.test_fraction (--test-fraction)",
}
# What sizes each split when the visits carry their own (a split column, subject_splits.parquet).
OWN_SPLIT = {name: "the data's own split (its split column)" for name in SPLIT_SETTINGS}


def sizing_settings(visits: pl.DataFrame, settings: Mapping[str, str]) -> Mapping[str, str]:
    """What to name when a split misses a class: the data's own split where the visits carry
    one, else `settings` (the settings that size each split)."""
    return OWN_SPLIT if "split" in visits.columns else settings


def check_split_classes(
    visit_ids: pl.Series,
    split: pl.Series,
    labels: pl.DataFrame,
    *,
    settings: Mapping[str, str],
    required: bool,
    source: str = LABELS.filename,
) -> None:
    """Each split's labeled visits hold both classes: fine-tuning, selection and the report
    each need one split's positives and negatives. Shape: visit_ids, split (V,).

    Raises:
        InputError (`required`; else the same line is logged as a warning): naming `source`
        (the labels file), the split, its counts and the setting to change.
    """
    counts = (
        pl.DataFrame({"visit_id": visit_ids, "split": split})
        .join(labels.select("visit_id", "label"), on="visit_id", how="inner")
        .group_by("split")
        .agg(n=pl.len(), positives=pl.col("label").sum())
    )
    found = {row["split"]: row for row in counts.iter_rows(named=True)}
    for name in SPLITS:
        row = found.get(name, {"n": 0, "positives": 0})
        if 0 < row["positives"] < row["n"]:
            continue
        what = "no labeled visits" if row["n"] == 0 else (
            f"{row['n']} labeled visits, all {'positive' if row['positives'] else 'negative'}"
        )  # fmt: skip
        error = InputError(
            f"the {name} split has {what}: every split needs both classes among its labels "
            f"before training; change {settings[name]}, or add labels",
            file=source,
            column="label",
        )
        if required:
            raise error
        log.warning("tokenize: %s", error)


def _check_output(data_dir: Path, out_dir: Path, *, overwrite: bool) -> None:
    """A tokens directory is written where it is new, empty, or (with `overwrite`) an earlier
    tokens directory; never at, inside or above the dataset."""
    check_outside_inputs(out_dir, {"DATA": data_dir})
    check_output_dir(out_dir, "tokens")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise InputError("output directory already exists (use --overwrite)", file=str(out_dir))


def _tokenize_incremental(
    data_dir: Path,
    cache_dir: Path,
    tokenizer: Tokenizer,
    split_of: Callable[[pl.DataFrame], pl.Series],
    write: Callable[..., dict],
) -> dict:
    """A production tokenizer against the registry's cache: only new or changed visits."""
    visits, tokens, files, _ = cached_tokens(data_dir, cache_dir, tokenizer)
    labels = _labels(data_dir, visits, files)
    split = split_of(visits)
    kept = split.is_not_null()
    _log_left_out(split)
    visits, tokens, split = visits.filter(kept), tokens.filter(kept), split.drop_nulls()
    return write(
        [tokens.with_columns(split)],
        tokenizer=tokenizer,
        visits=visits,
        split=split,
        labels=labels,
        files=files,
    )


def _log_left_out(split: pl.Series) -> None:
    """Says how many visits a split leaves out (null): a retrain's temporal split leaves out
    the earlier visits of its test window's patients, so that no patient is on both sides."""
    if split.null_count():
        log.info("tokenize: %d visits left out by the split (earlier visits of test-window "
                 "patients)", split.null_count())  # fmt: skip


@dataclass
class _SplitVisits:
    """The checked visits of a dataset with their split, read before any event is."""

    files: dict[str, list[Path]]
    source: str  # the visits file's name, for error messages about events
    all_visits: pl.DataFrame | None  # every visit, those the split leaves out too (labels)
    visits: pl.DataFrame  # the visits tokenized
    split: pl.Series  # (V,) their splits
    times: object  # read_visits' time index of the visits, for reading events
    static_columns: dict[str, str]
    data_config: DataConfig
    event_budget: int  # events that fit in a sequence

    @property
    def fit_mask(self):  # noqa: ANN201 - numpy bool array (V,)
        return (self.split == "train").to_numpy()


def _read_split_visits(
    data_dir: Path,
    config: TokenizeConfig,
    tokenizer: Tokenizer | None,
    split_of: Callable[[pl.DataFrame], pl.Series],
) -> _SplitVisits:
    data_config = config.data if tokenizer is None else tokenizer.input_config()
    files = dataset_files(data_dir)
    (visits_path,) = files["visits"]
    all_visits, static_columns, _, times = read_visits(visits_path, data_config)
    if tokenizer is not None:
        tokenizer.check_static_columns(static_columns, str(visits_path))
    split = split_of(all_visits)
    visits = all_visits
    if split.null_count():
        _log_left_out(split)
        visits, split = visits.filter(split.is_not_null()), split.drop_nulls()
    if tokenizer is None:
        check_fit_mask((split == "train").to_numpy())
    tokenizer_config = config.tokenizer if tokenizer is None else tokenizer.config
    budget = event_budget(tokenizer_config, len(static_columns))  # before any events are read
    return _SplitVisits(files, visits_path.name, all_visits, visits, split, times,
                        static_columns, data_config, budget)  # fmt: skip


def _fit_settings(dataset: _SplitVisits, config: TokenizeConfig) -> dict:
    return dict(static_columns=dataset.static_columns, config=config.tokenizer,
                data_config=config.data)  # fmt: skip


def _tokenize_in_memory(
    data_dir: Path,
    dataset: _SplitVisits,
    config: TokenizeConfig,
    tokenizer: Tokenizer | None,
    written: Callable[..., dict],
) -> dict:
    visits = dataset.visits
    events = read_events(dataset.files["events"], visits, config=dataset.data_config,
                         times=dataset.times, source=dataset.source)  # fmt: skip
    labels = _labels(data_dir, dataset.all_visits, dataset.files)
    if tokenizer is None:
        windows = build_windows(
            visits,
            events,
            lookback_days=config.tokenizer.lookback_days,
            max_events=dataset.event_budget,
        )
        del events  # the windows hold them, sorted
        fit_mask = dataset.fit_mask
        tokenizer = fit_tokenizer(
            visits, windows, fit_mask=fit_mask, **_fit_settings(dataset, config)
        )
        tokens = tokenizer.encode_windows(visits, windows)
        del windows
    else:
        tokens = tokenizer.encode_checked(visits, events)
    return written([tokens.with_columns(dataset.split)], tokenizer=tokenizer, labels=labels)


def _tokenize_streamed(
    data_dir: Path,
    dataset: _SplitVisits,
    config: TokenizeConfig,
    tokenizer: Tokenizer | None,
    written: Callable[..., dict],
    n_chunks: int,
    out_dir: Path,
) -> dict:
    """Events partitioned by patient into a work directory beside `out_dir` (removed on exit,
    or by the next tokenize to `out_dir` if killed), then read chunk by chunk: memory holds one
    chunk of events, not the dataset."""
    with partitioned_events(
        dataset.files["events"],
        dataset.visits,
        n_chunks=n_chunks,
        times=dataset.times,
        config=dataset.data_config,
        source=dataset.source,
        beside=out_dir,
    ) as chunks:
        # read_labels checks against every visit, those the split leaves out too
        labels = _labels(data_dir, dataset.all_visits, dataset.files)
        dataset.times = dataset.all_visits = None  # no longer needed: free them
        if tokenizer is None:
            tokenizer = fit_chunks(dataset.visits, chunks, fit_mask=dataset.fit_mask,
                                   **_fit_settings(dataset, config))  # fmt: skip
        tokens = encode_chunks(dataset.visits, dataset.split, chunks, tokenizer)
        return written(tokens, tokenizer=tokenizer, labels=labels)


def _labels(
    data_dir: Path, visits: pl.DataFrame, files: dict[str, list[Path]]
) -> pl.DataFrame | None:
    """The checked labels (None without labels.parquet), whose file joins `files`."""
    labels = read_labels(data_dir, visits)
    if labels is not None:
        files["labels"] = [Path(data_dir) / LABELS.filename]
    return labels


def _write_tokens(
    chunks: Iterable[pl.DataFrame],
    *,
    tokenizer: Tokenizer,
    visits: pl.DataFrame,
    split: pl.Series,
    labels: pl.DataFrame | None,
    files: dict[str, list[Path]],
    data_dir: Path,
    out_dir: Path,
    config: TokenizeConfig,
    overwrite: bool,
    check_classes: Callable[..., None],
) -> dict:
    """Write the tokens directory atomically from `chunks`, the encoded visits (`Tokenizer.
    encode` columns and `split`) in any grouping: `visits` and `split` (shape (V,)) are all
    of them, for the manifest. Returns the manifest."""
    if labels is not None and labels.height:
        check_classes(visits, split, labels)
    if labels is None:
        labels = pl.DataFrame(schema={"visit_id": visits.schema["visit_id"], "label": pl.Boolean})
    arrivals = visits["arrival_time"]
    manifest = {
        "format": TOKENS_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "ehr_ssl_version": __version__,
        "inputs": input_fingerprint(files, data_dir),
        "vocab_size": tokenizer.vocab_size,
        "static_columns": tokenizer.static_columns,
        "arrival_time_range": [str(arrivals.min()), str(arrivals.max())],
        "splits": {},
    }
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        write_marker(tmp, "tokens")
        tokenizer.save(tmp)
        copy_code_hierarchy(Path(data_dir) / CODES_FILE, tmp / CODES_FILE)
        writers = {name: ShardWriter(tmp, name, config.shard_visits) for name in SPLITS}
        for tokens in chunks:
            # The label by a join of the ids alone: joining `tokens` would copy its lists.
            label = tokens.select("visit_id").join(
                labels, on="visit_id", how="left", maintain_order="left"
            )["label"]
            tokens = tokens.with_columns(label=label, labeled=label.is_not_null()).select(
                "visit_id", "patient_id", "split", "labeled", "label", "length", *TOKEN_COLUMNS
            )
            for name, writer in writers.items():
                writer.append(tokens.filter(pl.col("split") == name))
            del tokens  # before the next chunk is encoded
        for name, writer in writers.items():
            manifest["splits"][name] = writer.close()
            for column in ("arrival_time", "prediction_time"):
                in_split = visits[column].filter(split == name)
                manifest["splits"][name][f"{column}_range"] = (
                    [str(in_split.min()), str(in_split.max())] if in_split.len() else None
                )
        atomic_write_text(tmp / TOKENS_CONFIG_FILE, json.dumps(to_dict(config), indent=2) + "\n")
        atomic_write_text(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest
