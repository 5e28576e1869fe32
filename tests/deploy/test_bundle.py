"""The model bundle: round trip, identity with the run's own predictions, every model kind, no
pickle and no identifiers inside, and the model card."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import save_file

from ehr_ssl.artifacts import load_safetensors
from ehr_ssl.cli import main
from ehr_ssl.deploy.bundle import export_bundle, file_checksums, load_bundle
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
    # dates only: a shared bundle carries no visit's time of day
    assert info["training_data"]["arrival_time_range"][0] == str(
        visits["arrival_time"].min().date()
    )
    for split in info["training_data"]["splits"].values():
        assert all(len(day) == 10 for day in split["prediction_time_range"])
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
    assert len(embedded) == 7 and len(embedded["embedding"].iloc[0]) == model.embedding_dim


def test_loading_refuses_what_is_not_a_bundle(finished_run, tmp_path):
    _, run = finished_run
    with pytest.raises(InputError, match="not a model bundle"):
        load_bundle(tmp_path)
    with pytest.raises(InputError, match="counts baselines are not saved"):
        export_bundle(run, tmp_path / "b", model="counts_logistic")


def test_bundle_json_holds_the_checksum_of_every_other_file(finished_run):
    _, run = finished_run
    bundle = run / "bundle"
    files = json.loads((bundle / "bundle.json").read_text())["files"]
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert set(files) == on_disk - {"bundle.json"}
    weights = bundle / "encoder" / "model.safetensors"
    entry = files["encoder/model.safetensors"]
    assert entry["bytes"] == weights.stat().st_size
    assert entry["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def _reseal(bundle: Path) -> None:
    """Checksums of the files as they are now: what a bundle written damaged would hold."""
    info = json.loads((bundle / "bundle.json").read_text())
    info["files"] = file_checksums(bundle)
    (bundle / "bundle.json").write_text(json.dumps(info))


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _flip(path: Path, start: int, stop: int) -> None:
    data = bytearray(path.read_bytes())
    data[start:stop] = bytes(b ^ 0xFF for b in data[start:stop])
    path.write_bytes(bytes(data))


def _weights_as_pickle(bundle: Path) -> None:
    weights = bundle / "encoder" / "model.safetensors"
    torch.save(load_safetensors(weights), weights)


def _bin_instead_of_safetensors(bundle: Path) -> None:
    weights = bundle / "encoder" / "model.safetensors"
    torch.save(load_safetensors(weights), bundle / "encoder" / "pytorch_model.bin")
    weights.unlink()


def _head_of_another_shape(bundle: Path) -> None:
    save_file({"weight": torch.zeros(5), "bias": torch.zeros(())}, str(bundle / "head.safetensors"))


def _nan_weights(bundle: Path) -> None:
    weights = bundle / "encoder" / "model.safetensors"
    tensors = load_safetensors(weights)
    tensors["final_norm.weight"][0] = float("nan")
    save_file(tensors, str(weights), metadata={"format": "pt"})


WEIGHTS = "encoder/model.safetensors"
MISMATCH = "does not match its checksum in bundle.json"
UNREADABLE = "model weights is not a readable safetensors file"
# (damage, the message as the bundle holds it, the message with checksums of the damaged files
# (`_reseal`), or None where only the checksum can tell)
DAMAGES = {
    "truncated weights": (lambda b: (b / WEIGHTS).write_bytes((b / WEIGHTS).read_bytes()[:999]),
                          MISMATCH, UNREADABLE),
    "empty weights": (lambda b: (b / WEIGHTS).write_bytes(b""), MISMATCH, UNREADABLE),
    "header flipped": (lambda b: _flip(b / WEIGHTS, 8, 40), MISMATCH, UNREADABLE),
    "weight bytes flipped": (lambda b: _flip(b / WEIGHTS, -400, -300), MISMATCH, None),
    "pickle renamed": (_weights_as_pickle, MISMATCH, UNREADABLE),
    "NaN weights": (_nan_weights, MISMATCH, "holds NaN or infinity"),
    "pytorch_model.bin": (_bin_instead_of_safetensors, "model.safetensors: missing",
                          "does not list encoder/model.safetensors"),
    "tokenizer edited": (lambda b: _edit_json(b / "tokenizer.json", min_count=99), MISMATCH,
                         None),
    "head of another shape": (_head_of_another_shape, MISMATCH, "of another shape"),
    "a layer more": (lambda b: _edit_json(b / "encoder/config.json", num_hidden_layers=3),
                     MISMATCH, "missing (first 'layers.2."),
    "another hidden size": (lambda b: _edit_json(b / "encoder/config.json", hidden_size=64),
                            MISMATCH, "of another shape"),
    "readout edited": (lambda b: _edit_json(b / "encoder/config.json", readout="pooled"),
                       MISMATCH, "does not match the encoder's"),
    "embedding edited": (lambda b: _edit_json(b / "bundle.json", embedding={"readout": "pooled",
                                                                            "dim": 32}),
                         "'embedding' {'readout': 'pooled', 'dim': 32} does not match", None),
    "head missing": (lambda b: (b / "head.safetensors").unlink(), "missing (bundle.json lists it)",
                     None),
    "unlisted weights": (lambda b: (b / "encoder/pytorch_model.bin").write_bytes(b"x"),
                         "unexpected file", None),
    "bundle.json a list": (lambda b: (b / "bundle.json").write_text("[]"),
                           "bundle record is a JSON list", None),
    "no checksums (version 1)": (lambda b: _edit_json(b / "bundle.json", format_version=1),
                                 "format version 1 has no checksums", None),
}  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "resealed"),
    [(name, False) for name in DAMAGES]
    + [(name, True) for name, (_, _, resealed) in DAMAGES.items() if resealed],
    ids=lambda value: {False: "as written", True: "checksums redone"}.get(value, value),
)
def test_a_damaged_bundle_exits_2_with_one_line(finished_run, tmp_path, capsys, damage, resealed):
    """Bytes flipped inside the weights once moved scores by up to 0.16 (exit 0); a damaged
    file exited 1 with a library's error. Checksums catch every damage; behind them, the
    loaders refuse what they can tell is wrong."""
    data, run = finished_run
    damage_bundle, message, message_resealed = DAMAGES[damage]
    bundle = tmp_path / "bundle"
    shutil.copytree(run / "bundle", bundle)
    damage_bundle(bundle)
    if resealed:
        _reseal(bundle)
    out = tmp_path / "scores.parquet"
    assert main(["predict", "--model", str(bundle), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and (message_resealed if resealed else message) in err[0], err
    assert str(bundle) in err[0] and not out.exists()


def test_a_full_disk_while_bundling_names_the_file_and_leaves_nothing(
    finished_run, tmp_path, capsys, full_disk
):
    _, run = finished_run
    out = tmp_path / "bundle"
    assert main(["bundle", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on device" in err[0].lower(), err
    assert "model.safetensors" in err[0] or "head.safetensors" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_the_bundle_is_the_model_of_the_reports_main_table_whatever_the_seeds_order(
    finished_run, tmp_path
):
    """`seeds = [2, 0]`: the report's main table is seed 0 (the smallest every model has); the
    bundle once took the first listed, another model than the one its figures describe."""
    _, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    saved = json.loads((copy / "run_config.json").read_text())
    saved["evaluate"]["seeds"] = [2, 0]
    (copy / "run_config.json").write_text(json.dumps(saved))
    bundle = json.loads((export_bundle(copy, tmp_path / "bundle") / "bundle.json").read_text())
    report = json.loads((copy / "report.json").read_text())
    assert bundle["seed"] == report["seed"] == 0


def test_every_file_of_a_bundle_and_a_run_has_the_same_mode(finished_run, tmp_path):
    """Weights were written 0600 and JSON 0644: another user of a shared model directory could
    read bundle.json but not the weights."""
    _, run = finished_run
    umask = os.umask(0o027)
    try:
        export_bundle(run, tmp_path / "bundle")
    finally:
        os.umask(umask)
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "bundle").rglob("*") if p.is_file()}
    assert modes == {0o640}
    modes = {p.stat().st_mode & 0o777 for p in run.rglob("*") if p.is_file()}
    assert modes == {0o666 & ~umask}


@pytest.mark.parametrize(
    ("mode", "readout"), [("linear-probe", "segments"), ("full", "pooled"), ("full", "windows")]
)
def test_a_bundle_records_its_readout_and_embeds_that_wide(finished_run, tmp_path, mode, readout):
    """A model fine-tuned on a wider readout: bundle.json's "embedding" says so, `embed`
    returns that many columns, and the bundle scores as the fine-tuning output does."""
    from ehr_ssl.config import FinetuneConfig
    from ehr_ssl.deploy.bundle import make_bundle
    from ehr_ssl.training.finetune import finetune

    data, run = finished_run
    tokens, encoder = run / "tokens", run / "pretrain" / "encoder"
    config = FinetuneConfig(mode=mode, readout=readout, max_epochs=1, device="cpu")
    finetune(tokens, encoder, tmp_path / "ft", config)
    made = make_bundle(tokens, encoder, tmp_path / "ft", info={"model": mode}, report=None)
    bundle = load_bundle(made.save(tmp_path / "bundle"))
    hidden = bundle.hidden_size
    width = {"pooled": hidden, "segments": 3 * hidden + 2, "windows": 6 * hidden + 5}[readout]
    info = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert info["embedding"] == {"readout": readout, "dim": width}
    assert bundle.readout == readout and bundle.embedding_dim == width
    visits = pl.read_parquet(data / "visits.parquet").head(9)
    embedded = bundle.embed(visits, pl.read_parquet(data / "events.parquet"))
    assert embedded["embedding"].dtype == pl.Array(pl.Float32, width)
    test = read_split(tokens, "test").filter(pl.col("labeled"))
    expected = predict_finetuned(
        tmp_path / "ft", encoder, labeled_split(tokens, "test"), torch.device("cpu")
    )
    np.testing.assert_allclose(bundle.score_tokens(test), expected, rtol=0, atol=1e-4)


def test_a_bundle_without_an_embedding_record_reads_the_pooled_vector(finished_run, tmp_path):
    """Bundles written before "embedding" (same format version) load and embed as before: a
    pooled-readout model's bundle with its record and its encoder's readout key taken out."""
    from ehr_ssl.config import FinetuneConfig
    from ehr_ssl.deploy.bundle import make_bundle
    from ehr_ssl.training.finetune import finetune

    data, run = finished_run
    tokens, encoder = run / "tokens", run / "pretrain" / "encoder"
    finetune(tokens, encoder, tmp_path / "ft",
             FinetuneConfig(mode="full", readout="pooled", max_epochs=1, device="cpu"))  # fmt: skip
    made = make_bundle(tokens, encoder, tmp_path / "ft", info={"model": "full"}, report=None)
    made.save(tmp_path / "pooled")
    info = json.loads((tmp_path / "pooled" / "bundle.json").read_text())
    assert info["embedding"] == {"readout": "pooled", "dim": info["encoder"]["hidden_size"]}
    bundle = tmp_path / "bundle"
    shutil.copytree(tmp_path / "pooled", bundle)
    del info["embedding"]
    (bundle / "bundle.json").write_text(json.dumps(info))
    config = json.loads((bundle / "encoder" / "config.json").read_text())
    del config["readout"]
    (bundle / "encoder" / "config.json").write_text(json.dumps(config))
    _reseal(bundle)
    old, new = load_bundle(bundle), load_bundle(tmp_path / "pooled")
    assert old.readout == "pooled" and old.embedding_dim == old.hidden_size
    visits, events = (pl.read_parquet(data / f"{t}.parquet") for t in ("visits", "events"))
    assert old.embed(visits, events).equals(new.embed(visits, events))


def test_a_bundle_of_another_budget_carries_its_own_test_figures(finished_run, tmp_path):
    """`ehr-ssl bundle --label-budget 100` states the figures of the model it packs, not the
    main table's: a run copy gets a budget-100 model whose test scores rank the other way."""
    _, finished = finished_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    layout = RunLayout(run)
    shutil.copytree(layout.model("all", 0, "ssl"), layout.model("100", 0, "ssl"))
    predictions = pl.read_parquet(run / "predictions.parquet")
    main_rows = predictions.filter((pl.col("model") == "ssl") & (pl.col("budget") == "all"))
    reversed_scores = main_rows.with_columns(budget=pl.lit("100"), score=1 - pl.col("score"))
    pl.concat([predictions, reversed_scores]).write_parquet(run / "predictions.parquet")

    main_auroc = json.loads((run / "report.json").read_text())["models"]["ssl"]["auroc"]
    argv = ["bundle", str(run), "--out", str(tmp_path / "b100"), "--label-budget", "100"]
    assert main(argv) == 0
    info = json.loads((tmp_path / "b100" / "bundle.json").read_text())
    assert (info["label_budget"], info["seed"]) == ("100", 0)
    assert info["test_metrics"]["auroc"] == pytest.approx(1 - main_auroc, abs=1e-9)
    card = (tmp_path / "b100" / "MODEL_CARD.md").read_text()
    assert f"Label budget 100, seed 0: test AUROC {1 - main_auroc:.3f}" in card
    # the main budget's bundle keeps the report's own figures
    assert main(["bundle", str(run), "--out", str(tmp_path / "ball")]) == 0
    info = json.loads((tmp_path / "ball" / "bundle.json").read_text())
    assert info["test_metrics"]["auroc"] == main_auroc


def test_a_loaded_model_is_quiet_and_short_in_a_notebook(finished_run, capfd):
    """Loading and scoring print nothing (no progress bar off a terminal), and the model's repr
    is one line, not its vocabulary."""
    data, run = finished_run
    capfd.readouterr()
    model = load_bundle(run / "bundle")
    visits = pl.read_parquet(data / "visits.parquet").head(20)
    model.predict(visits, pl.read_parquet(data / "events.parquet"))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    text = repr(model)
    assert len(text) < 300 and "\n" not in text and "model='ssl'" in text
