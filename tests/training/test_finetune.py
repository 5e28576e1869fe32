"""Fine-tuning: the three modes run and select on validation only; the test split is never
read (shuffling its labels changes no choice); class weighting and learning rates as stated."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch

import ehr_ssl.training.classifier_loop as classifier_loop
import ehr_ssl.training.finetune as finetuning
from ehr_ssl.config import FinetuneConfig, load_pretrain_config
from ehr_ssl.model.encoder import MAX_ANCESTORS_PER_CODE, EHRConfig, EHREncoder
from ehr_ssl.tokens.hierarchy import ancestor_index
from ehr_ssl.tokens.shards import read_manifest, read_split, write_split_shards
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.training.budgets import budget_ids
from ehr_ssl.training.finetune import finetune
from ehr_ssl.training.pretrain import pretrain
from ehr_ssl.training.selection import choose


@pytest.fixture(scope="module")
def encoder_dir(cohort_tokens, tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrained") / "run"
    config = load_pretrain_config(None, {"preset": "tiny", "train.max_steps": 10})
    pretrain(cohort_tokens, run, config)
    return run / "encoder"


def _config(**kwargs) -> FinetuneConfig:
    return FinetuneConfig(**{"max_epochs": 3, "patience": 2, "batch_size": 32, **kwargs})


@pytest.mark.parametrize("mode", ["full", "scratch", "linear-probe"])
def test_modes_run_and_select_on_validation(cohort_tokens, encoder_dir, tmp_path, mode):
    summary = finetune(cohort_tokens, encoder_dir, tmp_path / "ft", _config(mode=mode))
    history = summary["history"]
    assert summary["val_auroc"] == max(h["val_auroc"] for h in history)
    assert 0.0 <= summary["val_auroc"] <= 1.0
    written = json.loads((tmp_path / "ft" / "finetune_summary.json").read_text())
    assert written["mode"] == mode and written["val_labeled"] == summary["val_labeled"]
    if mode == "linear-probe":
        assert (tmp_path / "ft" / "linear_probe.safetensors").exists()
    else:
        assert summary["selected_epoch"] == max(history, key=lambda h: h["val_auroc"])["epoch"]
        assert (tmp_path / "ft" / "model" / "model.safetensors").exists()


def test_the_test_split_is_never_read(cohort_tokens, encoder_dir, tmp_path, monkeypatch):
    splits_read = []
    original = finetuning.TokenDataset

    def recording(tokens_dir, selection, *, splits):
        splits_read.extend(splits)
        return original(tokens_dir, selection, splits=splits)

    monkeypatch.setattr(finetuning, "TokenDataset", recording)
    finetune(cohort_tokens, encoder_dir, tmp_path / "ft", _config(mode="full"))
    assert set(splits_read) == {"train", "val"}


def test_shuffled_test_labels_change_no_choice(cohort_tokens, encoder_dir, tmp_path):
    shuffled = tmp_path / "tokens"
    shutil.copytree(cohort_tokens, shuffled)
    test = read_split(cohort_tokens, "test")
    labels = test["label"].shuffle(seed=1)
    assert not labels.equals(test["label"])
    for shard in read_manifest(shuffled)["splits"]["test"]["shards"]:
        (shuffled / shard).unlink()
    write_split_shards(test.with_columns(labels), shuffled, "test", 10**6)
    a = finetune(cohort_tokens, encoder_dir, tmp_path / "a", _config(mode="full"))
    b = finetune(shuffled, encoder_dir, tmp_path / "b", _config(mode="full"))
    assert a["selected_epoch"] == b["selected_epoch"] and a["history"] == b["history"]
    p = finetune(cohort_tokens, encoder_dir, tmp_path / "p", _config(mode="linear-probe"))
    q = finetune(shuffled, encoder_dir, tmp_path / "q", _config(mode="linear-probe"))
    assert p["selected_C"] == q["selected_C"] and p["history"] == q["history"]


def test_full_mode_starts_from_the_pretrained_encoder(cohort_tokens, encoder_dir, monkeypatch):
    pretrained = EHREncoder.from_pretrained(encoder_dir).state_dict()
    config = EHRConfig.from_pretrained(encoder_dir)
    full = finetuning.build_classifier(encoder_dir, config, _config(mode="full"))
    scratch = finetuning.build_classifier(encoder_dir, config, _config(mode="scratch"))
    for name, tensor in pretrained.items():
        assert torch.equal(full.encoder.state_dict()[name], tensor), name
    assert not torch.equal(
        scratch.encoder.code_embeddings.weight, pretrained["code_embeddings.weight"]
    )

    seen = {}
    original = torch.optim.AdamW

    def capture(groups, *args, **kwargs):
        seen["groups"] = groups
        return original(groups, *args, **kwargs)

    monkeypatch.setattr(finetuning.torch.optim, "AdamW", capture)
    finetuning._train_classifier(
        encoder_dir,
        config,
        finetuning.labeled_split(cohort_tokens, "train"),
        finetuning.labeled_split(cohort_tokens, "val"),
        _config(mode="full", max_epochs=1, learning_rate=1e-3, encoder_lr_ratio=0.1),
        torch.device("cpu"),
    )
    assert sorted({g["lr"] for g in seen["groups"]}) == pytest.approx([1e-4, 1e-3])


@pytest.mark.parametrize("mode,warmup_epochs", [("full", 1.5), ("scratch", 1.5), ("full", 0)])
def test_every_rate_warms_up_linearly_over_the_stated_epochs(
    cohort_tokens, encoder_dir, mode, warmup_epochs
):
    train = finetuning.labeled_split(cohort_tokens, "train")
    config = _config(mode=mode, batch_size=16, warmup_epochs=warmup_epochs, encoder_lr_ratio=0.1)
    model = finetuning.build_classifier(encoder_dir, EHRConfig.from_pretrained(encoder_dir), config)
    fold = classifier_loop.start_training(model, train, config, torch.device("cpu"))
    rates = []  # every group's rate at each step, as the step is taken
    fold.optimizer.register_step_pre_hook(
        lambda opt, *_: rates.append([g["lr"] for g in opt.param_groups])
    )
    fold.train_epoch(config, 1)
    warmup = int(np.ceil(warmup_epochs * fold.steps))  # that many epochs' steps
    for epoch in (2, 3):
        fold.train_epoch(config, epoch)
    assert len(rates) == fold.steps > warmup + 1
    peaks = np.array([g["peak_lr"] for g in fold.optimizer.param_groups])
    expected = 1e-3 if mode == "scratch" else [1e-4, 1e-4, 1e-3, 1e-3]  # encoder, then head
    assert peaks == pytest.approx(np.broadcast_to(expected, peaks.shape))
    shares = np.array(rates) / peaks
    assert shares[:warmup, 0] == pytest.approx(np.arange(1, warmup + 1) / warmup)
    assert (shares == shares[:, :1]).all()  # every group alike, the encoder's and the head's
    assert (shares[warmup:] == 1).all()


def test_no_warmup_takes_the_full_rate_from_the_first_step():
    from ehr_ssl.training.optim import warmup_factor

    assert [warmup_factor(step, 0) for step in range(3)] == [1.0, 1.0, 1.0]
    assert [warmup_factor(step, 4) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_a_label_budget_limits_the_training_labels(cohort_tokens, encoder_dir, tmp_path):
    train = read_split(cohort_tokens, "train").filter(pl.col("labeled"))
    ids = train["visit_id"].head(60)
    summary = finetune(
        cohort_tokens, encoder_dir, tmp_path / "ft", _config(mode="scratch"), train_ids=ids
    )
    assert summary["train_labeled"] == 60 < train.height
    assert np.isfinite(summary["val_auroc"])


@pytest.mark.parametrize("mode", ["full", "linear-probe"])
def test_predictions_from_the_output_directory(cohort_tokens, encoder_dir, tmp_path, mode):
    from sklearn.metrics import roc_auc_score

    summary = finetune(cohort_tokens, encoder_dir, tmp_path / "ft", _config(mode=mode))
    val = finetuning.labeled_split(cohort_tokens, "val")
    scores = finetuning.predict_finetuned(tmp_path / "ft", encoder_dir, val, torch.device("cpu"))
    assert scores.shape == (len(val),) and ((scores >= 0) & (scores <= 1)).all()
    # The selected model's validation AUROC is reproduced from what was written.
    assert roc_auc_score(val.labels, scores) == pytest.approx(summary["val_auroc"], abs=1e-9)


@pytest.mark.parametrize("selection", ["holdout", "cv"])
def test_label_budget_from_the_config_matches_explicit_ids(
    cohort_tokens, encoder_dir, tmp_path, selection
):
    folds = {"cv_folds": 3, "cv_repeats": 1}
    config = _config(mode="scratch", label_budget=50, seed=3, selection=selection, **folds)
    train_ids, val_ids = budget_ids(cohort_tokens, config)
    bigger, _ = budget_ids(cohort_tokens, _config(label_budget=80, seed=3, selection=selection))
    assert len(train_ids) + len(val_ids) == 50  # the budget counts every label used
    assert set(train_ids) <= set(bigger)  # nested
    assert len(val_ids) == (20 if selection == "holdout" else 0)  # at least 20 to select on
    by_config = finetune(cohort_tokens, encoder_dir, tmp_path / "a", config)
    explicit = _config(mode="scratch", seed=3, selection=selection, **folds)
    by_ids = finetune(
        cohort_tokens, encoder_dir, tmp_path / "b", explicit, train_ids=train_ids, val_ids=val_ids
    )
    assert (by_config["train_labeled"], by_config["val_labeled"]) == (len(train_ids), len(val_ids))
    assert by_config["selection"]["protocol"] == selection
    assert by_config["history"] == by_ids["history"]


def test_full_mode_starts_as_the_linear_probe(cohort_tokens, encoder_dir, tmp_path):
    """LP-FT: epoch 0 is the probe-initialized classifier, scored on val before any update, and
    it scores like the linear probe itself (same pooled vectors, same logistic regression)."""
    full = finetune(
        cohort_tokens, encoder_dir, tmp_path / "full", FinetuneConfig(mode="full", max_epochs=1)
    )
    probe = finetune(
        cohort_tokens, encoder_dir, tmp_path / "probe", FinetuneConfig(mode="linear-probe")
    )
    assert full["history"][0]["epoch"] == 0 and full["history"][0]["last_loss"] is None
    assert full["history"][0]["val_auroc"] == pytest.approx(probe["val_auroc"], abs=1e-6)
    assert full["val_auroc"] >= probe["val_auroc"] - 1e-6  # never worse on val than the probe


def test_an_encoder_of_other_tokens_is_refused(cohort_tokens, encoder_dir, tmp_path):
    """Tokens of another tokenizer: other vocabulary sizes, or the same sizes in another order."""
    from ehr_ssl.config import TokenizeConfig, TokenizerConfig
    from ehr_ssl.errors import InputError
    from ehr_ssl.tokens.tokenize import tokenize_dataset

    other = tmp_path / "other"
    config = TokenizeConfig(tokenizer=TokenizerConfig(max_length=64, min_count=2))
    tokenize_dataset(cohort_tokens.parent / "data", other, config)
    for mode in ("full", "scratch", "linear-probe"):
        with pytest.raises(InputError, match="pretrained on tokens of another tokenizer"):
            finetune(other, encoder_dir, tmp_path / "out", _config(mode=mode))
    swapped = tmp_path / "swapped"
    shutil.copytree(cohort_tokens, swapped)
    tokenizer = json.loads((swapped / "tokenizer.json").read_text())
    tokenizer["vocab"][6], tokenizer["vocab"][7] = tokenizer["vocab"][7], tokenizer["vocab"][6]
    (swapped / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(InputError, match="another tokenizer.json"):
        finetune(swapped, encoder_dir, tmp_path / "out", _config())
    # scratch mode reads the encoder's ancestor index, one row per code of its vocabulary
    assert EHRConfig.from_pretrained(encoder_dir).code_hierarchy == "ancestors"
    with pytest.raises(InputError, match="another tokenizer.json"):
        finetune(swapped, encoder_dir, tmp_path / "out", _config(mode="scratch"))
    assert not (tmp_path / "out").exists()


def test_only_safetensors_weights_are_read(cohort_tokens, encoder_dir, tmp_path):
    """finetune and evaluate fell back to a pickled pytorch_model.bin where model.safetensors
    was missing; the bundle loader refused it."""
    from ehr_ssl.artifacts import load_safetensors
    from ehr_ssl.errors import InputError
    from ehr_ssl.model.classifier import AdmissionClassifier

    def pickle_the_weights(directory):
        weights = directory / "model.safetensors"
        torch.save(load_safetensors(weights), directory / "pytorch_model.bin")
        weights.unlink()

    run = tmp_path / "pretrained"
    shutil.copytree(encoder_dir.parent, run)
    pickle_the_weights(run / "encoder")
    for mode in ("full", "linear-probe"):
        with pytest.raises(InputError, match="safetensors only"):
            finetune(cohort_tokens, run / "encoder", tmp_path / "out", _config(mode=mode))
    assert not (tmp_path / "out").exists()
    AdmissionClassifier(EHRConfig.from_pretrained(encoder_dir)).save_checked(
        tmp_path / "ft" / "model"
    )
    pickle_the_weights(tmp_path / "ft" / "model")
    test = finetuning.labeled_split(cohort_tokens, "test")
    with pytest.raises(InputError, match="safetensors only"):
        finetuning.predict_finetuned(tmp_path / "ft", encoder_dir, test, torch.device("cpu"))


def test_a_full_disk_names_the_file_and_leaves_nothing(
    cohort_tokens, encoder_dir, tmp_path, full_disk
):
    """A full disk was `internal error: SafetensorError` (exit 1)."""
    import errno

    with pytest.raises(OSError) as caught:
        finetune(cohort_tokens, encoder_dir, tmp_path / "ft", _config(mode="linear-probe"))
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename.endswith("linear_probe.safetensors")
    assert list(tmp_path.iterdir()) == []


def _cv_config(**kwargs) -> FinetuneConfig:
    return _config(label_budget=60, selection="cv", cv_folds=3, cv_repeats=1, **kwargs)


@pytest.mark.parametrize("mode", ["full", "scratch", "linear-probe"])
def test_cv_selection_chooses_on_folds_and_refits_on_every_label(
    cohort_tokens, encoder_dir, tmp_path, mode, monkeypatch
):
    trained_on = []  # the train visits of every epoch that was run
    original = classifier_loop.Fold.train_epoch

    def recording(self, config, epoch):
        trained_on.append(len(self.train))
        return original(self, config, epoch)

    monkeypatch.setattr(classifier_loop.Fold, "train_epoch", recording)
    config = _cv_config(mode=mode, cv_metric="auroc")
    summary = finetune(cohort_tokens, encoder_dir, tmp_path / "ft", config)
    assert summary["selection"] == {
        "protocol": "cv", "folds": 3, "repeats": 1, "rule": "best", "metric": "auroc",
        "penalty": config.penalty_selection,
    }  # fmt: skip
    assert (summary["train_labeled"], summary["val_labeled"]) == (60, 0)
    history = summary["history"]  # every candidate's mean fold AUROC and its standard error
    chosen = history[choose([h["val_auroc"] for h in history], [h["val_se"] for h in history],
                            "best")]  # fmt: skip
    assert summary["val_auroc"] == chosen["val_auroc"]
    if mode == "linear-probe":
        assert not trained_on and summary["selected_C"] == chosen["C"]
        return
    assert summary["selected_epoch"] == chosen["epoch"]
    # Folds train on about 2/3 of the visits; the refit, on all 60, for the chosen epochs.
    assert trained_on.count(60) == summary["selected_epoch"]
    assert all(n < 60 for n in trained_on if n != 60) and len(trained_on) > trained_on.count(60)
    if mode == "full":
        assert summary["selected"] == ("probe" if summary["selected_epoch"] == 0 else "fine-tuned")
    val = finetuning.labeled_split(cohort_tokens, "val")
    scores = finetuning.predict_finetuned(tmp_path / "ft", encoder_dir, val, torch.device("cpu"))
    assert scores.shape == (len(val),) and np.isfinite(scores).all()


@pytest.mark.parametrize("mode", ["full", "linear-probe"])
def test_cv_selection_by_log_loss_keeps_the_lowest_mean_fold_loss(
    cohort_tokens, encoder_dir, tmp_path, mode
):
    config = _cv_config(mode=mode, cv_metric="log_loss")
    summary = finetune(cohort_tokens, encoder_dir, tmp_path / "ft", config)
    assert summary["selection"]["metric"] == "log_loss"
    history = summary["history"]
    losses = [h["val_log_loss"] for h in history]
    assert all(np.isfinite(losses)) and all(0 < loss < 17 for loss in losses)
    chosen = history[int(np.argmin(losses))]  # argmin keeps the first of equals
    assert summary["val_auroc"] == chosen["val_auroc"]
    assert (
        summary["selected_C" if mode == "linear-probe" else "selected_epoch"]
        == chosen["C" if mode == "linear-probe" else "epoch"]
    )


@pytest.mark.parametrize("mode", ["full", "linear-probe"])
def test_evidence_chooses_the_probes_c_and_the_folds_the_epoch(
    cohort_tokens, encoder_dir, tmp_path, mode
):
    config = _cv_config(mode=mode, penalty_selection="evidence")
    summary = finetune(cohort_tokens, encoder_dir, tmp_path / "ft", config)
    assert summary["selection"]["penalty"] == "evidence"
    history = summary["history"]
    if mode == "linear-probe":
        evidence = [h["log_evidence"] for h in history]
        assert all(np.isfinite(evidence))
        assert summary["selected_C"] == history[int(np.argmax(evidence))]["C"]
        return
    assert all("log_evidence" not in h for h in history)  # epochs: the folds choose
    aurocs = [h["val_auroc"] for h in history]
    assert summary["selected_epoch"] == history[int(np.argmax(aurocs))]["epoch"]


def test_cv_selection_reads_neither_val_nor_test(cohort_tokens, encoder_dir, tmp_path, monkeypatch):
    splits_read = []
    original = finetuning.TokenDataset

    def recording(tokens_dir, selection, *, splits):
        splits_read.extend(splits)
        return original(tokens_dir, selection, splits=splits)

    monkeypatch.setattr(finetuning, "TokenDataset", recording)
    finetune(cohort_tokens, encoder_dir, tmp_path / "ft", _cv_config(mode="full"))
    assert set(splits_read) == {"train"}


@pytest.mark.parametrize("readout", ["segments", "forecast"])
@pytest.mark.parametrize("mode", ["linear-probe", "full", "scratch"])
def test_a_segment_readout_runs_end_to_end(cohort_tokens, encoder_dir, tmp_path, mode, readout):
    """finetune.readout = "segments" (or "forecast") in every mode: the head or probe is
    3 D + 2 (4 D + 2) wide, the summary and the classifier's config record it, and predictions
    from the output directory reproduce the selected model's validation AUROC. A scratch
    model, which has no pretrained forecast state, reads "segments" when asked "forecast"."""
    from safetensors.torch import load_file
    from sklearn.metrics import roc_auc_score

    out = tmp_path / "ft"
    summary = finetune(cohort_tokens, encoder_dir, out, _config(mode=mode, readout=readout))
    readout = "segments" if mode == "scratch" else readout
    hidden = EHRConfig.from_pretrained(encoder_dir).hidden_size
    width = (3 if readout == "segments" else 4) * hidden + 2
    assert json.loads((out / "finetune_summary.json").read_text())["readout"] == readout
    if mode == "linear-probe":
        assert load_file(out / "linear_probe.safetensors")["coef"].shape == (width,)
    else:
        config = json.loads((out / "model" / "config.json").read_text())
        assert config["readout"] == readout
        assert load_file(out / "model" / "model.safetensors")["head.weight"].shape == (1, width)
    val = finetuning.labeled_split(cohort_tokens, "val")
    scores = finetuning.predict_finetuned(out, encoder_dir, val, torch.device("cpu"))
    assert roc_auc_score(val.labels, scores) == pytest.approx(summary["val_auroc"], abs=1e-9)


def test_full_mode_starts_as_the_linear_probe_of_its_readout(cohort_tokens, encoder_dir, tmp_path):
    """LP-FT probes the readout the head reads: epoch 0 scores like the segment probe."""
    config = {"max_epochs": 1, "readout": "segments"}
    full = finetune(cohort_tokens, encoder_dir, tmp_path / "full", _config(mode="full", **config))
    probe = finetune(cohort_tokens, encoder_dir, tmp_path / "probe",
                     _config(mode="linear-probe", **config))  # fmt: skip
    assert full["history"][0]["val_auroc"] == pytest.approx(probe["val_auroc"], abs=1e-6)


def test_a_probe_is_read_with_the_readout_its_summary_records(cohort_tokens, encoder_dir, tmp_path):
    from ehr_ssl.errors import InputError
    from ehr_ssl.training.probe import load_probe

    out = tmp_path / "ft"
    finetune(cohort_tokens, encoder_dir, out, _config(mode="linear-probe", readout="segments"))
    config = EHRConfig.from_pretrained(encoder_dir)
    hidden = config.hidden_size
    probe, readout = load_probe(out, config)
    assert readout == "segments" and probe["mean"].shape == (3 * hidden + 2,)
    path = out / "finetune_summary.json"
    summary = json.loads(path.read_text())
    for recorded, message in ((None, "of another shape"), ("pooled", "of another shape"),
                              ("cls", "readout 'cls' is not one of")):  # fmt: skip
        edited = {k: v for k, v in summary.items() if k != "readout"}
        path.write_text(json.dumps(edited | ({} if recorded is None else {"readout": recorded})))
        with pytest.raises(InputError, match=message):
            load_probe(out, config)


def test_the_code_hierarchy_reaches_every_mode(cohort_tokens, tmp_path):
    """Pretrained with `model.code_hierarchy = "ancestors"`, the encoder holds the vocabulary's
    ancestor index (ICD categories by spelling on this cohort) and both the fine-tuned and the
    scratch classifier read the same index: the hierarchy is data, never drawn at random."""
    config = load_pretrain_config(
        None, {"preset": "tiny", "model.code_hierarchy": "ancestors", "train.max_steps": 3}
    )
    pretrain(cohort_tokens, tmp_path / "run", config)
    encoder = EHREncoder.load_checked(tmp_path / "run" / "encoder")
    _, expected = ancestor_index(Tokenizer.load(cohort_tokens).vocab, None, MAX_ANCESTORS_PER_CODE)
    assert expected.any() and torch.equal(encoder.code_ancestor_ids, torch.from_numpy(expected))
    assert encoder.config.n_code_ancestors == int(expected.max())
    for mode in ("full", "scratch"):
        model = finetuning.build_classifier(tmp_path / "run" / "encoder", encoder.config,
                                            _config(mode=mode))  # fmt: skip
        assert torch.equal(model.encoder.code_ancestor_ids, encoder.code_ancestor_ids), mode
    summary = finetune(cohort_tokens, tmp_path / "run" / "encoder", tmp_path / "ft",
                       _config(mode="scratch"))  # fmt: skip
    assert summary["mode"] == "scratch"


def test_the_wide_pooling_reaches_the_probe_and_the_classifier(cohort_tokens, tmp_path):
    """Pretrained with `model.pool_width`, the probe and the fine-tuned classifier read the
    K-wide summaries of the segment readout (3 K + 2), and the probe loads back at that width."""
    from ehr_ssl.training.probe import load_probe

    config = load_pretrain_config(
        None, {"preset": "tiny", "model.pool_width": 24, "train.max_steps": 3}
    )
    pretrain(cohort_tokens, tmp_path / "run", config)
    encoder_dir = tmp_path / "run" / "encoder"
    encoder_config = EHRConfig.from_pretrained(encoder_dir)
    assert encoder_config.pool_width == 24
    finetune(cohort_tokens, encoder_dir, tmp_path / "probe",
             _config(mode="linear-probe", readout="segments"))  # fmt: skip
    probe, readout = load_probe(tmp_path / "probe", encoder_config)
    assert readout == "segments" and probe["coef"].shape == (3 * 24 + 2,)
    summary = finetune(cohort_tokens, encoder_dir, tmp_path / "full",
                       _config(mode="full", readout="segments"))  # fmt: skip
    assert 0.0 <= summary["val_auroc"] <= 1.0
    model = finetuning.build_classifier(encoder_dir, encoder_config,
                                        _config(mode="full", readout="segments"))  # fmt: skip
    assert model.head.weight.shape == (1, 3 * 24 + 2)


def test_the_forecast_readout_needs_an_encoder_pretrained_with_the_forecast_term(
    cohort_tokens, tmp_path
):
    """An encoder pretrained without the forecast term has no forecast state: the "forecast"
    readout is refused with one line naming the encoder, and nothing is written."""
    from ehr_ssl.errors import InputError

    run = tmp_path / "masked-only"
    settings = {"preset": "tiny", "train.max_steps": 4, "objective.forecast_weight": 0.0}
    pretrain(cohort_tokens, run, load_pretrain_config(None, settings))
    with pytest.raises(InputError, match="forecast_weight > 0.*finetune.readout") as error:
        finetune(cohort_tokens, run / "encoder", tmp_path / "ft", _config(readout="forecast"))
    assert str(run / "encoder") in str(error.value)
    assert not (tmp_path / "ft").exists()
