"""The event tokenizer: turns each visit into a token sequence for a transformer.

A visit's sequence, with per-token segment ids (0 static, 1 history, 2 current visit):

    [CLS] static... [HIST] history events... [VISIT] current-visit events...
      0     0         1     1                    2       2

History events have `arrival_time - lookback <= time < arrival_time`; current-visit events have
`arrival_time <= time <= prediction_time`. No event with `time > prediction_time` is ever read.
When a visit has more events than fit in `max_length`, the oldest are dropped first, so the current
visit is kept whole unless it alone overflows (then its most recent events are kept).

Per token: `input_ids` (vocabulary id), `value_bins` (0 = no numeric value, 1..n_bins = per-code
quantile bin), `time_deltas` (hours relative to the prediction time, <= 0) and `segment_ids`.
Static features are tokens too: `STATIC//<column>` with a value bin for numeric columns,
`STATIC//<column>//<value>` for categorical ones (`STATIC//<column>` alone when the value is null).
The vocabulary and the bin edges are fitted on the training visits only; codes held by fewer than
`min_count` distinct training patients map to their class (`ehr_ssl.tokens.backoff`, with
`rare_codes = "ancestor"`) or to [UNK].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from ehr_ssl.atomic import atomic_write_text
from ehr_ssl.config import DataConfig, TokenizerConfig
from ehr_ssl.data.readers import (
    check_events,
    check_time_zones,
    check_visits,
)
from ehr_ssl.data.schema import SCHEMA_VERSION
from ehr_ssl.data.windows import EventWindows, build_windows
from ehr_ssl.errors import InputError
from ehr_ssl.layout import TOKENIZER_FILE
from ehr_ssl.settings import from_dict, to_dict
from ehr_ssl.tokens.backoff import backoff_target, rare_code_pairs, with_backoff_classes
from ehr_ssl.tokens.vocab import (
    CLS_ID,
    HIST_ID,
    NO_VALUE_BIN,
    SEGMENT_CURRENT,
    SEGMENT_HISTORY,
    SEGMENT_STATIC,
    SPECIAL_TOKENS,
    TOKEN_COLUMNS,
    UNK_ID,
    VISIT_ID,
)

_US_PER_HOUR = 3_600_000_000


def event_budget(config: TokenizerConfig, n_static: int) -> int:
    """Events that fit in a sequence: max_length less [CLS], two separators and the statics."""
    budget = config.max_length - 3 - n_static
    if budget < 1:
        raise InputError(
            f"max_length {config.max_length} leaves no room for events after {n_static} static "
            "tokens and 3 special tokens",
            setting="tokenizer.max_length",
        )
    return budget


def static_events(visits: pl.DataFrame, static_columns: dict[str, str]) -> pl.DataFrame:
    """Static features as (visit, code, numeric_value) rows, visit-major, column order kept."""
    parts = []
    for position, (name, kind) in enumerate(static_columns.items()):
        if kind == "numeric":
            code = pl.lit(f"STATIC//{name}")
            value = pl.col(name).cast(pl.Float64).fill_nan(None)
        else:
            text = pl.col(name).cast(pl.String)
            code = pl.when(text.is_null()).then(pl.lit(f"STATIC//{name}"))
            code = code.otherwise(pl.lit(f"STATIC//{name}//") + text)
            value = pl.lit(None, pl.Float64)
        parts.append(
            visits.select(
                pl.int_range(pl.len(), dtype=pl.Int64).alias("visit"),
                pl.lit(position, pl.Int32).alias("position"),
                "patient_id",
                code.alias("code"),
                value.alias("numeric_value"),
            )
        )
    if not parts:
        return pl.DataFrame(
            schema={
                "visit": pl.Int64,
                "position": pl.Int32,
                "patient_id": visits.schema["patient_id"],
                "code": pl.String,
                "numeric_value": pl.Float64,
            }
        )
    return pl.concat(parts).sort("visit", "position")


@dataclass
class Tokenizer:
    """A fitted vocabulary, per-code bin edges and the settings that produced them."""

    vocab: list[str]
    bin_edges: dict[str, list[float]]
    static_columns: dict[str, str]
    config: TokenizerConfig
    data_config: DataConfig

    def __post_init__(self) -> None:
        # Codes are looked up among the data codes only (ids from len(SPECIAL_TOKENS) on): the
        # special tokens are positions, not codes, so a data code spelled "[CLS]" is an ordinary
        # code with an id of its own and never collides with the [CLS] token.
        first = len(SPECIAL_TOKENS)
        codes = self.vocab[first:]
        if len(set(codes)) != len(codes):
            raise InputError("the vocabulary lists a code twice", column="vocab")
        self._ids = pl.DataFrame(
            {"code": codes, "id": pl.Series(range(first, len(self.vocab)), dtype=pl.Int32)},
            schema={"code": pl.String, "id": pl.Int32},
        )
        # Shape: (n_bins - 1, V): edge j of every token id, +inf padded; the value bin is
        # 1 + the number of edges <= value. Edge-major so each edge is one small 1-D lookup.
        edges = np.full((max(self.config.n_bins - 1, 0), len(self.vocab)), np.inf)
        has_bins = np.zeros(len(self.vocab), dtype=bool)
        self._index = index = {code: first + i for i, code in enumerate(codes)}
        if not set(self.bin_edges) <= set(index):
            raise InputError("bin edges for a code not in the vocabulary", column="bin_edges")
        for code, code_edges in self.bin_edges.items():
            edges[: len(code_edges), index[code]] = code_edges
            has_bins[index[code]] = True
        self._edges, self._has_bins = edges, has_bins

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # --- encoding -------------------------------------------------------------------------

    def input_config(self) -> DataConfig:
        """How new visits and events are read for this tokenizer: the prediction time rule and
        the static columns it was fitted with."""
        return DataConfig(
            prediction_offset_minutes=self.data_config.prediction_offset_minutes,
            static_columns=list(self.static_columns),
            drop_null_time_events=self.data_config.drop_null_time_events,
        )

    def encode(self, visits: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
        """Tokenize visits with this fitted vocabulary (for new data; unknown codes -> [UNK]).

        Takes raw visits/events frames as in the input contract and returns one row per visit:
        visit_id, patient_id, length and the list columns of TOKEN_COLUMNS.
        """
        check_time_zones(
            [
                (
                    "visits",
                    visits.select(
                        c for c in ("arrival_time", "prediction_time") if c in visits.columns
                    ),
                ),
                ("events", events.select(c for c in ("time",) if c in events.columns)),
            ]
        )
        visits = self.check_visits(visits)
        events = check_events(events, config=self.input_config())
        if visits.schema["patient_id"] != events.schema["patient_id"]:
            raise InputError(
                f"type {events.schema['patient_id']} differs from visits.patient_id type "
                f"{visits.schema['patient_id']}",
                file="events",
                column="patient_id",
            )
        return self.encode_checked(visits, events)

    def check_visits(self, visits: pl.DataFrame, source: str = "visits") -> pl.DataFrame:
        """Check and normalize a visits table against the contract and this tokenizer's
        static columns (present, and of the kind they were fitted as)."""
        visits, static_columns, _ = check_visits(visits, config=self.input_config(), source=source)
        self.check_static_columns(static_columns, source)
        return visits

    def check_static_columns(self, static_columns: dict[str, str], source: str) -> None:
        """New data's static columns must be those the tokenizer was fitted with, of the same
        kind (numeric or categorical)."""
        for name, kind in self.static_columns.items():
            if static_columns.get(name) != kind:
                raise InputError(
                    f"was {kind} when the tokenizer was fitted, is "
                    f"{static_columns.get(name, 'missing')} now",
                    file=source,
                    column=name,
                )

    def encode_checked(self, visits: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
        """`encode` for visits and events already checked and normalized (readers.check_*)."""
        windows = build_windows(
            visits,
            events,
            lookback_days=self.config.lookback_days,
            max_events=event_budget(self.config, len(self.static_columns)),
        )
        return self.encode_windows(visits, windows)

    def encode_windows(self, visits: pl.DataFrame, windows: EventWindows) -> pl.DataFrame:
        """Assemble the token sequences of normalized `visits` from their event windows."""
        n_visits, n_static = visits.height, len(self.static_columns)
        ev_ids, ev_bins = self._token_ids(windows.events)
        st = static_events(visits, self.static_columns)
        st_ids, st_bins = self._token_ids(st)

        n_events = windows.lengths
        n_history = windows.current - windows.start
        lengths = 3 + n_static + n_events
        offsets = np.zeros(n_visits + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        input_ids = np.empty(total, dtype=np.int32)
        value_bins = np.zeros(total, dtype=np.int8)
        time_deltas = np.zeros(total, dtype=np.float32)
        segment_ids = np.full(total, SEGMENT_STATIC, dtype=np.int8)

        base = offsets[:-1]
        pred_us = _micros(visits["prediction_time"])
        arrival_us = _micros(visits["arrival_time"])
        input_ids[base] = CLS_ID
        if n_static:
            # Shape: (V, S) positions of the static tokens, right after [CLS].
            static_pos = (base[:, None] + 1 + np.arange(n_static)).ravel()
            input_ids[static_pos] = st_ids
            value_bins[static_pos] = st_bins
        hist_pos = base + 1 + n_static
        visit_pos = hist_pos + 1 + n_history
        input_ids[hist_pos], input_ids[visit_pos] = HIST_ID, VISIT_ID
        window_us = (arrival_us - pred_us) - int(self.config.lookback_days * 24 * _US_PER_HOUR)
        time_deltas[hist_pos] = window_us / _US_PER_HOUR
        time_deltas[visit_pos] = (arrival_us - pred_us) / _US_PER_HOUR
        segment_ids[hist_pos] = SEGMENT_HISTORY
        segment_ids[visit_pos] = SEGMENT_CURRENT

        # Event k of visit v (k counted within its kept window) goes to hist_pos[v] + 1 + k,
        # one further along once past the history (the [VISIT] separator sits between).
        visit_of, k, src = windows.gather_index()
        in_current = k >= n_history[visit_of]
        dst = hist_pos[visit_of] + 1 + k + in_current
        input_ids[dst] = ev_ids[src]
        value_bins[dst] = ev_bins[src]
        event_us = _micros(windows.events["time"])[src]
        time_deltas[dst] = (event_us - pred_us[visit_of]) / _US_PER_HOUR
        segment_ids[dst] = np.where(in_current, SEGMENT_CURRENT, SEGMENT_HISTORY)

        # 64-bit offsets: polars' own list layout (no conversion), and no 2**31-token limit.
        arrow_offsets = _arrow(offsets)
        columns = {
            name: pl.from_arrow(pa.LargeListArray.from_arrays(arrow_offsets, _arrow(values)))
            for name, values in zip(
                TOKEN_COLUMNS, (input_ids, value_bins, time_deltas, segment_ids), strict=True
            )
        }
        return visits.select("visit_id", "patient_id").with_columns(
            length=pl.Series(lengths.astype(np.int32)), **columns
        )

    def _token_ids(self, events: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Shape (E,), (E,): the vocabulary id and value bin of each event row."""
        found = events.select("code").join(self._ids, on="code", how="left", maintain_order="left")
        ids = found["id"]
        backed_off = None
        if self.config.rare_codes == "ancestor" and ids.null_count():
            ids, backed_off = self._backed_off(events["code"], ids)
        ids = ids.fill_null(UNK_ID).to_numpy()
        values = events["numeric_value"].to_numpy()
        has_value = ~np.isnan(values)
        valued_ids, valued = ids[has_value], values[has_value]
        count = np.ones(len(valued), dtype=np.int8)
        for edge in self._edges:  # n_bins - 1 passes of a (V,) lookup beat one (E, n_bins) gather
            count += valued >= edge[valued_ids]
        bins = np.zeros(len(ids), dtype=np.int8)
        bins[has_value] = np.where(self._has_bins[valued_ids], count, NO_VALUE_BIN)
        if backed_off is not None:  # a value of another code, on another scale: no bin
            bins[backed_off] = NO_VALUE_BIN
        return ids, bins

    def _backed_off(self, codes: pl.Series, ids: pl.Series) -> tuple[pl.Series, np.ndarray]:
        """`ids` (null for codes outside the vocabulary) with each such code's class id
        (`backoff_target`) where it has one, and the (E,) bool mask of the rows backed off."""
        unknown = codes.filter(ids.is_null()).unique().to_list()
        targets = {c: self._index[t] for c in unknown if (t := backoff_target(c, self._index))}
        mapping = pl.DataFrame(
            {"code": list(targets), "target": list(targets.values())},
            schema={"code": pl.String, "target": pl.Int32},
        )
        target = codes.to_frame("code").join(mapping, on="code", how="left", maintain_order="left")
        backed_off = (ids.is_null() & target["target"].is_not_null()).to_numpy()
        return ids.fill_null(target["target"]), backed_off

    # --- persistence ----------------------------------------------------------------------

    def to_json(self) -> str:
        """The tokenizer as tokenizer.json's text: vocabulary, bin edges and settings."""
        document = {
            "schema_version": SCHEMA_VERSION,
            "special_tokens": list(SPECIAL_TOKENS),
            "config": to_dict(self.config),
            "data_config": to_dict(self.data_config),
            "static_columns": self.static_columns,
            "vocab": self.vocab,
            "bin_edges": self.bin_edges,
        }
        return json.dumps(document, indent=1) + "\n"

    def save(self, directory: Path) -> Path:
        """Write `tokenizer.json` (vocabulary, bin edges, settings) into `directory`."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        path = Path(directory) / TOKENIZER_FILE
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, directory: Path) -> Tokenizer:
        """Read a tokenizer saved by `save` (a directory or the tokenizer.json path itself).

        Raises:
            InputError: naming the file, if it is missing, not JSON or not a tokenizer.
        """
        path = Path(directory)
        path = path / TOKENIZER_FILE if path.is_dir() else path
        document = _read_document(path)
        try:
            # Fitted before tokenizer.rare_codes existed: rare codes were [UNK].
            document["config"].setdefault("rare_codes", "unk")
            return cls(
                vocab=document["vocab"],
                bin_edges=document["bin_edges"],
                static_columns=document["static_columns"],
                config=from_dict(TokenizerConfig, document["config"], source=str(path)),
                data_config=from_dict(DataConfig, document["data_config"], source=str(path)),
            )
        except InputError as e:
            if e.file is not None:
                raise
            raise e.in_file(str(path)) from None
        except (KeyError, TypeError, ValueError, AttributeError, pl.exceptions.PolarsError) as e:
            # An edited file: a key missing, a value of the wrong type.
            problem = f"not a valid tokenizer ({type(e).__name__}: {e})"[:200]
            raise InputError(problem, file=str(path)) from None


def _read_document(path: Path) -> dict:
    """tokenizer.json's JSON object, of the supported schema version and vocabulary layout."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("tokenizer file not found", file=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON ({e})", file=str(path)) from None
    if not isinstance(document, dict):
        raise InputError("not a tokenizer (expected a JSON object)", file=str(path))
    if document.get("schema_version") != SCHEMA_VERSION:
        raise InputError(
            f"schema version {document.get('schema_version')} is not the supported "
            f"{SCHEMA_VERSION}",
            file=str(path),
        )
    vocab = document.get("vocab")
    if not isinstance(vocab, list) or tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise InputError("vocabulary does not start with the special tokens", file=str(path))
    return document


def fit_tokenizer(
    visits: pl.DataFrame,
    windows: EventWindows,
    *,
    fit_mask: np.ndarray,
    static_columns: dict[str, str],
    config: TokenizerConfig,
    data_config: DataConfig,
) -> Tokenizer:
    """Fit the vocabulary and bin edges on what the visits selected by `fit_mask` read.

    `fit_mask` (shape (V,) bool) selects the training visits: nothing of the other visits is
    looked at. Each event counts once however many visits read it; a code's count is the number
    of distinct patients who have it. (`ehr_ssl.tokens.stream` fits the same from chunks.)
    """
    check_fit_mask(fit_mask)
    rows = fit_rows(visits, windows, fit_mask=fit_mask, static_columns=static_columns)
    counts = patient_counts(rows)
    if config.rare_codes == "ancestor":
        pairs = rare_code_pairs(rows, config.min_count)
        counts = with_backoff_classes(counts, pairs, config.min_count)
    vocab = fit_vocabulary(counts, config)
    bin_edges = fit_bin_edges(rows, vocab[len(SPECIAL_TOKENS) :], config.n_bins)
    return Tokenizer(vocab, bin_edges, dict(static_columns), config, data_config)


def check_fit_mask(fit_mask: np.ndarray) -> None:
    """There must be a training visit to fit on."""
    if not fit_mask.any():
        raise InputError(
            "no visit in the training split (too few patients, or split fractions leave none)",
            column="split",
        )


def fit_rows(
    visits: pl.DataFrame,
    windows: EventWindows,
    *,
    fit_mask: np.ndarray,
    static_columns: dict[str, str],
) -> pl.DataFrame:
    """What the visits selected by `fit_mask` (shape (V,) bool) read, each event once, and their
    static features: rows of patient_id, code, numeric_value."""
    columns = ["patient_id", "code", "numeric_value"]
    read = windows.events.select(columns).filter(pl.Series(windows.read_mask(fit_mask)))
    statics = static_events(visits.filter(pl.Series(fit_mask)), static_columns)
    return pl.concat([read, statics.select(columns)], rechunk=False)


def patient_counts(rows: pl.DataFrame) -> pl.DataFrame:
    """Distinct patients per code of `fit_rows`: columns code, patients. Counts of disjoint sets
    of patients add up."""
    return rows.group_by("code").agg(pl.col("patient_id").n_unique().alias("patients"))


def fit_vocabulary(counts: pl.DataFrame, config: TokenizerConfig) -> list[str]:
    """The special tokens, then the codes held by >= min_count patients (`patient_counts`), most
    frequent first, ties by code."""
    kept = counts.filter(pl.col("patients") >= config.min_count).sort(
        ["patients", "code"], descending=[True, False]
    )
    if kept.height == 0:
        raise InputError(
            f"no code is held by min_count={config.min_count} training patients: the vocabulary "
            "would be empty",
            setting="tokenizer.min_count",
        )
    return list(SPECIAL_TOKENS) + kept["code"].to_list()


def fit_bin_edges(rows: pl.DataFrame, codes: list[str], n_bins: int) -> dict[str, list[float]]:
    """Per-code bin edges: the linear quantiles i / n_bins (i = 1..n_bins-1) of the numeric
    values in `rows` (code, numeric_value) of each of `codes` that has values, sorted by code.
    A code's edges need all its values, and only them."""
    quantiles = [i / n_bins for i in range(1, n_bins)]
    known = pl.col("code").is_in(pl.Series(codes, dtype=pl.String).implode())
    valued = rows.filter(pl.col("numeric_value").is_not_null() & known)
    edges = valued.group_by("code").agg(
        pl.col("numeric_value").quantile(q, "linear").alias(f"q{i}")
        for i, q in enumerate(quantiles)
    )
    # Repeated quantiles (discrete values such as triage levels) collapse into one edge.
    return {row[0]: sorted(set(row[1:])) for row in edges.sort("code").iter_rows()}


def _arrow(values: np.ndarray) -> pa.Array:
    """Wrap a 1-D numpy array as an Arrow array without a copy. (pa.array() would import
    pandas on first use, a fifth of a second on every run.)"""
    values = np.ascontiguousarray(values)
    dtype = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(dtype, len(values), [None, pa.py_buffer(values)])


def _micros(times: pl.Series) -> np.ndarray:
    return times.cast(pl.Datetime("us")).dt.epoch("us").to_numpy()
