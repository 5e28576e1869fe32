"""The Markdown and terminal renderings of the report built in conftest.py."""

from __future__ import annotations

import json

from ehr_ssl.evaluation.render import format_report_markdown, format_report_table


def test_markdown_names_every_model_and_number(report: dict) -> None:
    text = format_report_markdown(report)
    assert text.startswith("# ")
    for name, metrics in report["models"].items():
        assert f"| {name} |" in text
        assert f"{metrics['auroc']:.3f} ({metrics['auroc_ci95'][0]:.3f}–" in text
        assert f"{metrics['brier']:.3f}" in text
    difference = report["models"]["random"]["reference_minus_this"]["difference"]
    assert f"{difference:+.3f}" in text
    assert f"{report['models']['scratch']['relative_gain']:+.3f}" in text
    assert f"oracle AUROC {report['oracle_auroc']:.3f}" in text
    for entry in report["label_efficiency"]:
        for value in entry["models"].values():
            assert f"{value['mean']:.3f} ({value['ci95'][0]:.3f}–{value['ci95'][1]:.3f})" in text
    for entry in report["label_efficiency"]:
        diff = entry["models"]["scratch"]["reference_minus_this"]
        assert f"{diff['difference']:+.3f} ({diff['ci95'][0]:+.3f}–" in text
    assert "–" in text  # the reference's relative gain
    assert "resample patients" in text and "paired" in text
    # A report without an oracle and its JSON round trip format too.
    no_oracle = json.loads(json.dumps({**report, "oracle_auroc": None, "oracle_auroc_ci95": None}))
    assert "oracle AUROC –" in format_report_markdown(no_oracle)


def test_terminal_table(report: dict) -> None:
    lines = format_report_table(report).splitlines()
    assert len(lines) == 2 + len(report["models"])
    assert lines[0].startswith("model")
    for line, (name, metrics) in zip(lines[2:], report["models"].items(), strict=True):
        assert line.startswith(name)
        assert f"{metrics['auroc']:.3f}" in line


def test_markdown_says_what_each_model_selected(report: dict) -> None:
    """The "Model selection" section: one row per budget-seed and model, with its protocol,
    selection AUROC and choices (the shapes the pipeline's fine-tuning and baselines record)."""
    cv = {"protocol": "cv", "folds": 5, "repeats": 2}  # a run from before finetune.cv_rule
    one_se = {"protocol": "cv", "folds": 5, "repeats": 1, "rule": "one_se"}
    selection = {
        "100-seed1/ssl": {
            "val_auroc": 0.8123,
            "selected_epoch": 0,
            "selected_C": 0.01,
            "selected": "probe",
            "selection": cv,
        },  # fmt: skip
        "100-seed1/counts_logistic": {
            "val_auroc": 0.79,
            "chosen": {"C": 0.0316227766},
            "selection": cv,
        },  # fmt: skip
        "100-seed2/counts_logistic": {
            "val_auroc": 0.78,
            "chosen": {"C": 0.001},
            "selection": one_se,
        },  # fmt: skip
        "100-seed2/tabular_logistic": {
            "val_auroc": 0.77,
            "chosen": {"C": 0.001},
            "selection": one_se | {"rule": "best"},
        },  # fmt: skip
        "100-seed2/scratch": {
            "val_auroc": 0.76,
            "selected_epoch": 4,
            "selection": one_se | {"metric": "log_loss"},
        },  # fmt: skip
        "100-seed2/counts_gbm": {
            "val_auroc": 0.74,
            "chosen": {"num_leaves": 7},
            "selection": cv | {"penalty": "evidence"},  # no C: the folds chose its trees
        },  # fmt: skip
        "100-seed2/ssl_plus_counts": {
            "val_auroc": 0.75,
            "chosen": {"C": 0.01},
            "selection": cv | {"penalty": "evidence"},
        },  # fmt: skip
        "300-seed0/counts_gbm": {
            "val_auroc": 0.7,
            "chosen": {"num_leaves": 7},
            "selection": {"protocol": "holdout"},
        },  # fmt: skip
        "300-seed0/scratch": {"val_auroc": None},
    }
    text = format_report_markdown({**report, "selection": selection})
    section = text.split("## Model selection", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == [
        "| 100-seed1 | ssl | cv 5 folds x 2 | 0.812 | probe, epoch 0, C=0.01 |",
        "| 100-seed1 | counts_logistic | cv 5 folds x 2 | 0.790 | C=0.0316 |",
        "| 100-seed2 | counts_logistic | cv 5 folds x 1, one-SE rule | 0.780 | C=0.001 |",
        "| 100-seed2 | tabular_logistic | cv 5 folds x 1 | 0.770 | C=0.001 |",
        "| 100-seed2 | scratch | cv 5 folds x 1, one-SE rule, by log-loss | 0.760 | epoch 4 |",
        "| 100-seed2 | counts_gbm | cv 5 folds x 2 | 0.740 | num_leaves=7 |",
        "| 100-seed2 | ssl_plus_counts | cv 5 folds x 2, C by evidence | 0.750 | C=0.01 |",
        "| 300-seed0 | counts_gbm | holdout | 0.700 | num_leaves=7 |",
        "| 300-seed0 | scratch | – | – | – |",
    ]
    assert "## Model selection" not in format_report_markdown({**report, "selection": {}})
