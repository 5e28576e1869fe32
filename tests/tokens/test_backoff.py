"""Rare codes read as their class: the fit's privacy rule, the encode rule, both fits alike."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from ehr_ssl.config import DataConfig, SplitConfig, TokenizeConfig, TokenizerConfig
from ehr_ssl.data.splits import assign_splits
from ehr_ssl.errors import InputError
from ehr_ssl.tokens.backoff import (
    backoff_target,
    fit_backoff_classes,
    rare_code_pairs,
    with_backoff_classes,
)
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.stream import FitStatistics
from ehr_ssl.tokens.tokenize import tokenize_dataset
from ehr_ssl.tokens.tokenizer import Tokenizer, patient_counts
from ehr_ssl.tokens.vocab import NO_VALUE_BIN, SPECIAL_TOKENS, UNK_ID
from tests.conftest import make_tables, write_tables

SPLIT = SplitConfig(seed=0, val_fraction=0.25, test_fraction=0.25)


def _pairs(rows: list[tuple[int, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"patient_id": pl.Int64, "code": pl.String}, orient="row")


def test_a_class_enters_only_when_min_count_patients_reach_it():
    # I50.1 and I50.2 are rare alone, 3 patients reach I50 through them; J44.1 has 1 patient.
    pairs = _pairs([(1, "DX//I50.1"), (2, "DX//I50.1"), (3, "DX//I50.2"), (9, "DX//J44.1")])
    assert fit_backoff_classes(pairs, [], min_count=3) == {"DX//I50": 3}
    assert fit_backoff_classes(pairs, [], min_count=4) == {}
    # A patient holding both codes counts once.
    twice = _pairs([(1, "DX//I50.1"), (1, "DX//I50.2"), (2, "DX//I50.2")])
    assert fit_backoff_classes(twice, [], min_count=3) == {}


def test_a_class_shadowed_by_a_nearer_one_counts_only_the_codes_that_reach_it():
    # ATC levels N02BE (nearest), N02B, N02. N02BE01/N02BE02: 3 patients, enough at N02BE.
    # N02BA01: 2 patients, too few at N02BA, so it moves up to N02B, which then holds only
    # those 2 (N02BE's patients stop at N02BE): too few too, and so on up to N02, also 2.
    rows = [(1, "ATC//N02BE01"), (2, "ATC//N02BE01"), (3, "ATC//N02BE02")]
    rows += [(4, "ATC//N02BA01"), (5, "ATC//N02BA01")]
    assert fit_backoff_classes(_pairs(rows), [], min_count=3) == {"ATC//N02BE": 3}
    # A third N02BA01 patient: N02BA is reached by 3.
    more = _pairs([*rows, (6, "ATC//N02BA01")])
    assert fit_backoff_classes(more, [], min_count=3) == {"ATC//N02BA": 3, "ATC//N02BE": 3}
    # N02BA01 and N02AB01 (2 patients each) meet at N02 only.
    rows = [(1, "ATC//N02BA01"), (2, "ATC//N02BA01"), (3, "ATC//N02AB01"), (4, "ATC//N02AB01")]
    assert fit_backoff_classes(_pairs(rows), [], min_count=3) == {"ATC//N02": 4}


def test_a_code_of_the_vocabulary_takes_its_rare_descendants_and_no_class_is_added():
    pairs = _pairs([(1, "DX//I50.1"), (2, "DX//I50.2")])
    assert fit_backoff_classes(pairs, ["DX//I50"], min_count=3) == {}
    assert backoff_target("DX//I50.1", {"DX//I50"}) == "DX//I50"
    assert backoff_target("LAB//K", {"DX//I50"}) is None  # no class by spelling


def test_a_rare_code_spelled_like_its_class_is_counted_with_it_and_replaced():
    rows = [(1, "DX//I50"), (2, "DX//I50.1"), (3, "DX//I50.2"), (4, "LAB//K"), (5, "LAB//K")]
    rows += [(p, "LAB//K") for p in range(6, 9)]
    pairs = _pairs(rows)
    counts = patient_counts(pairs)
    out = with_backoff_classes(counts, rare_code_pairs(pairs, 3), min_count=3)
    assert out["code"].is_unique().all()  # the rare code's row gave way to the class's
    kept = out.filter(pl.col("patients") >= 3)
    assert dict(zip(kept["code"], kept["patients"], strict=True)) == {"DX//I50": 3, "LAB//K": 5}


def test_rare_pairs_of_chunks_of_patients_find_every_pair_of_a_globally_rare_code():
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 60, size=400)
    codes = [f"DX//A{c // 10:02d}.{c % 10}" for c in rng.zipf(1.6, size=400) % 90]
    rows = pl.DataFrame({"patient_id": patients, "code": codes, "numeric_value": None})
    whole = rare_code_pairs(rows, 4)
    parts = rows.with_columns(chunk=pl.col("patient_id") % 5).partition_by(
        "chunk", include_key=False
    )
    chunks = pl.concat(rare_code_pairs(part, 4) for part in parts)
    rare = patient_counts(rows).filter(pl.col("patients") < 4).select("code")
    in_chunks = chunks.join(rare, on="code", how="semi")
    assert in_chunks.sort(pl.all()).equals(whole.sort(pl.all()))


def test_every_class_is_held_by_min_count_patients_under_the_encode_rule():
    """The fit's guarantee, checked by counting what the encode rule reads."""
    rng = np.random.default_rng(1)
    n = 3_000
    parts = rng.integers(0, 40, size=n)
    codes = [
        f"ATC//N0{p % 3}B{'ABCDE'[p % 5]}0{p % 7}" if p % 2 else f"DX//E{p % 13:02d}.{p % 9}"
        for p in rng.zipf(1.3, size=n) % 997
    ]
    pairs = pl.DataFrame({"patient_id": parts * 7 + rng.integers(0, 7, size=n), "code": codes})
    pairs = pairs.unique()
    for min_count in (2, 5, 11):
        counts = patient_counts(pairs)
        out = with_backoff_classes(counts, rare_code_pairs(pairs, min_count), min_count)
        assert out["patients"].min() >= 1 and out["code"].is_unique().all()
        vocab = set(out.filter(pl.col("patients") >= min_count)["code"])
        read = pairs.with_columns(
            token=pl.col("code").map_elements(
                lambda c, vocab=vocab: c if c in vocab else backoff_target(c, vocab),
                return_dtype=pl.String,
            )
        )
        held = read.drop_nulls("token").group_by("token").agg(pl.col("patient_id").n_unique())
        assert set(held["token"]) <= vocab and held["patient_id"].min() >= min_count


def _patients(split_name: str, n: int = 40) -> list[int]:
    ids = pl.Series(range(n))
    return ids.filter(assign_splits(ids, SPLIT) == split_name).to_list()


def _tokenize(tmp_path, tables, name: str, chunk_visits: int = 1_000_000, **tokenizer):
    data = write_tables(tmp_path / f"data-{name}", tables)
    config = TokenizeConfig(
        data=DataConfig(),
        split=SPLIT,
        tokenizer=TokenizerConfig(**{"min_count": 3, **tokenizer}),
        chunk_visits=chunk_visits,
    )
    tokenize_dataset(data, tmp_path / name, config)
    frames = [read_split(tmp_path / name, s) for s in ("train", "val", "test")]
    return Tokenizer.load(tmp_path / name), pl.concat(frames).sort("visit_id")


def _with_rare_family(tables, patients: list[int]) -> dict:
    """Each of `patients` gets a code of its own (rare alone) under the category X12, before its
    first visit and with a value (a backed-off token keeps no value bin)."""
    rows = []
    for i, p in enumerate(patients):
        arrival = tables["visits"].filter(pl.col("patient_id") == p)["arrival_time"].min()
        rows.append((p, arrival - timedelta(days=3), f"DX//X12.{i}", float(i)))
    extra = pl.DataFrame(rows, schema=tables["events"].schema, orient="row")
    return {**tables, "events": pl.concat([tables["events"], extra])}


@pytest.mark.parametrize("chunk_visits", [1_000_000, 20], ids=["in-memory", "streamed"])
def test_rare_codes_of_training_patients_read_as_their_class(tmp_path, chunk_visits):
    train, test = _patients("train"), _patients("test")
    tables = _with_rare_family(make_tables(), train[:4] + test[:4])
    tokenizer, tokens = _tokenize(tmp_path, tables, "a", chunk_visits)
    unk, _ = _tokenize(tmp_path, tables, "b", rare_codes="unk")
    assert tokenizer.config.rare_codes == "ancestor"
    assert "DX//X12" in tokenizer.vocab and "DX//X12" not in unk.vocab
    assert not any(code.startswith("DX//X12.") for code in tokenizer.vocab)  # never a rare code
    assert set(tokenizer.vocab) == {*unk.vocab, "DX//X12"}
    class_id = tokenizer.vocab.index("DX//X12")
    for p in train[:4] + test[:4]:  # a test patient's own rare code reads as the class too
        first = tokens.filter(pl.col("patient_id") == p).sort("visit_id").row(0, named=True)
        position = first["input_ids"].index(class_id)
        assert first["value_bins"][position] == NO_VALUE_BIN
    # Test patients' codes alone never make a class: the fit reads the training patients only.
    tables = _with_rare_family(make_tables(), test[:6])
    tokenizer, tokens = _tokenize(tmp_path, tables, "c", chunk_visits)
    assert "DX//X12" not in tokenizer.vocab
    assert tokens.filter(pl.col("patient_id") == test[0])["input_ids"][0].to_list().count(UNK_ID)


def test_a_family_of_too_few_training_patients_stays_unknown(tmp_path):
    tables = _with_rare_family(make_tables(), _patients("train")[:2])
    tokenizer, tokens = _tokenize(tmp_path, tables, "a")
    assert "DX//X12" not in tokenizer.vocab
    first = tokens.filter(pl.col("patient_id") == _patients("train")[0])["input_ids"][0]
    assert UNK_ID in first.to_list()


def test_codes_never_seen_in_training_read_as_their_class_at_encode_time(tmp_path):
    tables = _with_rare_family(make_tables(), _patients("train")[:4])
    tokenizer, _ = _tokenize(tmp_path, tables, "a")
    events = tables["events"].with_columns(
        pl.col("code").str.replace(r"^DX//X12\.\d+$", "DX//X12.NEW")
    )
    tokenizer.save(tmp_path / "copy")
    encoded = Tokenizer.load(tmp_path / "copy").encode(tables["visits"], events)
    ids = encoded["input_ids"].explode().to_numpy()
    assert (ids == tokenizer.vocab.index("DX//X12")).sum() == 4 * 2  # 4 patients, 2 visits
    assert not (ids == UNK_ID).any()


def test_a_tokenizer_saved_before_the_setting_keeps_unknown_codes_unknown(tmp_path):
    tables = _with_rare_family(make_tables(), _patients("train")[:4])
    tokenizer, _ = _tokenize(tmp_path, tables, "a", rare_codes="unk")
    path = tokenizer.save(tmp_path / "old")
    document = json.loads(path.read_text())
    del document["config"]["rare_codes"]
    document["vocab"].append("DX//X12")  # a class by name in an old vocabulary
    path.write_text(json.dumps(document))
    old = Tokenizer.load(path)
    assert old.config.rare_codes == "unk"
    ids = old.encode(tables["visits"], tables["events"])["input_ids"].explode().to_numpy()
    assert not (ids == old.vocab.index("DX//X12")).any()


def test_a_bad_setting_is_refused_naming_it():
    with pytest.raises(InputError, match="tokenizer.rare_codes"):
        TokenizerConfig(rare_codes="parent")


def test_the_streamed_statistics_fit_the_in_memory_vocabulary(tmp_path):
    rng = np.random.default_rng(2)
    n = 2_000
    rows = pl.DataFrame(
        {
            "patient_id": rng.integers(0, 300, size=n),
            "code": [f"DX//B{c % 40:02d}.{c % 7}" for c in rng.zipf(1.5, size=n)],
            "numeric_value": np.full(n, np.nan),
        }
    ).with_columns(pl.col("numeric_value").fill_nan(None))
    config = TokenizerConfig(min_count=4)
    statistics = FitStatistics(tmp_path / "v", rare_below=config.min_count)
    for part in rows.with_columns(chunk=pl.col("patient_id") % 3).partition_by(
        "chunk", include_key=False
    ):
        statistics.add(part)
    streamed = statistics.tokenizer({}, config, DataConfig())
    whole = FitStatistics(tmp_path / "w", rare_below=config.min_count)
    whole.add(rows)
    assert streamed.vocab == whole.tokenizer({}, config, DataConfig()).vocab
    assert len(streamed.vocab) > len(SPECIAL_TOKENS) + 1
