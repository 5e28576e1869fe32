"""The simulation of the synthetic emergency-department cohort: patients, their ED visits and the
events of each (history, current visit, outcome), drawn from one seeded generator in a fixed order.

A latent patient state (frailty, chronic conditions) shows only through a history of outpatient
encounters coded with synonymous codes; each ED visit adds a complaint, triage, vitals, labs and
medications; the outcome (admission within 7 days) leaves leak events after the prediction time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import polars as pl

from ehr_ssl.data import schema
from ehr_ssl.data.synthetic.catalog import (
    BASIC_PANEL,
    CONDITION_INDEX,
    CONDITIONS,
    DX_EXTENSIONS,
    LAB_INDEX,
    LABS,
    MED_FORMS,
    PROBLEMS,
    ROUTINE_OUTPATIENT_LABS,
    SEVERITY_LAB_COEF,
    Condition,
    Lab,
    family_weights,
    noise_codes,
    problem_index,
    zipf_weights,
)

# Times are naive UTC, as int64 microseconds since the epoch until the frames are built.
_SECOND = 1_000_000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_YEAR_DAYS = 365.25
ARRIVAL_START = np.datetime64("2021-01-01", "us").astype(np.int64)
ARRIVAL_DAYS = 1095  # arrivals fall on 2021-01-01 .. 2023-12-31
PREDICTION_OFFSET = _HOUR  # prediction_time = arrival_time + 1 hour
HISTORY_DAYS = 365  # outpatient history starts this long before a patient's first ED visit
# Consecutive ED visits of a patient are at least 14 days apart (day-granular gap of 15 days),
# which is longer than any 7-day outcome window plus inpatient stay (at most 6.75 + 6 days), so
# a visit's window [arrival, arrival + 7 days] holds only the admission of that visit.
VISIT_GAP_DAYS = 15
MAX_VISITS_PER_PATIENT = 40

# Arrivals by hour of day: quiet at night, busiest late morning to evening.
_HOUR_WEIGHTS = np.array(
    [2.2, 1.8, 1.5, 1.3, 1.2, 1.3, 1.8, 2.8, 3.9, 4.8, 5.3, 5.4]
    + [5.3, 5.2, 5.1, 5.0, 4.9, 4.8, 4.6, 4.3, 3.9, 3.4, 2.9, 2.5]
)


@dataclass
class Cohort:
    """A synthetic dataset in the input contract of `ehr_ssl.data.schema`, plus the true risk.

    Attributes:
        visits: visit_id i64 (unique), patient_id i64, arrival_time and prediction_time
            Datetime("us"), age f64, sex str ("F"/"M"); sorted by arrival_time (= visit_id order).
        events: patient_id i64, time Datetime("us"), code str, numeric_value f64 (null when the
            event has no value); sorted by (patient_id, time, code).
        labels: visit_id i64, label bool; only the labeled fraction of visits.
        oracle: visit_id i64, admission_probability f64; every visit, the true
            P(admitted within 7 days) the label was drawn from.
        latent: patient_id i64, frailty f64 and one bool column per chronic condition
            (`CONDITIONS` names, in order); every patient. Kept in memory, never written: it
            is what a perfect representation of the history could know, for diagnostics.
    """

    visits: pl.DataFrame
    events: pl.DataFrame
    labels: pl.DataFrame
    oracle: pl.DataFrame
    latent: pl.DataFrame


# The admission logit: intercept + frailty + age + chronic conditions + problem + severity.
# The history's share (frailty and the conditions) is sized so that, as in ED admission data
# (Hong, Haimovich and Taylor, PLoS ONE 2018: history 0.86, triage 0.87, both 0.92 AUROC), the
# history alone predicts about as well as the current visit alone and the two together better
# than either (benchmarks/bench_cohort_signal.py measures it). Until 2026-12-01 it was smaller
# (frailty 0.3, minor-condition effects sd 0.4): the current visit carried most of the signal
# and counts of raw codes reached their plateau from a few hundred labels.
_ADMIT_INTERCEPT = -2.35
_ADMIT_FRAILTY = 0.5
_ADMIT_AGE_PER_DECADE = 0.1
_ADMIT_SEVERITY = 0.4
_ADMIT_FROM_ED = 0.85  # the rest of the admissions follow a return within 7 days

# The history: how often conditions are written down.
_ENCOUNTER_RATE = 0.6  # outpatient encounters per year, before conditions and frailty
_ENCOUNTER_RATE_PER_CONDITION = 0.8
_DOCUMENTED = 0.9  # P(a patient's condition is ever coded); the rest stay invisible
_RECORDED_PER_ENCOUNTER = 0.55  # P(a documented condition is coded at a given encounter)
_RULE_OUT_DX = 0.004  # P(a condition code on a patient without it, per encounter)
_NOISE_PER_ENCOUNTER = 1.2  # mean number of outcome-unrelated codes per encounter


class _EventBuffer:
    """Collects events as numpy chunks (patient index, time in us, code id, value or NaN)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []

    def code_ids(self, codes: Sequence[str]) -> np.ndarray:
        """The int32 ids of `codes`, registering new ones."""
        return np.array([self._ids.setdefault(c, len(self._ids)) for c in codes], dtype=np.int32)

    def add(
        self,
        patient: np.ndarray,
        time: np.ndarray,
        code: np.ndarray | str,
        value: np.ndarray | None = None,
    ) -> None:
        """Append events; `code` is an array of code ids or one code string for all rows."""
        if isinstance(code, str):
            code = np.broadcast_to(self.code_ids([code]), patient.shape)
        assert patient.shape == time.shape == code.shape
        assert value is None or value.shape == patient.shape
        self._chunks.append((patient, time, code, value))

    def to_frame(self, patient_ids: np.ndarray) -> pl.DataFrame:
        """The events frame sorted by (patient_id, time, code, numeric_value): the canonical
        order MEDS-style tables are usually stored in (and the order the tokenizer reads)."""
        patient = np.concatenate([c[0] for c in self._chunks]).astype(np.int64)
        time = np.concatenate([c[1] for c in self._chunks])
        code = np.concatenate([c[2] for c in self._chunks])
        value = np.concatenate(
            [np.full(len(c[0]), np.nan) if c[3] is None else c[3] for c in self._chunks]
        )
        self._chunks.clear()
        names = list(self._ids)
        lexical_rank = np.argsort(np.argsort(np.array(names, dtype=object)))  # per code id
        order = (
            pl.DataFrame({"p": patient, "t": time, "c": lexical_rank[code], "v": value})
            .with_columns(pl.col("v").fill_nan(None))
            .select(pl.arg_sort_by(["p", "t", "c", "v"]))
            .to_series()
            .to_numpy()
        )
        vocabulary = pl.Series("code", list(self._ids), dtype=pl.String)
        return pl.DataFrame(
            {
                "patient_id": patient_ids[patient[order]],
                "time": pl.Series("time", time[order]).cast(pl.Datetime("us")),
                "code": vocabulary.gather(code[order]),
                "numeric_value": pl.Series("numeric_value", value[order], nan_to_null=True),
            }
        )


@dataclass
class _Patients:
    age: np.ndarray  # years at the first ED visit
    female: np.ndarray  # bool
    frailty: np.ndarray  # latent, about N(0, 1)
    has: np.ndarray  # (n, C) bool: has condition c
    documented: np.ndarray  # (n, C) bool: condition c is ever coded
    n_visits: np.ndarray  # ED visits (>= 1)

    def head(self, n: int) -> _Patients:
        return _Patients(*(getattr(self, f.name)[:n] for f in fields(self)))


@dataclass
class _Visits:
    patient: np.ndarray  # patient index
    arrival: np.ndarray  # int64 us
    age: np.ndarray
    problem: np.ndarray  # index into PROBLEMS
    severity: np.ndarray
    probability: np.ndarray  # true P(admitted within 7 days)
    admitted: np.ndarray  # bool: the outcome


def _draw_patients(n: int, rng: np.random.Generator) -> _Patients:
    """Patient-level latents: age, sex, frailty, chronic conditions and the number of ED visits."""
    age = 18.0 + 77.0 * rng.beta(1.5, 1.7, n)
    female = rng.random(n) < 0.53
    frailty = (0.035 * (age - 55.0) + rng.standard_normal(n)) / 1.2
    has = np.zeros((n, len(CONDITIONS)), dtype=bool)
    for c, cond in enumerate(CONDITIONS):
        logit = cond.prevalence_logit + cond.age_slope * (age - 55.0) / 10.0
        logit = logit + cond.frailty_slope * frailty
        for parent, boost in cond.parents:
            logit = logit + boost * has[:, CONDITION_INDEX[parent]]
        has[:, c] = rng.random(n) < _sigmoid(logit)
    documented = has & (rng.random(has.shape) < _DOCUMENTED)
    # Frail patients come back: 1 + Poisson(rate growing with frailty), mean about 1.7.
    rate = 0.55 * np.exp(0.55 * frailty + 0.1 * has.sum(axis=1))
    n_visits = np.minimum(1 + rng.poisson(rate), MAX_VISITS_PER_PATIENT)
    return _Patients(age, female, frailty, has, documented, n_visits)


def _draw_visits(patients: _Patients, rng: np.random.Generator) -> _Visits:
    """ED visits of all patients (grouped by patient, in time order), their problem and outcome."""
    patient, arrival, age = _visit_times(patients, rng)
    has = patients.has[patient].astype(np.float64)  # (V, C)
    frailty = patients.frailty[patient]
    problem, severity = _draw_problem_and_severity(has, age, frailty, rng)
    admit_weight = np.array([c.admit_weight for c in CONDITIONS])
    admit_effect = np.array([p.admit_effect for p in PROBLEMS])
    logit = (
        _ADMIT_INTERCEPT
        + _ADMIT_FRAILTY * frailty
        + _ADMIT_AGE_PER_DECADE * (age - 55.0) / 10.0
        + has @ admit_weight
        + admit_effect[problem]
        + _ADMIT_SEVERITY * severity
    )
    probability = _sigmoid(logit)
    admitted = rng.random(len(patient)) < probability
    return _Visits(patient, arrival, age, problem, severity, probability, admitted)


def _draw_problem_and_severity(
    has: np.ndarray, age: np.ndarray, frailty: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each visit's acute problem (index into PROBLEMS: more likely given the conditions in
    `has`, (V, C), and with age) and its severity latent (the problem's mean, frailty, noise)."""
    boosts = np.zeros((len(CONDITIONS), len(PROBLEMS)))
    for p, prob in enumerate(PROBLEMS):
        for cond, boost in prob.condition_boosts:
            boosts[CONDITION_INDEX[cond], p] = boost
    base = np.array([p.base_logit for p in PROBLEMS])
    age_slope = np.array([p.age_slope for p in PROBLEMS])
    logits = base + has @ boosts + np.outer((age - 55.0) / 10.0, age_slope)  # (V, P)
    problem = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    severity_mean = np.array([p.severity_mean for p in PROBLEMS])
    severity = severity_mean[problem] + 0.25 * frailty + rng.standard_normal(len(has))
    return problem, severity


def _visit_times(
    patients: _Patients, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ED visits' patient index, arrival (us) and age, grouped by patient in time order."""
    counts = patients.n_visits
    patient = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    rank = np.arange(len(patient)) - first[patient]
    # Sorted uniform days in a shortened window, then spread by the minimum gap.
    span = ARRIVAL_DAYS - (counts - 1) * VISIT_GAP_DAYS
    u = rng.random(len(patient)) * span[patient]
    u = u[np.lexsort((u, patient))]
    day = np.floor(u).astype(np.int64) + rank * VISIT_GAP_DAYS
    hour = rng.choice(24, size=len(patient), p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    second = hour * 3600 + rng.integers(0, 3600, len(patient))
    arrival = ARRIVAL_START + day * _DAY + second * _SECOND
    age = patients.age[patient] + (arrival - arrival[first][patient]) / (_YEAR_DAYS * _DAY)
    return patient, arrival, age


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _minutes(x: np.ndarray) -> np.ndarray:
    """Durations in minutes as int64 microseconds, rounded to the second."""
    return np.round(np.asarray(x) * 60.0).astype(np.int64) * _SECOND


def _lab_values(lab: Lab, state: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Chronic-state lab values (before any acute effect), one per row of `state` (n, C): how
    far each condition moves the value, 1 = its full factor (version 1: has it or not)."""
    log_value = np.full(len(state), np.log(lab.median))
    for cond, factor in lab.condition_factors:
        log_value += np.log(factor) * state[:, CONDITION_INDEX[cond]]
    return np.exp(log_value + lab.log_sd * rng.standard_normal(len(state)))


def _add_history(
    events: _EventBuffer, patients: _Patients, visits: _Visits, rng: np.random.Generator
) -> None:
    """Outpatient encounters from a year before the first ED visit to the last one."""
    n = len(patients.age)
    first = np.cumsum(patients.n_visits) - patients.n_visits
    last = first + patients.n_visits - 1
    start_day = (visits.arrival[first] - ARRIVAL_START) // _DAY - HISTORY_DAYS
    span_days = (visits.arrival[last] - ARRIVAL_START) // _DAY - start_day  # >= 365
    rate = (_ENCOUNTER_RATE + _ENCOUNTER_RATE_PER_CONDITION * patients.has.sum(axis=1)) * np.exp(
        0.3 * patients.frailty
    )
    n_enc = rng.poisson(rate * span_days / _YEAR_DAYS)
    pat = np.repeat(np.arange(n), n_enc)
    day = start_day[pat] + np.floor(rng.random(len(pat)) * span_days[pat]).astype(np.int64)
    # Office hours: 08:00 to 17:00.
    time = ARRIVAL_START + day * _DAY + 8 * _HOUR + _minutes(rng.random(len(pat)) * 540)
    kinds = ("ENC//PRIMARY_CARE", "ENC//SPECIALTY", "ENC//TELEHEALTH")
    events.add(pat, time, events.code_ids(kinds)[rng.choice(3, len(pat), p=[0.55, 0.3, 0.15])])

    lab_state = patients.has[pat]  # (encounters, C): version 1's conditions are static
    for c, cond in enumerate(CONDITIONS):
        coded = patients.documented[pat, c] & (rng.random(len(pat)) < _RECORDED_PER_ENCOUNTER)
        idx = np.flatnonzero(coded)
        dx_ids = _add_condition_codes(events, cond, pat, time, idx, lab_state, 0.4, rng)
        # Rule-out diagnoses: a condition code on a patient without the condition.
        rule_out = np.flatnonzero(~patients.has[pat, c] & (rng.random(len(pat)) < _RULE_OUT_DX))
        events.add(pat[rule_out], time[rule_out], dx_ids[rng.integers(0, 2, len(rule_out))])

    routine = np.flatnonzero(rng.random(len(pat)) < 0.15)
    result = time[routine] + _minutes(60 + 120 * rng.random(len(routine)))
    for name in ROUTINE_OUTPATIENT_LABS:
        lab = LABS[LAB_INDEX[name]]
        values = _lab_values(lab, patients.has[pat[routine]], rng).round(lab.decimals)
        events.add(pat[routine], result, f"LAB//{lab.name}", values)

    noise = np.repeat(np.arange(len(pat)), rng.poisson(_NOISE_PER_ENCOUNTER, len(pat)))
    vocabulary = noise_codes()
    noise_ids = events.code_ids(vocabulary)
    drawn = rng.choice(len(vocabulary), len(noise), p=zipf_weights(len(vocabulary), 1.0))
    events.add(pat[noise], time[noise] + 10 * _MINUTE, noise_ids[drawn])


def _add_condition_codes(
    events: _EventBuffer,
    cond: Condition,
    pat: np.ndarray,
    time: np.ndarray,
    idx: np.ndarray,
    lab_state: np.ndarray,
    lab_share: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One condition coded at the encounters `idx` of (pat, time): its diagnoses (a second one
    at a quarter of them), a home medication at half, each of its labs at `lab_share`, valued
    from `lab_state` (rows of (pat, time), see `_lab_values`). Returns the diagnoses' code ids."""
    dx = np.repeat(idx, 1 + (rng.random(len(idx)) < 0.25))
    dx_ids = events.code_ids(cond.dx_family)
    dx_p = family_weights(len(cond.dx_codes), len(DX_EXTENSIONS))
    events.add(pat[dx], time[dx], dx_ids[rng.choice(len(dx_ids), len(dx), p=dx_p)])
    med = idx[rng.random(len(idx)) < 0.5]
    med_ids = events.code_ids(cond.med_family)
    med_p = family_weights(len(cond.med_codes), len(MED_FORMS))
    drawn = med_ids[rng.choice(len(med_ids), len(med), p=med_p)]
    events.add(pat[med], time[med] + 5 * _MINUTE, drawn)
    for name in cond.labs:
        lab = LABS[LAB_INDEX[name]]
        ordered = idx[rng.random(len(idx)) < lab_share]
        values = _lab_values(lab, lab_state[ordered], rng).round(lab.decimals)
        result = time[ordered] + _minutes(60 + 120 * rng.random(len(ordered)))
        events.add(pat[ordered], result, f"LAB//{lab.name}", values)
    return dx_ids


def _add_ed_visits(
    events: _EventBuffer, patients: _Patients, visits: _Visits, rng: np.random.Generator
) -> None:
    """The current visit: arrival, complaint, triage, vitals, labs and ED medications.

    The steps run in this order because each draws from `rng`: reordering them changes the cohort.
    """
    _add_arrival_and_complaint(events, visits, rng)
    _add_triage(events, visits, rng)
    _add_vitals(events, patients.has[visits.patient], visits, rng)
    _add_ed_labs(events, patients.has[visits.patient], visits, rng)
    _add_ed_medications(events, visits, rng)


def _add_arrival_and_complaint(
    events: _EventBuffer, visits: _Visits, rng: np.random.Generator
) -> None:
    """ENC//ED at arrival, then a chief complaint of the visit's problem within 3 minutes."""
    pat, arrival, problem = visits.patient, visits.arrival, visits.problem
    events.add(pat, arrival, "ENC//ED")
    for p, prob in enumerate(PROBLEMS):
        idx = np.flatnonzero(problem == p)
        codes = events.code_ids([c for c, _ in prob.complaints])
        weights = np.array([w for _, w in prob.complaints])
        drawn = rng.choice(len(codes), len(idx), p=weights / weights.sum())
        events.add(pat[idx], arrival[idx] + _minutes(3 * rng.random(len(idx))), codes[drawn])


def _add_triage(
    events: _EventBuffer,
    visits: _Visits,
    rng: np.random.Generator,
    noise: float = 0.45,
    missing: float = 0.0,
) -> None:
    """The triage acuity (ESI 1 = most urgent .. 5), lower when the visit is more severe, give
    or take `noise`; not recorded at a `missing` share of visits (drawn only when > 0)."""
    v, s = len(visits.arrival), visits.severity
    esi = np.clip(np.round(3.0 - 0.7 * s + noise * rng.standard_normal(v)), 1, 5)
    time = visits.arrival + _minutes(1 + 7 * rng.random(v))
    kept = np.ones(v, dtype=bool) if missing == 0 else rng.random(v) >= missing
    events.add(visits.patient[kept], time[kept], "TRIAGE//ESI", esi[kept])


def _add_vitals(
    events: _EventBuffer,
    has: np.ndarray,
    visits: _Visits,
    rng: np.random.Generator,
    missing: dict[str, float] | None = None,
) -> None:
    """One set of vital signs per visit, moved by severity, the problem and the chronic
    conditions the patient has at the visit (`has`, (V, C) bool); each vital not recorded at
    a visit with probability `missing[name]` (none missing when None)."""
    v = len(visits.arrival)
    pat, arrival, s, problem = visits.patient, visits.arrival, visits.severity, visits.problem
    cond = {c.name: has[:, i] for i, c in enumerate(CONDITIONS)}
    infectious = np.array([p.infectious for p in PROBLEMS])[problem]
    respiratory = np.array([p.respiratory for p in PROBLEMS])[problem]
    noise = rng.standard_normal((5, v))
    heart_rate = (
        82 + 11 * s + 10 * infectious + 18 * (problem == problem_index("syncope_arrhythmia"))
    )
    sbp = 132 + 10 * cond["hypertension"] - 10 * s - 12 * (problem == problem_index("gi_bleed"))
    resp_rate = 16 + 2.5 * s + 4 * respiratory
    spo2 = 97.5 - 1.5 * s - 3 * respiratory - 2 * cond["copd"]
    temp = 36.8 + infectious * (1.0 + 0.3 * s)
    vitals = {
        "HR": np.clip(np.round(heart_rate + 10 * noise[0]), 35, 200),
        "SBP": np.clip(np.round(sbp + 18 * noise[1]), 60, 240),
        "RR": np.clip(np.round(resp_rate + 2.5 * noise[2]), 8, 50),
        "SPO2": np.clip(np.round(spo2 + 1.5 * noise[3]), 70, 100),
        "TEMP": np.clip(np.round(temp + 0.35 * noise[4], 1), 34.0, 42.0),
    }
    vitals_time = arrival + _minutes(2 + 13 * rng.random(v))
    for name, values in vitals.items():
        kept = np.ones(v, dtype=bool) if missing is None else rng.random(v) >= missing[name]
        events.add(pat[kept], vitals_time[kept], f"VITAL//{name}", values[kept].astype(np.float64))


def _add_ed_labs(
    events: _EventBuffer, state: np.ndarray, visits: _Visits, rng: np.random.Generator
) -> None:
    """ED labs: ordered by problem (and more when severe), resulted after a turnaround, so a share
    of them lands after the 1-hour prediction time; chronic values from `state` (V, C), the
    conditions' effects at each visit (see `_lab_values`)."""
    v = len(visits.arrival)
    pat, s, problem = visits.patient, visits.severity, visits.problem
    collected = visits.arrival + _minutes(5 + 30 * rng.random(v))
    basic = np.array([dict(p.lab_orders).get("BASIC", 0.0) for p in PROBLEMS])[problem]
    basic_ordered = rng.random(v) < basic + 0.1 * s
    positive_s = np.maximum(s, 0.0)
    for lab in LABS:
        if lab.name not in BASIC_PANEL and not any(
            dict(p.lab_orders).get(lab.name) for p in PROBLEMS
        ):
            continue  # outpatient-only
        if lab.name in BASIC_PANEL:
            ordered = basic_ordered
        else:
            prob = np.array([dict(p.lab_orders).get(lab.name, 0.02) for p in PROBLEMS])[problem]
            ordered = rng.random(v) < prob + 0.05 * s
        idx = np.flatnonzero(ordered)
        acute = np.array([dict(p.lab_factors).get(lab.name, 1.0) for p in PROBLEMS])[problem[idx]]
        acute = acute * np.exp(SEVERITY_LAB_COEF.get(lab.name, 0.0) * positive_s[idx])
        values = (_lab_values(lab, state[idx], rng) * acute).round(lab.decimals)
        turnaround = lab.turnaround_min * np.exp(0.35 * rng.standard_normal(len(idx)))
        events.add(pat[idx], collected[idx] + _minutes(turnaround), f"LAB//{lab.name}", values)


def _add_ed_medications(events: _EventBuffer, visits: _Visits, rng: np.random.Generator) -> None:
    """ED medications of the visit's problem: more of them when the visit is more severe."""
    v = len(visits.arrival)
    pat, arrival, problem = visits.patient, visits.arrival, visits.problem
    med_rate = np.array([p.med_rate for p in PROBLEMS])[problem] * np.exp(0.3 * visits.severity)
    med_visit = np.repeat(np.arange(v), rng.poisson(med_rate))
    for p, prob in enumerate(PROBLEMS):
        idx = med_visit[problem[med_visit] == p]
        codes = events.code_ids(prob.ed_meds)
        drawn = rng.choice(len(codes), len(idx), p=zipf_weights(len(codes), 1.0))
        given = arrival[idx] + _minutes(15 + 60 * np.exp(0.6 * rng.standard_normal(len(idx))))
        events.add(pat[idx], given, codes[drawn])


def _add_outcomes(
    events: _EventBuffer, patients: _Patients, visits: _Visits, rng: np.random.Generator
) -> None:
    """Leak events after the prediction time: disposition, admission, discharge diagnoses.

    Timeline of an admitted visit (85%): arrival, DISP//ADMIT after 1.5 h + a few hours, then
    ADMIT//INPATIENT; of the other admissions: DISP//DISCHARGE, ENC//ED_RETURN within 1-6.5 days,
    then ADMIT//INPATIENT. Inpatient discharge diagnoses are recorded at the end of the stay.
    """
    v = len(visits.arrival)
    pat, arrival, admitted = visits.patient, visits.arrival, visits.admitted
    from_ed = admitted & (rng.random(v) < _ADMIT_FROM_ED)
    # Dispositions strictly after the prediction time (arrival + 1 h).
    delay = np.where(from_ed, 90.0, 75.0) + np.minimum(
        120.0 * np.exp(0.5 * rng.standard_normal(v)), 600
    )
    disposition = arrival + _minutes(delay)
    events.add(pat, disposition, events.code_ids(["DISP//DISCHARGE", "DISP//ADMIT"])[from_ed * 1])

    returned = np.flatnonzero(admitted & ~from_ed)
    back = arrival[returned] + _minutes(60 * 24 * (1.0 + 5.5 * rng.random(len(returned))))
    events.add(pat[returned], back, "ENC//ED_RETURN")

    idx = np.flatnonzero(admitted)
    admit_time = np.empty(v, dtype=np.int64)
    admit_time[from_ed] = disposition[from_ed] + _minutes(30 + 150 * rng.random(from_ed.sum()))
    admit_time[returned] = back + _minutes(120 + 240 * rng.random(len(returned)))
    events.add(pat[idx], admit_time[idx], "ADMIT//INPATIENT")

    stay_days = np.clip(3.0 * np.exp(0.6 * rng.standard_normal(len(idx))), 0.5, 6.0)
    discharge = admit_time[idx] + _minutes(stay_days * 24 * 60)
    n_dx = 1 + (rng.random(len(idx)) < 0.4)
    for p, prob in enumerate(PROBLEMS):
        rows = np.repeat(idx, n_dx)
        rows = rows[visits.problem[rows] == p]
        codes = events.code_ids(prob.discharge_dx)
        drawn = rng.choice(len(codes), len(rows), p=zipf_weights(len(codes)))
        events.add(pat[rows], discharge[np.searchsorted(idx, rows)], codes[drawn])
    # Chronic conditions are coded at discharge too (documented or not: the stay finds them).
    for c, cond in enumerate(CONDITIONS):
        coded = np.flatnonzero(patients.has[pat[idx], c] & (rng.random(len(idx)) < 0.6))
        codes = events.code_ids(cond.dx_family)
        weights = family_weights(len(cond.dx_codes), len(DX_EXTENSIONS))
        drawn = rng.choice(len(codes), len(coded), p=weights)
        events.add(pat[idx[coded]], discharge[coded], codes[drawn])


def generate_cohort_v1(n_visits: int, *, labeled_frac: float, seed: int) -> Cohort:
    """Cohort version 1 with exactly `n_visits` visits (arguments checked by `generate_cohort`).

    Patients are drawn until they have `n_visits` ED visits in total; the last patient's later
    visits are dropped from `visits` (their events stay). Deterministic for a seed.

    The model: a patient has an age, a sex, a frailty latent and chronic `CONDITIONS` whose
    prevalence grows with age, frailty and comorbid conditions; frail patients visit more often
    (1 + Poisson visits). Conditions show only in the history: outpatient encounters code them
    with diagnoses and home medications drawn from each condition's family of dozens of
    synonymous codes, and labs, not always (partial observability), among a long tail of
    unrelated codes; 12 named conditions also shape the acute problem and ED labs, 36 minor ones
    only the risk. Each visit draws an acute `PROBLEMS` entry (more likely
    given matching conditions) and a severity latent, which drive the complaint, triage, vitals,
    labs and ED medications. The admission logit adds frailty, age, condition weights, the
    problem's effect and severity; the label is Bernoulli(sigmoid(logit)), the oracle that p.
    About 48 events per visit, about a quarter of the visits admitted.
    """
    rng = np.random.default_rng(seed)

    # Every patient has >= 1 visit, so n_visits candidates always suffice.
    patients = _draw_patients(n_visits, rng)
    n_patients = int(np.searchsorted(np.cumsum(patients.n_visits), n_visits)) + 1
    patients = patients.head(n_patients)
    visits = _draw_visits(patients, rng)

    events = _EventBuffer()
    _add_history(events, patients, visits, rng)
    _add_ed_visits(events, patients, visits, rng)
    _add_outcomes(events, patients, visits, rng)
    patient_ids = np.arange(1, n_patients + 1, dtype=np.int64)
    events_frame = events.to_frame(patient_ids)

    return _visit_frames(patients, visits, events_frame, n_visits, labeled_frac, rng)


def _visit_frames(
    patients: _Patients,
    visits: _Visits,
    events_frame: pl.DataFrame,
    n_visits: int,
    labeled_frac: float,
    rng: np.random.Generator,
) -> Cohort:
    """The cohort's frames from the drawn visits: the first `n_visits` (grouped by patient, in
    time order), numbered by arrival; a `labeled_frac` of them labeled at random."""
    patient_ids = np.arange(1, len(patients.age) + 1, dtype=np.int64)
    kept = np.argsort(visits.arrival[:n_visits], kind="stable")  # visit_id i + 1 is visit kept[i]
    visit_id = np.arange(1, n_visits + 1, dtype=np.int64)
    visits_frame = pl.DataFrame(
        {
            "visit_id": visit_id,
            "patient_id": patient_ids[visits.patient[kept]],
            "arrival_time": pl.Series(visits.arrival[kept]).cast(pl.Datetime("us")),
            "age": visits.age[kept].round(2),
            "sex": np.where(patients.female[visits.patient[kept]], "F", "M"),
        }
    ).with_columns(
        prediction_time=pl.col("arrival_time") + pl.duration(microseconds=PREDICTION_OFFSET)
    )
    visits_frame = visits_frame.select([c.name for c in schema.VISITS.columns if c.name != "split"])
    oracle = pl.DataFrame({"visit_id": visit_id, "admission_probability": visits.probability[kept]})
    n_labeled = int(round(labeled_frac * n_visits))
    labeled = np.sort(rng.choice(n_visits, n_labeled, replace=False))
    labels = pl.DataFrame(
        {"visit_id": visit_id[labeled], "label": visits.admitted[kept][labeled]},
        schema={"visit_id": pl.Int64, "label": pl.Boolean},
    )
    latent = pl.DataFrame(
        {"patient_id": patient_ids, "frailty": patients.frailty}
        | {c.name: patients.has[:, i] for i, c in enumerate(CONDITIONS)}
    )
    return Cohort(
        visits=visits_frame, events=events_frame, labels=labels, oracle=oracle, latent=latent
    )
