"""The model card of a bundle (MODEL_CARD.md): what the model is, what it was trained on, how well
it does and where it must not be used. Counts and dates only, no identifiers."""

from __future__ import annotations

from ehr_ssl.evaluation.caveats import calibration_statement, report_caveats
from ehr_ssl.evaluation.render import format_report_markdown

_INTENDED_USE = [
    "## Intended use",
    "",
    "Decision support and operational planning for adult ED visits at the hospital whose "
    "records trained it: ranking visits by their risk of admission within 7 days, and "
    "visit embeddings for analytics. Not a diagnostic device; a clinician decides.",
    "",
]
_FIXED_LIMITATIONS = [
    "- Trained on one hospital's records and date range: performance elsewhere, or after "
    "changes in coding, case mix or admission policy, is unknown until measured (see the "
    "drift section of a retrain report).",
    "- Codes unseen in training, or seen in fewer patients than the vocabulary's minimum "
    "count, are read as their ICD/ATC class when the vocabulary holds it (tokenizer.rare_codes), "
    "else as [UNK].",
    "- A synthetic cohort's figures (`ehr-ssl demo`) say nothing about real data.",
]


def model_card(info: dict, report: dict | None) -> str:
    """MODEL_CARD.md: what the model is, what it was trained on, how well it does and where it
    must not be used. Counts and dates only, no identifiers.

    Args:
        info: The bundle's bundle.json contents.
        report: The evaluation report the model came with, or None.

    Returns:
        Markdown text.
    """
    lines = _what_it_predicts(info) + _training_data(info) + _own_figures(info)
    lines += _evaluation(report)
    return "\n".join(lines + _INTENDED_USE + _limitations(info, report))


def _what_it_predicts(info: dict) -> list[str]:
    """The title, provenance, label, prediction time and outputs."""
    return [
        f"# Model card: ehr-ssl admission model ({info.get('model')}, {info.get('mode')})",
        "",
        f"Created {info.get('created')} by ehr-ssl {info.get('ehr_ssl_version')}."
        + (f" Warm-started from {info['warm_start']}." if info.get("warm_start") else ""),
        "",
        "## What it predicts",
        "",
        f"- Label: {info.get('label')}.",
        f"- Prediction time: {info.get('prediction_time')}.",
        "- Output: a probability per ED visit (`score`), or the visit vector (`embed`): "
        + _embedding(info)
        + ".",
        "",
    ]


def _embedding(info: dict) -> str:
    """What `embed` returns: the readout and its width (bundles before them: pooled)."""
    embedding = info.get("embedding") or {"readout": "pooled"}
    dim = embedding.get("dim") or info.get("encoder", {}).get("hidden_size")
    return f"readout {embedding.get('readout')!r}, {dim} float32 per visit"


def _training_data(info: dict) -> list[str]:
    """Date range, vocabulary, the counts of each split, and how the model was fine-tuned."""
    data = info.get("training_data", {})
    splits = data.get("splits", {})
    dates = data.get("arrival_time_range") or ["?", "?"]
    lines = [
        "## Training data",
        "",
        f"Visits arriving from {dates[0]} to {dates[1]}; vocabulary of {data.get('vocab_size')} "
        "tokens fitted on the training split (codes held by too few patients map to their class "
        "or to [UNK]).",
        "",
        "| split | visits | patients | labeled | positive | tokens |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in splits.items():
        lines.append(
            f"| {name} | {s['visits']:,} | {s['patients']:,} | {s['labeled']:,} | "
            f"{s['positives']:,} | {s['tokens']:,} |"
        )
    return lines + [
        "",
        f"Fine-tuned on {info.get('train_labels')} labeled training visits (label budget "
        f"{info.get('label_budget')}, seed {info.get('seed')}), selected on "
        f"{info.get('val_labels')} validation labels (validation AUROC "
        f"{info.get('val_auroc', float('nan')):.3f}). Encoder: {info.get('encoder')}.",
        "",
    ]


def _own_figures(info: dict) -> list[str]:
    """This model's own test figures (its label budget and seed, which need not be the run's
    main ones the evaluation report's table shows)."""
    m = info.get("test_metrics")
    lines = ["## This model's test figures", ""]
    if not m:
        return lines + ["None recorded: no test predictions came with this model.", ""]
    low, high = m["auroc_ci95"]
    calibration = _measured_calibration(m)
    return lines + [
        f"Label budget {info.get('label_budget')}, seed {info.get('seed')}: test AUROC "
        f"{m['auroc']:.3f} (95% CI {low:.3f}-{high:.3f}), AUPRC {m['auprc']:.3f}, Brier "
        f"{m['brier']:.3f}, {calibration}; {m['n']:,} test visits, prevalence "
        f"{m['prevalence']:.3f}.",
        "",
    ]


def _measured_calibration(metrics: dict) -> str:
    """The calibration these test metrics measured, in words (no claim the figures lack)."""
    return calibration_statement(
        metrics.get("calibration_slope"), metrics.get("calibration_intercept"),
        metrics.get("calibration_slope_ci95"), metrics.get("calibration_intercept_ci95"),
    )  # fmt: skip


def _limitations(info: dict, report: dict | None) -> list[str]:
    """Where the model must not be trusted: the fixed limits, the measured calibration, what
    the subgroup analysis covered and the test set's sample-size warnings."""
    m = info.get("test_metrics")
    calibration = (
        f"- Calibration on the test set: {_measured_calibration(m)}. Recalibrate before reading "
        "the score as a probability at another site or time."
        if m else "- Calibration: not measured (no test figures came with this model)."
    )  # fmt: skip
    subgroups = (report or {}).get("subgroups")
    covered = (
        f"- Subgroup performance was measured by {', '.join(subgroups['columns'])} only (see "
        "the evaluation section; † marks subgroups too small to judge); other subgroups "
        "(e.g. arrival mode) have not been evaluated."
        if subgroups else "- Subgroup performance (age, sex, arrival mode) has not been evaluated."
    )  # fmt: skip
    warnings = [f"- Warning: {w}." for w in report_caveats(report or {})]
    return ["## Limitations", "", *_FIXED_LIMITATIONS, calibration, covered, *warnings, ""]


def _evaluation(report: dict | None) -> list[str]:
    """The evaluation report's body, its sections one level down, or a line saying there is none."""
    lines = ["## Evaluation", ""]
    if report is None:
        return lines + ["No evaluation report came with this model.", ""]
    lines += [
        f"The run's report: its main table is label budget {report.get('label_budget')}, seed "
        f"{report.get('seed')}, for every model it trained.",
        "",
    ]
    body = format_report_markdown(report).split("\n", 2)[2]  # without its own title
    return lines + [body.replace("\n## ", "\n### ")]
