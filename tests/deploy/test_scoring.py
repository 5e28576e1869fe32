"""`ehr-ssl predict` / `embed`: streamed chunks give the in-memory answer, bad input exits 2 with
one line and no output, and no identifier reaches the logs."""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest

from ehr_ssl.cli import main
from ehr_ssl.deploy.bundle import load_bundle
from ehr_ssl.evaluation.predictions import MEDS_PREDICTION_SCHEMA
from tests.conftest import PATIENT_PREFIX, VISIT_PREFIX


def test_chunked_prediction_equals_the_in_memory_one(finished_run, tmp_path, capsys):
    data, run = finished_run
    model = load_bundle(run / "bundle")
    visits, events = (
        pl.read_parquet(data / "visits.parquet"),
        pl.read_parquet(data / "events.parquet"),
    )
    expected = model.predict(visits, events)
    out = tmp_path / "scores.parquet"
    argv = ["predict", "--model", str(run / "bundle"), "--data", str(data), "--out", str(out),
            "--chunk-visits", "400", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    got = pl.read_parquet(out)
    assert got.columns == ["visit_id", "score"] and got.height == visits.height
    joined = expected.join(got, on="visit_id")
    assert joined.height == visits.height
    # Other chunks, other batch mates: the same scores bit for bit.
    assert (joined["score"] == joined["score_right"]).all()
    logs = capsys.readouterr()
    assert PATIENT_PREFIX not in logs.err + logs.out and VISIT_PREFIX not in logs.err + logs.out


def test_embed_writes_a_fixed_size_list(finished_run, tmp_path):
    data, run = finished_run
    out = tmp_path / "emb.parquet"
    argv = ["embed", "--model", str(run / "bundle"), "--data", str(data), "--out", str(out)]
    assert main(argv) == 0
    got = pl.read_parquet(out)
    assert got.columns == ["visit_id", "embedding"]
    assert got.schema["embedding"] == pl.Array(
        pl.Float32, load_bundle(run / "bundle").embedding_dim
    )


def test_a_visit_vector_does_not_depend_on_its_batch_mates(finished_run):
    """Bit for bit on CPU (docs/deployment.md): scored in groups of 7, as `--chunk-visits 7`
    does, 1,537 of 3,000 vectors once differed (by up to 2.4e-7) from those scored at once."""
    data, run = finished_run
    model = load_bundle(run / "bundle")
    visits = pl.read_parquet(data / "visits.parquet")
    tokens = model.tokenizer.encode(visits, pl.read_parquet(data / "events.parquet"))
    tokens = tokens[np.random.default_rng(0).permutation(tokens.height)[:400]]
    at_once = model.embed_tokens(tokens)  # batches of 256 visits of similar lengths
    for group in np.array_split(np.arange(210), 30):
        assert np.array_equal(model.embed_tokens(tokens[group]), at_once[group])


def _break(data, tmp_path, table, change):
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    frame = pl.read_parquet(bad / f"{table}.parquet")
    change(frame).write_parquet(bad / f"{table}.parquet")
    return bad


@pytest.mark.parametrize(
    ("table", "change", "expected"),
    [
        ("events", lambda f: f.drop("code"), "events.parquet: column 'code': missing"),
        ("events", lambda f: f.with_columns(time=pl.lit("x")),
         "column 'time': expected a timestamp"),
        ("visits", lambda f: f.with_columns(patient_id=pl.lit(None, pl.String)),
         "column 'patient_id': 1500 null values"),
        ("visits", lambda f: pl.concat([f, f.head(1)]), "column 'visit_id': 2 duplicate values"),
        ("visits", lambda f: f.drop("age"), "column 'age'"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line_and_no_output(
    finished_run, tmp_path, capsys, table, change, expected
):
    data, run = finished_run
    bad = _break(data, tmp_path, table, change)
    out = tmp_path / "out" / "scores.parquet"
    argv = ["predict", "--model", str(run / "bundle"), "--data", str(bad), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ehr-ssl: error: ") and expected in err, err
    assert "Traceback" not in err and PATIENT_PREFIX not in err and VISIT_PREFIX not in err
    assert not out.exists() and not list(out.parent.glob(".*")) if out.parent.exists() else True


def test_a_corrupt_events_file_exits_2(finished_run, tmp_path, capsys):
    data, run = finished_run
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    raw = (bad / "events.parquet").read_bytes()
    (bad / "events.parquet").write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "scores.parquet"
    argv = ["predict", "--model", str(run / "bundle"), "--data", str(bad), "--out", str(out)]
    assert main(argv) == 2
    assert "events.parquet" in capsys.readouterr().err
    assert not out.exists()


def test_a_missing_bundle_exits_2(finished_run, tmp_path, capsys):
    data, _ = finished_run
    not_a_bundle = tmp_path / "model"
    not_a_bundle.mkdir()
    argv = ["predict", "--model", str(not_a_bundle), "--data", str(data),
            "--out", str(tmp_path / "o.parquet")]  # fmt: skip
    assert main(argv) == 2
    assert "not a model bundle" in capsys.readouterr().err


def test_a_file_of_the_users_is_replaced_only_with_overwrite(finished_run, tmp_path, capsys):
    data, run = finished_run
    out = tmp_path / "visits_copy.parquet"
    shutil.copyfile(data / "visits.parquet", out)
    argv = ["predict", "--model", str(run / "bundle"), "--data", str(data), "--out", str(out),
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not replaced (use --overwrite)" in err[0]
    assert pl.read_parquet(out).columns == pl.read_parquet(data / "visits.parquet").columns
    assert main([*argv, "--overwrite"]) == 0
    assert pl.read_parquet(out).columns == ["visit_id", "score"]
    assert main(argv) == 0  # its own output: a rerun replaces it
    pl.read_parquet(out).write_parquet(out)  # as an older ehr-ssl wrote it: no mark
    assert main(argv) == 0  # known by its columns
    assert main([*argv, "--threshold", "0.5"]) == 2  # a decision only the MEDS format holds
    assert "applies to --format meds only" in capsys.readouterr().err


def test_future_events_change_no_batch_prediction(finished_run, tmp_path):
    from tests.test_pipeline import _perturb_future_events

    data, run = finished_run
    perturbed = tmp_path / "perturbed"
    _perturb_future_events(data, perturbed)
    scores = []
    for source in (data, perturbed):
        out = tmp_path / f"{source.name}.parquet"
        argv = ["predict", "--model", str(run / "bundle"), "--data", str(source), "--out",
                str(out), "--chunk-visits", "400", "--device", "cpu"]  # fmt: skip
        assert main(argv) == 0
        scores.append(pl.read_parquet(out))
    assert scores[0].equals(scores[1])  # bitwise


def test_events_after_each_visits_own_prediction_time_are_never_read(finished_run):
    """Every patient's first visit, with everything after that visit's prediction time changed,
    deleted or added to (so later visits' windows, which may read those events, are not
    scored): the scores and embeddings stay bitwise the same."""
    data, run = finished_run
    model = load_bundle(run / "bundle")
    visits = pl.read_parquet(data / "visits.parquet")
    first = visits.sort("arrival_time").unique("patient_id", keep="first", maintain_order=True)
    events = pl.read_parquet(data / "events.parquet")
    cutoff = events.join(first.select("patient_id", "prediction_time"), on="patient_id")
    future = pl.col("time") > pl.col("prediction_time")
    assert cutoff.filter(future).height > 100
    changed = cutoff.with_columns(
        code=pl.when(future).then(pl.lit("LEAK//") + pl.col("code")).otherwise(pl.col("code")),
        numeric_value=pl.when(future).then(pl.lit(1e6)).otherwise(pl.col("numeric_value")),
    ).filter(~future | (pl.int_range(pl.len()) % 3 != 0))
    added = first.select(
        "patient_id",
        time=pl.col("prediction_time") + pl.duration(seconds=1),
        code=pl.lit("ADMIT//X"),
        numeric_value=pl.lit(None, pl.Float64),
    )
    perturbed = pl.concat([changed.drop("prediction_time"), added])
    assert model.predict(first, events).equals(model.predict(first, perturbed))
    assert model.embed(first, events).equals(model.embed(first, perturbed))


def _integer_ids(data, out, *, labeled_only: bool):
    """The finished run's dataset with integer patient ids (MEDS subject ids are int64); with
    `labeled_only`, only the visits that have a label."""
    out.mkdir()
    number = pl.col("patient_id").str.strip_prefix(PATIENT_PREFIX).cast(pl.Int64)
    visits = pl.read_parquet(data / "visits.parquet").with_columns(number)
    labels = pl.read_parquet(data / "labels.parquet")
    if labeled_only:
        visits = visits.filter(pl.col("visit_id").is_in(labels["visit_id"].implode()))
    visits.write_parquet(out / "visits.parquet")
    pl.read_parquet(data / "events.parquet").with_columns(number).write_parquet(
        out / "events.parquet"
    )
    labels.filter(pl.col("visit_id").is_in(visits["visit_id"].implode())).write_parquet(
        out / "labels.parquet"
    )
    return out


def test_meds_predictions_feed_meds_evaluation(finished_run, tmp_path):
    """`--format meds` writes the MEDS prediction schema; meds-evaluation reads it as it is and
    finds the AUROC of the same scores in ehr-ssl's own format."""
    from meds_evaluation.evaluate import evaluate_binary_classification
    from meds_evaluation.schema import PredictionSchema

    from ehr_ssl.evaluation.metrics import auroc

    data, run = finished_run
    labeled = _integer_ids(data, tmp_path / "labeled", labeled_only=True)
    bundle = str(run / "bundle")
    meds, ours = tmp_path / "meds.parquet", tmp_path / "ours.parquet"
    argv = ["predict", "--model", bundle, "--data", str(labeled), "--device", "cpu"]
    assert main([*argv, "--out", str(meds), "--format", "meds", "--threshold", "0.5"]) == 0
    assert main([*argv, "--out", str(ours)]) == 0
    table = pl.read_parquet(meds)
    PredictionSchema.align(table.to_arrow())  # raises on a column or type MEDS does not allow
    assert dict(table.schema) == MEDS_PREDICTION_SCHEMA
    assert (
        table["predicted_boolean_value"] == (table["predicted_boolean_probability"] >= 0.5)
    ).all()
    metrics = evaluate_binary_classification(table)["samples_equally_weighted"]

    labels = pl.read_parquet(labeled / "labels.parquet")
    scored = pl.read_parquet(ours).join(labels, on="visit_id")
    expected = auroc(scored["label"].cast(pl.Int8).to_numpy(), scored["score"].to_numpy())
    assert metrics["roc_auc_score"] == pytest.approx(expected, abs=1e-6)


def test_meds_predictions_without_every_label_or_with_string_ids(finished_run, tmp_path, capsys):
    data, run = finished_run
    partly = _integer_ids(data, tmp_path / "partly", labeled_only=False)
    out = tmp_path / "meds.parquet"
    argv = ["predict", "--model", str(run / "bundle"), "--device", "cpu", "--format", "meds"]
    assert main([*argv, "--data", str(partly), "--out", str(out)]) == 0
    table = pl.read_parquet(out)  # a MEDS label may not be null: the column is left out
    assert table.columns == ["subject_id", "prediction_time", "predicted_boolean_value",
                             "predicted_boolean_probability"]  # fmt: skip
    assert table["predicted_boolean_value"].null_count() == table.height  # no threshold given
    capsys.readouterr()
    assert main([*argv, "--data", str(data), "--out", str(tmp_path / "strings.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "patient_id" in err and "64-bit integers" in err
    assert not (tmp_path / "strings.parquet").exists()
    embed = ["embed", "--model", str(run / "bundle"), "--data", str(partly)]
    with pytest.raises(SystemExit):  # --format is predict's alone
        main([*embed, "--out", str(tmp_path / "e.parquet"), "--format", "meds"])


def test_predict_reads_a_meds_root_as_it_is(finished_run, tmp_path):
    """MEDS in, MEDS out: the finished run's cohort as a MEDS root (its ED visits in a label
    file) scores as its contract form does, visit for visit."""
    from ehr_ssl.data.synthetic import generate_cohort, write_cohort, write_meds_cohort
    from ehr_ssl.data.synthetic.writer import MEDS_LABELS_FILE, MEDS_VISITS_FILE

    _, run = finished_run
    cohort = generate_cohort(300, labeled_frac=0.4, seed=11)
    as_stored = pl.col("numeric_value").cast(pl.Float32).cast(pl.Float64)  # MEDS: float32
    cohort.events = cohort.events.with_columns(as_stored)
    write_cohort(cohort, tmp_path / "contract")
    write_meds_cohort(cohort, tmp_path / "meds")
    argv = ["predict", "--model", str(run / "bundle"), "--device", "cpu", "--format", "meds"]
    assert (
        main([*argv, "--data", str(tmp_path / "contract"), "--out", str(tmp_path / "a.parquet")])
        == 0
    )
    meds = ["--meds-labels", str(tmp_path / "meds" / MEDS_LABELS_FILE), "--meds-prediction-times",
            str(tmp_path / "meds" / MEDS_VISITS_FILE)]  # fmt: skip
    assert (
        main([*argv, "--data", str(tmp_path / "meds"), *meds, "--out", str(tmp_path / "b.parquet")])
        == 0
    )
    on = ["subject_id", "prediction_time"]
    ours, theirs = (pl.read_parquet(tmp_path / f).sort(on) for f in ("a.parquet", "b.parquet"))
    assert ours.height == 300 and ours.equals(theirs)
