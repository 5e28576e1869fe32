"""The tokenizer: train-only fitting, no leaks, determinism, identical save/load, and the stage
streamed in chunks of patients giving the in-memory result."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from ehr_ssl.config import DataConfig, SplitConfig, TokenizeConfig, TokenizerConfig
from ehr_ssl.data.splits import assign_splits, temporal_splits
from ehr_ssl.data.synthetic import generate_cohort, write_cohort
from ehr_ssl.errors import InputError
from ehr_ssl.tokens.shards import ShardWriter, open_shard, read_manifest, read_split
from ehr_ssl.tokens.tokenize import tokenize_dataset
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import (
    CLS_ID,
    HIST_ID,
    SEGMENT_CURRENT,
    SEGMENT_HISTORY,
    SPECIAL_TOKENS,
    UNK_ID,
    VISIT_ID,
)
from tests.conftest import make_tables, write_tables

SPLIT = SplitConfig(seed=0, val_fraction=0.25, test_fraction=0.25)


def _config(static_columns=None, chunk_visits=1_000_000, **tokenizer) -> TokenizeConfig:
    return TokenizeConfig(
        data=DataConfig(static_columns=static_columns),
        split=SPLIT,
        tokenizer=TokenizerConfig(**{"min_count": 2, **tokenizer}),
        chunk_visits=chunk_visits,
    )


def _run(tmp_path, tables, name="tokens", static_columns=None, chunk_visits=1_000_000, **tokenizer):
    data = write_tables(tmp_path / f"data-{name}", tables)
    out = tmp_path / name
    manifest = tokenize_dataset(data, out, _config(static_columns, chunk_visits, **tokenizer))
    frames = {s: read_split(out, s) for s in ("train", "val", "test")}
    return manifest, Tokenizer.load(out), pl.concat(frames.values()).sort("visit_id")


def _patients(split_name: str, n: int = 40) -> list[int]:
    ids = pl.Series(range(n))
    return ids.filter(assign_splits(ids, SPLIT) == split_name).to_list()


def _add_events(tables, rows):
    extra = pl.DataFrame(rows, schema=tables["events"].schema, orient="row")
    tables["events"] = pl.concat([tables["events"], extra])


def _history_time(tables, patient: int):
    arrival = tables["visits"].filter(pl.col("patient_id") == patient)["arrival_time"].min()
    return arrival - timedelta(days=5)


def test_vocabulary_fitted_on_training_patients_only(tmp_path):
    tables = make_tables()
    train, heldout = _patients("train"), _patients("val") + _patients("test")
    assert len(train) > 5 and len(heldout) > 5
    # A code held by many val/test patients only, and a code held by one train patient only
    # (many times): neither may enter the vocabulary.
    _add_events(tables, [(p, _history_time(tables, p), "DX//HELDOUT_ONLY", None) for p in heldout])
    t = _history_time(tables, train[0])
    _add_events(
        tables, [(train[0], t + timedelta(minutes=i), "DX//ONE_PATIENT", None) for i in range(20)]
    )
    _add_events(tables, [(p, _history_time(tables, p), "DX//SHARED", None) for p in train[:3]])
    _, tokenizer, tokens = _run(tmp_path, tables, min_count=2)
    assert "DX//HELDOUT_ONLY" not in tokenizer.vocab
    assert "DX//ONE_PATIENT" not in tokenizer.vocab
    assert "DX//SHARED" in tokenizer.vocab
    assert tuple(tokenizer.vocab[: len(SPECIAL_TOKENS)]) == SPECIAL_TOKENS
    # The dropped codes are still read, as [UNK].
    first_visit = tokens.filter(pl.col("patient_id") == train[0])["input_ids"][0].to_list()
    assert first_visit.count(UNK_ID) >= 20


def test_bins_and_vocabulary_ignore_heldout_values(tmp_path):
    tables = make_tables()
    _, reference, _ = _run(tmp_path, tables, name="a")
    heldout = pl.col("patient_id").is_in(_patients("val") + _patients("test"))
    tables["events"] = tables["events"].with_columns(
        pl.when(heldout).then(pl.col("numeric_value") * 1000).otherwise(pl.col("numeric_value"))
    )
    _, perturbed, _ = _run(tmp_path, tables, name="b")
    assert perturbed.vocab == reference.vocab
    assert perturbed.bin_edges == reference.bin_edges


def test_bins_match_numpy_quantiles_of_training_values(tmp_path):
    tables = make_tables()
    _, tokenizer, tokens = _run(tmp_path, tables, n_bins=4)
    train = tables["events"].filter(
        pl.col("patient_id").is_in(_patients("train")) & (pl.col("code") == "LAB//LACTATE")
    )
    values = train["numeric_value"].to_numpy()
    expected = sorted(set(np.quantile(values, [0.25, 0.5, 0.75]).tolist()))
    assert tokenizer.bin_edges["LAB//LACTATE"] == pytest.approx(expected)
    lactate = tokenizer.vocab.index("LAB//LACTATE")
    flat = tokens.select(pl.col("input_ids", "value_bins").explode())
    bins = flat.filter(pl.col("input_ids") == lactate)["value_bins"].to_numpy()
    assert set(bins) <= set(range(1, 5)) and len(set(bins)) >= 3


def test_sequence_layout(tmp_path):
    tables = make_tables()
    manifest, tokenizer, tokens = _run(tmp_path, tables)
    assert manifest["static_columns"] == {"age": "numeric", "sex": "categorical"}
    for row in tokens.iter_rows(named=True):
        ids, segments = row["input_ids"], row["segment_ids"]
        assert len(ids) == row["length"] <= 256
        assert ids[0] == CLS_ID and ids[3] == HIST_ID and VISIT_ID in ids
        assert tokenizer.vocab[ids[1]] == "STATIC//age"
        assert tokenizer.vocab[ids[2]].startswith("STATIC//sex")
        assert segments == sorted(segments)  # static, then history, then current
        visit_at = ids.index(VISIT_ID)
        assert all(s == SEGMENT_HISTORY for s in segments[3:visit_at])
        assert all(s == SEGMENT_CURRENT for s in segments[visit_at:])
        assert max(row["time_deltas"]) <= 0


def test_post_prediction_events_never_appear(tmp_path):
    tables = make_tables()
    _, tokenizer, tokens = _run(tmp_path, tables)
    disposition = {i for i, code in enumerate(tokenizer.vocab) if code.startswith("DISP//")}
    first_visits = tokens.filter(pl.col("visit_id") % 2 == 0)  # no earlier visit to remember
    assert not disposition & set(first_visits["input_ids"].explode().to_list())
    second_visits = tokens.filter(pl.col("visit_id") % 2 == 1)
    assert disposition & set(second_visits["input_ids"].explode().to_list())


def _perturb_future(events: pl.DataFrame, cutoff: pl.DataFrame, change: str) -> pl.DataFrame:
    """Recode, revalue, delete or add events after each patient's time in `cutoff`."""
    schema = events.columns
    events = events.join(cutoff, on="patient_id")
    future = pl.col("time") > pl.col("cutoff")
    if change == "recode":
        events = events.with_columns(
            pl.when(future).then(pl.lit("LEAK//X")).otherwise("code").alias("code")
        )
    elif change == "revalue":
        events = events.with_columns(
            pl.when(future).then(9e9).otherwise("numeric_value").alias("numeric_value")
        )
    elif change == "delete":
        events = events.filter(~future)
    else:
        extra = cutoff.select(
            "patient_id",
            (pl.col("cutoff") + timedelta(microseconds=1)).alias("time"),
            pl.lit("LEAK//NEW").alias("code"),
            pl.lit(1.0).alias("numeric_value"),
        )
        events = pl.concat([events.select(schema), extra])
    return events.select(schema)


CHANGES = ["recode", "revalue", "delete", "add"]
TOKEN_FIELDS = ["visit_id", "input_ids", "value_bins", "time_deltas", "segment_ids"]


@pytest.mark.parametrize("change", CHANGES)
def test_future_event_invariance_per_visit(tmp_path, change):
    """With a fitted tokenizer, changing, deleting or adding events after a visit's prediction
    time changes none of that visit's tokens (bitwise)."""
    tables = make_tables()
    _, tokenizer, _ = _run(tmp_path, tables)
    first = tables["visits"].filter(pl.col("visit_id") % 2 == 0)
    cutoff = first.select("patient_id", pl.col("prediction_time").alias("cutoff"))
    perturbed = _perturb_future(tables["events"], cutoff, change)
    assert not perturbed.equals(tables["events"])
    before = tokenizer.encode(first, tables["events"]).select(TOKEN_FIELDS)
    after = tokenizer.encode(first, perturbed).select(TOKEN_FIELDS)
    assert before.equals(after)


@pytest.mark.parametrize("chunk_visits", [1_000_000, 20], ids=["in-memory", "streamed"])
@pytest.mark.parametrize("change", CHANGES)
def test_unread_events_change_nothing(tmp_path, change, chunk_visits):
    """Events after a patient's last prediction time are read by no visit: the whole stage
    (vocabulary, bins, every visit's tokens) is unchanged when they change."""
    tables = make_tables()
    _, reference_tokenizer, reference = _run(tmp_path, tables, "ref", chunk_visits=chunk_visits)
    cutoff = (
        tables["visits"].group_by("patient_id").agg(pl.col("prediction_time").max().alias("cutoff"))
    )
    tables["events"] = _perturb_future(tables["events"], cutoff, change)
    _, tokenizer, perturbed = _run(tmp_path, tables, "perturbed", chunk_visits=chunk_visits)
    assert tokenizer.vocab == reference_tokenizer.vocab
    assert tokenizer.bin_edges == reference_tokenizer.bin_edges
    assert perturbed.equals(reference)


@pytest.mark.parametrize("change", CHANGES)
def test_streamed_stage_reads_no_event_after_a_visits_prediction_time(tmp_path, change):
    """The stage streamed in chunks with a given tokenizer, on every patient's first visit: events
    after that visit's prediction time changed, deleted or added to change none of its tokens."""
    tables = make_tables()
    _, tokenizer, _ = _run(tmp_path, tables, "fitted")
    first = tables["visits"].filter(pl.col("visit_id") % 2 == 0)
    cutoff = first.select("patient_id", pl.col("prediction_time").alias("cutoff"))
    perturbed = _perturb_future(tables["events"], cutoff, change)
    tokens = []
    for name, events in (("before", tables["events"]), ("after", perturbed)):
        data = write_tables(tmp_path / name, {"visits": first, "events": events})
        config = _config(chunk_visits=6)  # 20 visits in 4 chunks
        tokenize_dataset(data, tmp_path / f"{name}-tokens", config, tokenizer=tokenizer)
        tokens.append(_read_tokens(tmp_path / f"{name}-tokens"))
    assert tokens[0].height == first.height
    assert tokens[0].equals(tokens[1])


def _read_tokens(out):
    """Every split's visits of a tokens directory, by visit_id."""
    return pl.concat(read_split(out, s) for s in ("train", "val", "test")).sort("visit_id")


@pytest.fixture(scope="module")
def cohort():
    return generate_cohort(600, labeled_frac=0.3, seed=4)


def _stream_config(chunk_visits: int, chunk_events: int = 10**9) -> TokenizeConfig:
    return TokenizeConfig(
        tokenizer=TokenizerConfig(max_length=64, min_count=3),
        shard_visits=70,
        chunk_visits=chunk_visits,
        chunk_events=chunk_events,
    )


@pytest.mark.parametrize("shards", [1, 3], ids=["events-file", "events-shards"])
def test_streamed_tokenization_equals_the_in_memory_one(tmp_path, cohort, caplog, shards):
    """Tokenized in 4 chunks of patients: the same tokenizer.json bytes, the same tokens, split
    and label per visit, the same counts, and no work directory left behind."""
    data = tmp_path / "data"
    write_cohort(cohort, data, shards=shards)
    expected = tokenize_dataset(data, tmp_path / "memory", _stream_config(1_000_000))
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        manifest = tokenize_dataset(data, tmp_path / "streamed", _stream_config(150))
    assert "partitioned into 4 chunks" in caplog.text
    assert "fitting, chunk 4/4" in caplog.text and "encoding, chunk 4/4" in caplog.text
    tokenizer_json = [
        (tmp_path / d / "tokenizer.json").read_bytes() for d in ("memory", "streamed")
    ]
    assert tokenizer_json[0] == tokenizer_json[1]
    assert len(Tokenizer.load(tmp_path / "memory").bin_edges) > 10
    memory, streamed = _read_tokens(tmp_path / "memory"), _read_tokens(tmp_path / "streamed")
    assert memory.height == cohort.visits.height and memory["labeled"].sum() == 180
    assert streamed.equals(memory)
    assert manifest["arrival_time_range"] == expected["arrival_time_range"]
    for name, entry in manifest["splits"].items():
        reference = expected["splits"][name]
        assert {k: v for k, v in entry.items() if k != "shards"} == {
            k: v for k, v in reference.items() if k != "shards"
        }
        sizes = [open_shard(tmp_path / "streamed" / shard).num_rows for shard in entry["shards"]]
        assert sizes[:-1] == [70] * (len(sizes) - 1) and 0 < sizes[-1] <= 70  # as in memory
        assert len(entry["shards"]) == len(reference["shards"])
    assert read_manifest(tmp_path / "streamed")["splits"] == manifest["splits"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "memory", "streamed"]


def test_many_events_per_visit_chunk_the_stage_by_events(tmp_path, cohort, caplog):
    """Few visits with many events each: `chunk_events` alone splits the stage (memory follows
    events, not visits), to the in-memory tokens; under it, the stage stays in memory."""
    data = tmp_path / "data"
    write_cohort(cohort, data, shards=2)
    n_events = cohort.events.height
    memory = tokenize_dataset(data, tmp_path / "memory", _stream_config(10**6, n_events))
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        tokenize_dataset(data, tmp_path / "by-events", _stream_config(10**6, -(-n_events // 3)))
    assert "partitioned into 3 chunks" in caplog.text
    assert _read_tokens(tmp_path / "by-events").equals(_read_tokens(tmp_path / "memory"))
    assert memory["splits"].keys() == read_manifest(tmp_path / "by-events")["splits"].keys()


def test_streamed_tokenization_with_a_given_tokenizer_and_left_out_visits(tmp_path, cohort):
    """Retraining's call (a production tokenizer, a temporal split that leaves visits out)
    streams to the in-memory result too."""
    data = tmp_path / "data"
    write_cohort(cohort, data, shards=2)
    tokenize_dataset(data, tmp_path / "fitted", _stream_config(1_000_000))
    tokenizer = Tokenizer.load(tmp_path / "fitted")
    window = SplitConfig(test_fraction=0.2)

    def splits(visits):
        return temporal_splits(visits["patient_id"], visits["prediction_time"], window)

    outputs = []
    for chunk_visits in (1_000_000, 100):
        out = tmp_path / f"chunks-{chunk_visits}"
        tokenize_dataset(
            data, out, _stream_config(chunk_visits), tokenizer=tokenizer, splits=splits
        )
        assert (out / "tokenizer.json").read_text() == tokenizer.to_json()
        outputs.append(_read_tokens(out))
    assert 0 < outputs[0].height < cohort.visits.height  # some visits left out
    assert outputs[1].equals(outputs[0])


def test_bad_input_in_a_later_events_shard_stops_the_streamed_stage(tmp_path, cohort):
    data = tmp_path / "data"
    write_cohort(cohort, data, shards=3)
    last = data / "events" / "part-00002.parquet"
    events = pl.read_parquet(last)
    empty_code = pl.int_range(pl.len()) == 7
    events.with_columns(code=pl.when(empty_code).then(pl.lit("")).otherwise("code")).write_parquet(
        last
    )
    message = "part-00002.parquet: column 'code': 1 empty strings (first at row index 7)"
    with pytest.raises(InputError, match=re.escape(message)):
        tokenize_dataset(data, tmp_path / "out", _stream_config(150))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_encode_with_loaded_tokenizer_is_identical_and_maps_unknown_codes(tmp_path):
    tables = make_tables()
    _, tokenizer, tokens = _run(tmp_path, tables)
    tokenizer.save(tmp_path / "copy")
    loaded = Tokenizer.load(tmp_path / "copy")
    assert loaded.vocab == tokenizer.vocab and loaded.bin_edges == tokenizer.bin_edges
    encoded = loaded.encode(tables["visits"], tables["events"]).sort("visit_id")
    columns = [
        "visit_id",
        "patient_id",
        "length",
        "input_ids",
        "value_bins",
        "time_deltas",
        "segment_ids",
    ]
    assert encoded.select(columns).equals(tokens.select(columns))
    assert tokenizer.encode(tables["visits"], tables["events"]).sort("visit_id").equals(encoded)

    new_events = tables["events"].with_columns(
        pl.when(pl.col("code") == "VITAL//HR")
        .then(pl.lit("VITAL//NEVER_SEEN"))
        .otherwise("code")
        .alias("code")
    )
    recoded = loaded.encode(tables["visits"], new_events).sort("visit_id")
    hr = tokenizer.vocab.index("VITAL//HR")
    before = encoded["input_ids"].explode().to_numpy()
    after = recoded["input_ids"].explode().to_numpy()
    assert np.array_equal(after[before == hr], np.full((before == hr).sum(), UNK_ID))
    assert np.array_equal(after[before != hr], before[before != hr])


def test_encode_rejects_changed_static_type(tmp_path):
    tables = make_tables()
    tables["visits"] = tables["visits"].with_columns(acuity=pl.col("patient_id") % 5)
    _, tokenizer, _ = _run(tmp_path, tables, static_columns=["age", "sex", "acuity"])
    assert tokenizer.static_columns["acuity"] == "numeric"
    visits = tables["visits"].with_columns(pl.col("acuity").cast(pl.String))
    with pytest.raises(InputError, match="was numeric when the tokenizer was fitted"):
        tokenizer.encode(visits, tables["events"])


def test_rare_static_values_map_to_unknown(tmp_path):
    tables = make_tables()
    tables["visits"] = tables["visits"].with_columns(
        sex=pl.when(pl.col("patient_id") == _patients("train")[0])
        .then(pl.lit("X"))
        .otherwise("sex")
    )
    _, tokenizer, tokens = _run(tmp_path, tables, min_count=2)
    assert "STATIC//sex//X" not in tokenizer.vocab
    rare = tokens.filter(pl.col("patient_id") == _patients("train")[0])
    assert rare["input_ids"].list.get(2).to_list() == [UNK_ID, UNK_ID]


def test_max_length_truncates_oldest_history(tmp_path):
    tables = make_tables()
    p = _patients("train")[0]
    t = _history_time(tables, p)
    _add_events(
        tables, [(p, t + timedelta(minutes=i), f"DX//C{i % 4}", float(i)) for i in range(50)]
    )
    _, tokenizer, tokens = _run(tmp_path, tables, max_length=12)
    assert tokens["length"].max() == 12
    row = tokens.filter(pl.col("patient_id") == p).row(0, named=True)
    # 12 = [CLS] + 2 statics + [HIST] + 5 history + [VISIT] + 2 current events. The kept
    # history must be the 5 most recent: DX codes 45..49 minutes after t (hours before the
    # prediction time: 5 days + 1 h - i minutes).
    history = [i for i, s in enumerate(row["segment_ids"]) if s == SEGMENT_HISTORY][1:]
    assert len(history) == 5
    prediction = tables["visits"].filter(pl.col("visit_id") == row["visit_id"])["prediction_time"][
        0
    ]
    expected = [
        (t + timedelta(minutes=i) - prediction).total_seconds() / 3600 for i in range(45, 50)
    ]
    assert [row["time_deltas"][i] for i in history] == pytest.approx(expected, abs=1e-3)
    current = [s for s in row["segment_ids"] if s == SEGMENT_CURRENT]
    assert len(current) == 3  # [VISIT] and both current-visit events before the cutoff survive
    with pytest.raises(InputError, match="leaves no room"):
        _run(tmp_path, tables, name="too-short", max_length=5)


def test_time_deltas_are_hours_before_the_prediction_time(tmp_path):
    tables = make_tables()
    _, tokenizer, tokens = _run(tmp_path, tables)
    lactate, hr = tokenizer.vocab.index("LAB//LACTATE"), tokenizer.vocab.index("VITAL//HR")
    flat = tokens.select(pl.col("input_ids", "time_deltas", "segment_ids").explode())
    # make_tables: arrival A, prediction A + 1 h, lactate at A + 15 min, heart rate at A + 30 min
    current = flat.filter(pl.col("segment_ids") == SEGMENT_CURRENT)
    assert (current.filter(pl.col("input_ids") == lactate)["time_deltas"] == -0.75).all()
    assert (current.filter(pl.col("input_ids") == hr)["time_deltas"] == -0.5).all()


def test_value_on_an_edge_goes_to_the_upper_bin(tmp_path):
    tables = make_tables()
    _, tokenizer, _ = _run(tmp_path, tables, n_bins=4)
    edges = tokenizer.bin_edges["LAB//LACTATE"]
    frame = pl.DataFrame(
        {
            "code": ["LAB//LACTATE"] * 3,
            "numeric_value": [edges[0] - 1e-9, edges[0], edges[-1] + 1.0],
        }
    )
    _, bins = tokenizer._token_ids(frame)
    assert bins.tolist() == [1, 2, len(edges) + 1]


def test_statics_are_fitted_on_training_patients_only(tmp_path):
    tables = make_tables()
    heldout = _patients("val") + _patients("test")
    tables["visits"] = tables["visits"].with_columns(
        sex=pl.when(pl.col("patient_id").is_in(heldout)).then(pl.lit("HELDOUT")).otherwise("sex"),
        age=pl.when(pl.col("patient_id").is_in(heldout)).then(500.0).otherwise("age"),
    )
    _, tokenizer, tokens = _run(tmp_path, tables)
    assert "STATIC//sex//HELDOUT" not in tokenizer.vocab
    assert max(tokenizer.bin_edges["STATIC//age"]) < 100
    rows = tokens.filter(pl.col("patient_id").is_in(heldout))
    assert rows["input_ids"].list.get(2).to_list() == [UNK_ID] * rows.height


def test_input_row_order_does_not_matter(tmp_path):
    tables = make_tables()
    # Ties: repeated labs at the same time with different values.
    repeats = (
        tables["events"]
        .filter(pl.col("code") == "LAB//LACTATE")
        .with_columns(pl.col("numeric_value") + 0.25)
    )
    tables["events"] = pl.concat([tables["events"], repeats])
    _, _, reference = _run(tmp_path, tables, name="a")
    tables["events"] = tables["events"].sample(fraction=1.0, shuffle=True, seed=1)
    tables["visits"] = tables["visits"].sample(fraction=1.0, shuffle=True, seed=2)
    _, _, shuffled = _run(tmp_path, tables, name="b")
    assert shuffled.equals(reference)


@pytest.mark.parametrize("chunk_visits", [1_000_000, 20])
def test_failed_run_leaves_no_output(tmp_path, monkeypatch, chunk_visits):
    data = write_tables(tmp_path / "data", make_tables())

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ShardWriter, "append", fail)
    with pytest.raises(RuntimeError):
        tokenize_dataset(data, tmp_path / "out", _config(chunk_visits=chunk_visits))
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]  # no work directory either


def test_no_identifiers_in_tokenizer_or_metadata(tmp_path):
    """tokenizer.json, manifest.json and config.json travel with models: no patient or visit id."""
    tables = make_tables()
    for name, key in (
        ("visits", "visit_id"),
        ("visits", "patient_id"),
        ("labels", "visit_id"),
        ("events", "patient_id"),
    ):
        tables[name] = tables[name].with_columns(pl.format("ID-{}-SECRET", pl.col(key)))
    data = write_tables(tmp_path / "data", tables)
    out = tmp_path / "tokens"
    tokenize_dataset(data, out, _config())
    for name in ("tokenizer.json", "manifest.json", "config.json"):
        assert "SECRET" not in (out / name).read_text(), name


# Data codes spelled as special tokens, one with numeric values (so with bin edges).
AS_SPECIAL = {
    "VITAL//HR": "[CLS]",
    "LAB//LACTATE": "[PAD]",
    "DISP//HOME": "[MASK]",
    "DX//C1": "[UNK]",
}


def _spelled(tokenizer: Tokenizer, ids: list[int], rename: dict[str, str]) -> list[tuple]:
    """Each token as (is a special token, its code after `rename`)."""
    first = len(SPECIAL_TOKENS)
    return [
        (i < first, tokenizer.vocab[i] if i < first else rename.get(tokenizer.vocab[i]))
        for i in ids
    ]


@pytest.mark.parametrize("chunk_visits", [1_000_000, 20], ids=["in-memory", "streamed"])
def test_codes_spelled_like_special_tokens_are_ordinary_codes(tmp_path, chunk_visits):
    """Renaming codes to "[CLS]", "[PAD]", ... changes nothing but their spelling: they get ids
    of their own, never a special token's, with their bins, in the stage and in `encode`."""
    tables = make_tables()
    _, tokenizer, tokens = _run(tmp_path, tables, "plain", chunk_visits=chunk_visits)
    tables["events"] = tables["events"].with_columns(pl.col("code").replace(AS_SPECIAL))
    _, renamed_tokenizer, renamed = _run(tmp_path, tables, "renamed", chunk_visits=chunk_visits)
    for column in ("length", "value_bins", "time_deltas", "segment_ids"):
        assert renamed[column].equals(tokens[column])
    identity = {code: code for code in tokenizer.vocab}
    expected = _spelled(tokenizer, tokens["input_ids"].explode().to_list(), identity | AS_SPECIAL)
    got = _spelled(renamed_tokenizer, renamed["input_ids"].explode().to_list(), identity)
    assert got == expected
    assert renamed_tokenizer.bin_edges["[PAD]"] == tokenizer.bin_edges["LAB//LACTATE"]
    encoded = renamed_tokenizer.encode(tables["visits"], tables["events"]).sort("visit_id")
    assert encoded.equals(renamed.select(encoded.columns))


def test_a_tokenizer_file_with_a_code_twice_or_stray_bin_edges_is_refused(tmp_path):
    tokenizer = Tokenizer.load(_run(tmp_path, make_tables())[1].save(tmp_path / "t"))
    for change in (
        {"vocab": [*tokenizer.vocab, tokenizer.vocab[-1]]},
        {"bin_edges": {**tokenizer.bin_edges, "NOT//IN_VOCAB": [1.0]}},
        {"vocab": "[PAD]"},
        {"config": None},
    ):
        document = {**json.loads(tokenizer.to_json()), **change}
        (tmp_path / "bad.json").write_text(json.dumps(document))
        with pytest.raises(InputError) as info:
            Tokenizer.load(tmp_path / "bad.json")
        assert info.value.file == str(tmp_path / "bad.json"), change
