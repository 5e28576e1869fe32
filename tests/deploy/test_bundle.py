"""The model bundle: round trip, identity with the run's own predictions, every model kind, no
pickle and no identifiers inside, and the model card."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from ehr_ssl.deploy.bundle import export_bundle, load_bundle
from ehr_ssl.errors import InputError
from ehr_ssl.layout import RunLayout
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.training.finetune import labeled_split, predict_finetuned
from tests.conftest import PATIENT_PREFIX, VISIT_PREFIX


@pytest.mark.parametrize("model", ["ssl", "ssl_linear_probe", "scratch"])
def test_a_bundle_scores_as_the_run_did(finished_run, tmp_path, model):
    _, run = finished_run
    bundle = load_bundle(export_bundle(run, tmp_path / model, model=model))
    test = read_split(run / "tokens", "test").filter(pl.col("labeled"))
    expected = predict_finetuned(
        RunLayout(run).model("all", 0, model),
        run / "pretrain" / "encoder",
        labeled_split(run / "tokens", "test"),
        torch.device("cpu"),
    )
    # The probe folds its standardization into a float32 head: equal up to float32 rounding.
    np.testing.assert_allclose(bundle.score_tokens(test), expected, rtol=0, atol=1e-4)


def test_round_trip_gives_identical_predictions(finished_run, tmp_path):
    data, run = finished_run
    visits, events = (
        pl.read_parquet(data / "visits.parquet"),
        pl.read_parquet(data / "events.parquet"),
    )
    first = load_bundle(run / "bundle")
    first.save(tmp_path / "copy")
    second = load_bundle(tmp_path / "copy")
    a, b = first.predict(visits, events), second.predict(visits, events)
    assert a["visit_id"].to_list() == visits["visit_id"].to_list()
    assert a.equals(b)
    assert first.embed(visits, events).equals(second.embed(visits, events))


def test_a_bundle_has_its_parts_and_no_pickle_or_identifier(finished_run):
    data, run = finished_run
    bundle = run / "bundle"
    names = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    expected = {"bundle.json", "encoder/config.json", "encoder/model.safetensors",
                "head.safetensors", "tokenizer.json", "report.json", "data_profile.json",
                "MODEL_CARD.md"}  # fmt: skip
    assert expected <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl", ".pickle")) for n in names)
    for path in bundle.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert PATIENT_PREFIX.encode() not in content, path
            assert VISIT_PREFIX.encode() not in content, path
    card = (bundle / "MODEL_CARD.md").read_text()
    for heading in ("## Training data", "## What it predicts", "## Evaluation", "## Intended use",
                    "## Limitations"):  # fmt: skip
        assert heading in card
    info = json.loads((bundle / "bundle.json").read_text())
    visits = pl.read_parquet(data / "visits.parquet")
    assert info["training_data"]["arrival_time_range"][0] == str(visits["arrival_time"].min())
    assert info["test_metrics"]["auroc"] == json.loads((run / "report.json").read_text())[
        "models"]["ssl"]["auroc"]  # fmt: skip


def test_pandas_and_polars_inputs_give_the_same_scores(finished_run):
    data, run = finished_run
    model = load_bundle(run / "bundle")
    visits, events = (
        pl.read_parquet(data / "visits.parquet"),
        pl.read_parquet(data / "events.parquet"),
    )
    from_polars = model.predict(visits, events)
    from_pandas = model.predict(visits.to_pandas(), events.to_pandas())
    assert type(from_pandas).__module__.startswith("pandas")
    assert from_pandas["visit_id"].tolist() == from_polars["visit_id"].to_list()
    np.testing.assert_array_equal(from_pandas["score"].to_numpy(), from_polars["score"].to_numpy())
    embedded = model.embed(visits.head(7).to_pandas(), events.to_pandas())
    assert len(embedded) == 7 and len(embedded["embedding"].iloc[0]) == model.hidden_size


def test_loading_refuses_what_is_not_a_bundle(finished_run, tmp_path):
    _, run = finished_run
    with pytest.raises(InputError, match="not a model bundle"):
        load_bundle(tmp_path)
    with pytest.raises(InputError, match="counts baselines are not saved"):
        export_bundle(run, tmp_path / "b", model="counts_logistic")
