"""The leakage screen: codes read before a visit's prediction time whose presence alone nearly
separates the labeled visits (issue 20).

A code recorded only for stays that end in admission (a bed request, an admission order, a ward
transfer) but time-stamped inside the prediction window hands every model the label: AUROC looks
excellent on the data and the model fails in use, where the code comes after the decision. No
model can tell; the data can. For each code, and each of its prefixes at "//" boundaries (a
family such as "ADT//" or "ORDER//ADMIT//"), over the labeled visits that read it (the same
window as the tokenizer: lookback before arrival up to prediction_time):

- its single-feature AUROC (presence as the score): at least `min_auroc`, or at most
  1 - `min_auroc` (its presence marks the negatives), among at least `min_expected` patients;
- its purity: the share of the minority class among the visits that read it at most
  `max_impurity`, where chance would have put at least `min_expected` visits of that class there
  counting one visit per patient (so a handful of patients, however often they came back, or
  a rare outcome, never looks pure by luck).

A suspected leak stops `validate` and `run` (exit 2, one line with the numbers) unless its code
is accepted (`[leakage] accept`, `--accept-leaks`) after checking when it is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import polars as pl

from ehr_ssl.config import LeakageConfig, PipelineConfig
from ehr_ssl.data.readers import Dataset
from ehr_ssl.data.splits import visit_splits
from ehr_ssl.data.windows import build_windows
from ehr_ssl.errors import InputError

log = logging.getLogger(__name__)

PREFIX_SEPARATOR = "//"  # MEDS codes: vocabulary//code (ICD10CM//I50.9, LAB//51221//mg/dL)
CURRENT, WINDOW = "in the current visit", "before prediction_time"


@dataclass(frozen=True)
class SuspectedLeak:
    """A code (or a prefix ending in "//") and the figures that flag it."""

    code: str
    where: str  # CURRENT (between arrival and prediction time) or WINDOW (anywhere read)
    visits: int  # labeled visits that read it before their prediction time
    patients: int  # their patients
    admitted: int  # of them, admitted (label true)
    auroc: float  # its presence alone as the score, over every labeled visit
    admission_rate: float  # admitted / visits

    def describe(self) -> str:
        return (
            f"{self.code!r} {self.where} in {self.visits} labeled visits of {self.patients} "
            "patients, "
            f"{self.admission_rate:.0%} admitted "
            f"(AUROC of its presence alone {self.auroc:.2f})"
        )


def screen_leaks(
    visits: pl.DataFrame,
    events: pl.DataFrame,
    labels: pl.DataFrame | None,
    *,
    lookback_days: float,
    config: LeakageConfig,
) -> list[SuspectedLeak]:
    """Every code or prefix that nearly separates the labeled visits, strongest first.

    `visits`, `events`, `labels`: the checked tables (`ehr_ssl.data.readers`). No labels, or
    labels of one class: nothing to screen (the split check names that problem).
    """
    if labels is None or labels["label"].n_unique() < 2:
        return []
    labeled = visits.join(labels.select("visit_id", "label"), on="visit_id", how="inner")
    features = _features(labeled, events, lookback_days)
    stats = _code_stats(features, labeled["label"], labeled["patient_id"])
    prevalence = float(labeled["label"].mean())
    flagged = stats.filter(_separates(config, prevalence))
    flagged = flagged.sort((pl.col("auroc") - 0.5).abs(), "visits", descending=True)
    flagged = _without_echoes(flagged.unique("code", keep="first", maintain_order=True))
    fields = list(SuspectedLeak.__dataclass_fields__)
    return [SuspectedLeak(**row) for row in flagged.select(fields).iter_rows(named=True)]


def _features(labeled: pl.DataFrame, events: pl.DataFrame, lookback_days: float) -> pl.DataFrame:
    """(visit, code, where): each code and prefix a labeled visit reads, by where it reads it.

    A leak is recorded in the visit it gives away: read in the current visit, its code also
    sits in the history of the patient's later visits, where it is no leak and would dilute its
    figures. So each is screened twice: in the current visit, and anywhere in the window (a
    date-only code stamped at midnight lands just before arrival).
    """
    windows = build_windows(labeled, events, lookback_days=lookback_days)
    visit, _, row = windows.gather_index()
    current = row >= windows.current[visit]
    read = pl.DataFrame({"visit": visit, "code": windows.events["code"].gather(row),
                         "current": current})  # fmt: skip
    read = pl.concat([read, _prefixes(read)])
    in_current = read.filter("current").select("visit", "code", where=pl.lit(CURRENT))
    return pl.concat([in_current, read.select("visit", "code", where=pl.lit(WINDOW))]).unique()


def _code_stats(features: pl.DataFrame, y: pl.Series, patient: pl.Series) -> pl.DataFrame:
    """Per (code, where): visits, patients, admitted, the AUROC of presence as the score
    (0.5 + (TPR - FPR) / 2) and the admission rate. Shape: y, patient (V,) by visit index."""
    positives = int(y.sum())
    negatives = y.len() - positives
    admitted, n = pl.col("admitted"), pl.col("visits")
    tpr_minus_fpr = admitted / positives - (n - admitted) / negatives
    return (
        features.with_columns(label=y.gather(features["visit"]),
                              patient=patient.gather(features["visit"]))
        .group_by("code", "where")
        .agg(visits=pl.len(), patients=pl.col("patient").n_unique(),
             admitted=pl.col("label").sum().cast(pl.Int64))
        .with_columns(auroc=0.5 + 0.5 * tpr_minus_fpr, admission_rate=admitted / n)
    )  # fmt: skip


def _without_echoes(flagged: pl.DataFrame) -> pl.DataFrame:
    """Flagged prefixes that only repeat one flagged code of theirs (the same visits and
    admissions: "ORDER//" holding nothing but "ORDER//BED_REQUEST") are left out."""
    codes = flagged.filter(~pl.col("code").str.ends_with(PREFIX_SEPARATOR))
    key = ["where", "visits", "admitted"]
    echoes = flagged.filter(pl.col("code").str.ends_with(PREFIX_SEPARATOR)).join(
        codes.select(*key, child=pl.col("code")), on=key
    )
    echoes = echoes.filter(pl.col("child").str.starts_with(pl.col("code")))["code"]
    return flagged.filter(~pl.col("code").is_in(echoes.implode()))


def _prefixes(read: pl.DataFrame) -> pl.DataFrame:
    """(visit, prefix) for each proper prefix of each code at "//" boundaries, with the
    separator kept ("LAB//51221//mg/dL" -> "LAB//", "LAB//51221//")."""
    parts = pl.col("code").str.split(PREFIX_SEPARATOR)
    out = []
    depth = int(read.select(parts.list.len().max()).item() or 1)
    for k in range(1, depth):
        prefix = parts.list.head(k).list.join(PREFIX_SEPARATOR) + PREFIX_SEPARATOR
        out.append(read.filter(parts.list.len() > k).with_columns(code=prefix))
    return pl.concat(out) if out else read.clear()


def _separates(config: LeakageConfig, prevalence: float) -> pl.Expr:
    """The flag: single-feature AUROC beyond the bound, or a purity chance would not give."""
    n, admitted, patients = pl.col("visits"), pl.col("admitted"), pl.col("patients")
    far = ((pl.col("auroc") >= config.min_auroc) | (pl.col("auroc") <= 1 - config.min_auroc)) & (
        patients >= config.min_expected
    )
    pure_admitted = ((n - admitted) <= config.max_impurity * n) & (
        patients * (1 - prevalence) >= config.min_expected
    )
    pure_discharged = (admitted <= config.max_impurity * n) & (
        patients * prevalence >= config.min_expected
    )
    return far | pure_admitted | pure_discharged


def unaccepted(leaks: list[SuspectedLeak], accept: list[str]) -> list[SuspectedLeak]:
    """The suspected leaks whose code is not accepted (a prefix accepts its codes)."""
    return [
        leak for leak in leaks
        if not any(leak.code == a or (a.endswith(PREFIX_SEPARATOR) and leak.code.startswith(a))
                   for a in accept)
    ]  # fmt: skip


def check_leaks(leaks: list[SuspectedLeak], accept: list[str], source: str) -> None:
    """Stop on a suspected leak that is not accepted.

    Raises:
        InputError: one line naming the events file, the code column, each leak's figures and
            how to accept them.
    """
    left = unaccepted(leaks, accept)
    if not left:
        return
    shown = "; ".join(leak.describe() for leak in left[:3])
    more = (
        f"; and {len(left) - 3} more (ehr-ssl validate --json lists them)" if len(left) > 3 else ""
    )
    codes = ",".join(leak.code for leak in left[:3])
    raise InputError(
        f"suspected label leak: {shown}{more}: a code read before prediction_time that nearly "
        "separates admitted from discharged visits is usually recorded because of the outcome; "
        f"check when it is recorded, then drop it or accept it (--accept-leaks {codes}, or "
        "[leakage] accept)",
        file=source,
        column="code",
    )


def leak_summary(leaks: list[SuspectedLeak], accept: list[str]) -> list[dict]:
    """The screen's findings for a summary: each leak's figures and whether it is accepted."""
    left = unaccepted(leaks, accept)
    return [{**asdict(leak), "accepted": leak not in left} for leak in leaks]


def screen_dataset(
    dataset: Dataset,
    config: PipelineConfig,
    splits: Callable[[pl.DataFrame], pl.Series] | None = None,
) -> list[dict]:
    """The screen of a checked dataset under a run's settings: its findings (`leak_summary`).
    Only the labels of the train and val visits are read (by `splits` of the visits table, a
    retrain's temporal split; by default `config.split`'s): the test split's are read once,
    for the final report, and visits a split leaves out (null) are not read either.

    Raises:
        InputError: on a suspected leak that `config.leakage.accept` does not accept.
    """
    labels = dataset.labels
    if labels is not None:
        split = splits(dataset.visits) if splits else visit_splits(dataset.visits, config.split)
        trained = dataset.visits.filter(split.is_in(["train", "val"]))["visit_id"]
        labels = labels.filter(pl.col("visit_id").is_in(trained.implode()))
    leaks = screen_leaks(
        dataset.visits,
        dataset.events,
        labels,
        lookback_days=config.tokenizer.lookback_days,
        config=config.leakage,
    )
    events = dataset.files["events"]
    source = str(events[0] if len(events) == 1 else events[0].parent)
    if unmatched := unmatched_accepts(dataset.events["code"], config.leakage.accept):
        # no path: a MEDS root's events are read from a temporary copy linking to its shards
        log.warning(
            "leakage.accept: %s match no code of the events (a typo?)", ", ".join(unmatched)
        )
    check_leaks(leaks, config.leakage.accept, source)
    return leak_summary(leaks, config.leakage.accept)


def unmatched_accepts(codes: pl.Series, accept: list[str]) -> list[str]:
    """The entries of `accept` (codes, or prefixes ending in "//") that no code matches."""
    present = codes.unique()
    return [
        entry for entry in accept
        if not (present.str.starts_with(entry).any() if entry.endswith(PREFIX_SEPARATOR)
                else (present == entry).any())
    ]  # fmt: skip
