"""Text renderings of an evaluation report: the Markdown document (report.md, the model card's
evaluation section) and the terminal table of the main models."""

from __future__ import annotations

import math
from typing import Any

from ehr_ssl.evaluation.subgroups import MIN_PATIENTS

DASH = "–"  # how a missing value (None) is shown

# The closing paragraph of report.md; {n_boot} is the number of bootstrap replicates.
_HOW_TO_READ = (
    "How to read: AUROC intervals come from {n_boot} bootstrap replicates that "
    "resample patients, not visits; the differences with the reference are paired (both "
    "models scored on the same resampled patients), with a two-sided bootstrap p-value. "
    "Relative gain = (AUROC_ref − 0.5) / (AUROC_model − 0.5) − 1: how much more "
    "above-chance discrimination the reference achieves. Label-efficiency intervals are those "
    "of the mean over seeds, and its differences are paired differences of seed means (one "
    "resample of patients scores every seed of both models). No interval holds the spread "
    "between label subsets or between pretrainings: a pretrained model's rows come from one "
    "pretraining (train.seed), and another can move them by as much as the differences."
)


def format_report_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown document: summary line, caveats, main table, the reference's
    calibration, operating points and subgroups, the decision curve, label-efficiency table and
    the table of the reference minus each model along the curve (a section is left out of a
    report without its keys, e.g. one written before they existed).

    Args:
        report: A `build_report` result (or its JSON round trip).

    Returns:
        Markdown text ending in a newline; numbers with 3 decimals, missing values as "–".
    """
    lines = ["# Evaluation report", "", _summary_line(report), ""]
    lines += _caveat_lines(report)
    lines += [f"## Models at label budget {report['label_budget']}", ""]
    lines += _markdown_table(*_main_rows(report, split_ci=False))
    lines += _calibration_lines(report)
    lines += _operating_point_lines(report.get("operating_points"))
    lines += _subgroup_lines(report.get("subgroups"))
    lines += _decision_curve_lines(report.get("decision_curve"))
    if report.get("label_efficiency"):
        lines += _label_efficiency_lines(report)
    if report.get("selection"):
        lines += _selection_lines(report["selection"])
    lines += ["", _HOW_TO_READ.format(n_boot=report["n_boot"])]
    return "\n".join(lines) + "\n"


def format_report_table(report: dict[str, Any]) -> str:
    """The main-model table as aligned plain text for a terminal (no trailing newline).

    Args:
        report: A `build_report` result.

    Returns:
        The header, a rule and one line per model; the model column left-aligned, numbers right.
    """
    header, rows = _main_rows(report, split_ci=True)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


# ----------------------------------------------------------------------------------------------
# sections


def _summary_line(report: dict[str, Any]) -> str:
    """The test set, the main budget and seed, and the oracle AUROC in one sentence."""
    oracle = _with_ci(report.get("oracle_auroc"), report.get("oracle_auroc_ci95"))
    patients = report.get("n_test_patients")
    return (
        f"Test set: {report['n_test']} visits of {patients if patients is not None else DASH} "
        f"patients, prevalence {_number(report['test_prevalence'])}; label budget "
        f"{report['label_budget']} (training seed {report['seed']}); oracle AUROC {oracle}."
    )


def _main_rows(report: dict[str, Any], *, split_ci: bool) -> tuple[list[str], list[list[str]]]:
    """Header and one row of cells per main model; with `split_ci` the intervals and p-values
    get their own columns (terminal table), else they share the estimate's cell (Markdown)."""
    reference = report["reference"]
    with_oracle = report.get("oracle_auroc") is not None
    if split_ci:
        header = ["model", "AUROC", "95% CI", "AUPRC", "Brier", "cal. slope", "cal. intercept"]
        header += [f"{reference} - this", "95% CI", "p", "rel. gain"]
    else:
        header = ["model", "AUROC (95% CI)", "AUPRC", "Brier", "cal. slope", "cal. intercept"]
        header += [f"{reference} minus this (95% CI, p)", "relative gain in (AUROC − 0.5)"]
    if with_oracle:
        header.append("gap to oracle")
    rows = []
    for name, m in report["models"].items():
        ci = m["auroc_ci95"]
        if split_ci:
            row = [name, _number(m["auroc"]), f"{_number(ci[0])}–{_number(ci[1])}"]
        else:
            row = [name, _with_ci(m["auroc"], ci)]
        row += [_number(m[k]) for k in ("auprc", "brier")]
        row += [_number(m[k]) for k in ("calibration_slope", "calibration_intercept")]
        row += _comparison_cells(m.get("reference_minus_this"), split_ci=split_ci)
        row.append(DASH if name == reference else _number(m.get("relative_gain"), signed=True))
        if with_oracle:
            row.append(_number(m.get("gap_to_oracle")))
        rows.append(row)
    return header, rows


def _comparison_cells(diff: dict[str, Any] | None, *, split_ci: bool) -> list[str]:
    """The reference-minus-this cells of a main row: estimate, interval and p-value in three
    cells (terminal) or one (Markdown); "reference" for the reference itself."""
    if diff is None:
        return ["reference", "", ""] if split_ci else ["reference"]
    if not split_ci:
        return [_difference_cell(diff)]
    low, high = diff["ci95"]
    return [
        _number(diff["difference"], signed=True),
        f"{_number(low, signed=True)}–{_number(high, signed=True)}",
        "<0.001" if diff["p_value"] < 0.001 else f"{diff['p_value']:.3f}",
    ]


def _label_efficiency_lines(report: dict[str, Any]) -> list[str]:
    """The label-efficiency table (seed means with intervals), the seeds per cell, and the table
    of the reference minus each other model along the curve."""
    efficiency = report["label_efficiency"]
    names = list(dict.fromkeys(n for entry in efficiency for n in entry["models"]))
    lines = ["", "## Label efficiency (test AUROC, mean over seeds (95% CI))", ""]
    rows = []
    for entry in efficiency:
        cells = [entry["budget"], str(entry["train_labels"])]  # every label used
        for name in names:
            value = entry["models"].get(name)
            cells.append(DASH if value is None else _with_ci(value["mean"], value["ci95"]))
        rows.append(cells)
    lines += _markdown_table(["budget", "labels", *names], rows)
    seeds = sorted({v["n_seeds"] for e in efficiency for v in e["models"].values()})
    lines += ["", f"Seeds per cell: {', '.join(map(str, seeds))}."]
    others = [n for n in names if n != report["reference"]]
    lines += [
        "",
        f"## {report['reference']} minus each model, mean over seeds (paired, 95% CI, p)",
        "",
    ]
    rows = []
    for entry in efficiency:
        cells = [entry["budget"], str(entry["train_labels"])]  # every label used
        for name in others:
            diff = (entry["models"].get(name) or {}).get("reference_minus_this")
            cells.append(DASH if diff is None else _difference_cell(diff))
        rows.append(cells)
    return lines + _markdown_table(["budget", "labels", *others], rows)


def _selection_lines(selection: dict[str, Any]) -> list[str]:
    """What was chosen for each model at each budget and seed, on the budget's labels only:
    the protocol (cv folds x repeats, the one-SE rule, the metric and the evidence, or holdout), the
    selection AUROC (the chosen candidate's mean fold AUROC) and the choice."""
    lines = ["", "## Model selection (on each budget's labels; the test split plays no part)", ""]
    rows = []
    for key, choice in selection.items():
        budget_seed, _, model = key.rpartition("/")
        protocol = choice.get("selection") or {}
        shown = protocol.get("protocol", DASH)
        if shown == "cv":
            shown = f"cv {protocol['folds']} folds x {protocol['repeats']}"
            if protocol.get("rule") == "one_se":  # absent before the setting: the best mean
                shown += ", one-SE rule"
            if protocol.get("metric") == "log_loss":  # absent before the setting: AUROC
                shown += ", by log-loss"
            chose_c = choice.get("selected_C") is not None or "C" in (choice.get("chosen") or {})
            if protocol.get("penalty") == "evidence" and chose_c:  # absent before the setting
                shown += ", C by evidence"
        auroc = _number(choice.get("val_auroc"))
        rows.append([budget_seed, model, shown, auroc, _choice(choice)])
    return lines + _markdown_table(["budget-seed", "model", "protocol", "AUROC", "chosen"], rows)


def _choice(choice: dict[str, Any]) -> str:
    """The settings a model's selection chose, e.g. "fine-tuned, epoch 3, probe C=0.01"."""
    parts = []
    if choice.get("selected"):
        parts.append(choice["selected"])
    if choice.get("selected_epoch") is not None:
        parts.append(f"epoch {choice['selected_epoch']}")
    if choice.get("selected_C") is not None:
        parts.append(f"C={choice['selected_C']:.3g}")
    for name, value in (choice.get("chosen") or {}).items():
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts) or DASH


# ----------------------------------------------------------------------------------------------
# sections a clinician acts on


def _caveat_lines(report: dict[str, Any]) -> list[str]:
    """The sample-size and near-chance warnings, with the thresholds they are judged by."""
    caveats = report.get("caveats")
    if caveats is None:
        return []
    t = caveats["thresholds"]
    rule = (
        f"Warnings are given below {t['min_patients']} test patients, {t['min_positives']} "
        f"positives or {t['min_negatives']} negatives; relative gains are left out when an "
        f"AUROC is within {t['near_chance']} of 0.5."
    )
    warnings = [f"- **Warning:** {w}." for w in caveats["warnings"]] or ["- None."]
    return ["## Caveats", "", *warnings, "", rule, ""]


def _calibration_lines(report: dict[str, Any]) -> list[str]:
    calibration = report.get("calibration")
    if calibration is None:
        return []
    return ["", f"Calibration of {calibration['model']}: {calibration['statement']}."]


_RULE_NAMES = {"sensitivity": "sensitivity {:.0%} on val", "top_fraction": "top {:.0%} of risk"}


def _operating_point_lines(section: dict[str, Any] | None) -> list[str]:
    """The table of operating points, each a threshold fixed on validation, read on test."""
    if section is None:
        return []
    lines = ["", f"## Operating points of {section['model']} on the test set", ""]
    source = section.get("thresholds_from")
    if source is None:
        return lines + [f"Not computed: {section.get('note') or DASH}."]
    lines += [
        f"Thresholds fixed on {source['data']}: {source['n']} visits, {source['n_positives']} "
        "positive; never on the test set; a visit is flagged when its score is >= the "
        "threshold. Test values with 95% CIs (patient bootstrap).",
        "",
    ]
    header = ["rule", "threshold", "sensitivity", "specificity", "PPV", "NPV", "alert rate"]
    rows = []
    for point in section["points"]:
        rule = _RULE_NAMES[point["rule"]].format(point["target"])
        cells = [rule, f"{point['threshold']:.3f}"]
        for name in ("sensitivity", "specificity", "ppv", "npv", "alert_rate"):
            cells.append(_with_ci(point[name]["value"], point[name]["ci95"]))
        rows.append(cells)
    return lines + _markdown_table(header + ["TP / FP / FN / TN"], _with_counts(rows, section))


def _with_counts(rows: list[list[str]], section: dict[str, Any]) -> list[list[str]]:
    counts = [p["counts"] for p in section["points"]]
    return [
        row + [f"{c['tp']} / {c['fp']} / {c['fn']} / {c['tn']}"]
        for row, c in zip(rows, counts, strict=True)
    ]


def _subgroup_lines(section: dict[str, Any] | None) -> list[str]:
    """AUROC and calibration of the reference by each static column's subgroups."""
    if section is None:
        return []
    lines = ["", f"## Subgroups of {section['model']} on the test set", ""]
    header = ["column", "subgroup", "visits", "patients", "positives", "AUROC (95% CI)",
              "cal. slope (95% CI)", "observed / mean score"]  # fmt: skip
    rows = []
    for column, groups in section["columns"].items():
        for g in groups:
            if g.get("suppressed"):  # under the minimum of patients: nothing but its name
                under = f"<{MIN_PATIENTS}"
                rows.append([column, g["value"], under, under, "", "withheld", "", ""])
                continue
            calibration = g.get("calibration") or {}
            rows.append([
                column, g["value"] + (" †" if g["small"] else ""), str(g["n"]),
                str(g["n_patients"]), str(g["n_positives"]), _with_ci(g["auroc"], g["auroc_ci95"]),
                _with_ci(calibration.get("slope"), calibration.get("slope_ci95")),
                f"{_number(g['observed_rate'])} / {_number(g['mean_score'])}",
            ])  # fmt: skip
    return (
        lines
        + _markdown_table(header, rows)
        + [
            "",
            f"Age bands: {section['age_bands']}. † a small subgroup (below the caveats' counts): "
            "its figures are unreliable. – where a subgroup holds one class only. A subgroup of "
            f"fewer than {MIN_PATIENTS} patients is withheld (small-cell suppression).",
        ]
    )


def _decision_curve_lines(curve: dict[str, Any] | None) -> list[str]:
    """Net benefit at every other threshold probability (all of them in decision_curve.png)."""
    if curve is None:
        return []
    names = list(curve["models"])
    lines = ["", "## Decision curve (net benefit on the test set; see decision_curve.png)", ""]
    rows = []
    for i, pt in enumerate(curve["thresholds"]):
        if round(pt * 100) % 10:  # every other threshold: 0.1, 0.2, ...
            continue
        cells = [f"{pt:.2f}", *(_number(curve["models"][n][i]) for n in names)]
        rows.append(cells + [_number(curve["treat_all"][i]), _number(0.0)])
    return (
        lines
        + _markdown_table(["threshold", *names, "treat all", "treat none"], rows)
        + [
            "",
            "Net benefit = TP/n − FP/n · pt/(1 − pt): a model is worth using at a threshold pt "
            "where its net benefit exceeds both treat-all and treat-none.",
        ]
    )


# ----------------------------------------------------------------------------------------------
# cells


def _number(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _with_ci(value: float | None, ci: list[float] | None, signed: bool = False) -> str:
    if value is None:
        return DASH
    if ci is None:
        return _number(value, signed)
    return f"{_number(value, signed)} ({_number(ci[0], signed)}–{_number(ci[1], signed)})"


def _p_value(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _difference_cell(diff: dict[str, Any]) -> str:
    """A paired difference as "+0.012 (+0.002–+0.021), p=0.020"."""
    estimate = _with_ci(diff["difference"], diff["ci95"], signed=True)
    return f"{estimate}, {_p_value(diff['p_value'])}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)]
