"""Cohort version 2: the synthetic ED cohort calibrated to published properties of real ED data
(docs/cohort.md has the calibration table and its sources).

What version 1 lacked and version 2 draws: conditions with an onset (codes only after it) and a
pace of progression that moves labs over time (a creatinine that rises across outpatient visits)
and weighs in the admission risk, so the latest values matter more than old ones; inpatient stays
in the history, a recent one raising the risk far more than an old one; patients new to the
hospital, with no local history; thousands of rare codes (about 96,000 in the long tail), minor
conditions spread over chapters and shared ingredients; vitals and triage not always recorded;
admissions at other hospitals that the data never shows (label noise beyond the Bernoulli draw).
Deterministic for a seed; the acute part of a visit (complaint, triage, vitals, ED labs and
medications) is drawn as in version 1.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ehr_ssl.data.synthetic.catalog import (
    BASIC_PANEL,
    DX_EXTENSIONS,
    LAB_INDEX,
    LABS,
    family_weights,
    zipf_weights,
)
from ehr_ssl.data.synthetic.catalog_v2 import CONDITIONS_V2, PROBLEMS_V2, tail_codes, tail_weights
from ehr_ssl.data.synthetic.simulation import (
    _ADMIT_AGE_PER_DECADE,
    _ADMIT_FRAILTY,
    _DAY,
    _HOUR,
    _MINUTE,
    _RECORDED_PER_ENCOUNTER,
    _RULE_OUT_DX,
    _YEAR_DAYS,
    Cohort,
    _add_arrival_and_complaint,
    _add_condition_codes,
    _add_ed_labs,
    _add_ed_medications,
    _add_triage,
    _add_vitals,
    _draw_patients,
    _draw_problem_and_severity,
    _EventBuffer,
    _lab_values,
    _minutes,
    _Patients,
    _sigmoid,
    _visit_frames,
    _visit_times,
    _Visits,
)

_YEAR = int(_YEAR_DAYS * _DAY)
_Times = tuple[np.ndarray, np.ndarray, np.ndarray]  # visits' patient index, arrival (us), age
_Stays = tuple[np.ndarray, np.ndarray, np.ndarray]  # patient index, admission, discharge (us)
# Calibrated to docs/cohort.md's targets (admission share 0.30-0.47) before any SSL result.
_ADMIT_INTERCEPT = -1.9
_ADMIT_SEVERITY = 0.55  # version 1: 0.4; the acuity alone reads 0.71 AUROC in MIMIC-IV-ED
_CONDITION_SCALE = 1.4  # a condition's admission weight at full progression, times this
_RECENT_STAY = 1.3  # logit added right after an inpatient discharge, decaying over _RECENT_DAYS
_RECENT_DAYS = 30.0
_ELSEWHERE = 0.3  # P(a patient discharged from the ED is admitted at another hospital on return)
_LOCAL_HISTORY = 0.6  # P(a patient has records at this hospital before the first ED visit)
_LOOKBACK_YEARS = (1.0, 6.0)  # how far back the local history goes, uniform
_PREEXISTING = 0.75  # P(a condition began before the first ED visit); else it begins within
_ONSET_YEARS_BEFORE = 10.0  # pre-existing onsets: uniform over this many years before it
_PACE_MEDIAN, _PACE_SD = 0.3, 0.7  # progression per year: lognormal
# The history: outpatient encounters, their codes, and stays.
_ENCOUNTER_RATE = 1.8
_ENCOUNTER_RATE_PER_CONDITION = 0.9
_PANEL_PER_ENCOUNTER = 0.35  # P(a basic panel, CBC + BMP, at an encounter)
_TAIL_PER_ENCOUNTER = 5.0  # mean number of long-tail codes per encounter
_STAY_RATE = 0.06  # inpatient stays per year, before frailty and conditions
# Not recorded at a visit: each vital, and the triage acuity.
_VITALS_MISSING = {"HR": 0.02, "SBP": 0.03, "RR": 0.05, "SPO2": 0.05, "TEMP": 0.12}
_ESI_MISSING = 0.02
_ESI_NOISE = 0.3  # version 1: 0.45


@dataclass
class _Course:
    """When each condition began and how fast it progresses, per patient."""

    onset: np.ndarray  # (n, C) int64 us; meaningful where the patient has the condition
    pace: np.ndarray  # (n, C) progression per year
    history_start: np.ndarray  # (n,) int64 us: the first day the hospital has records

    def active(self, has: np.ndarray, patient: np.ndarray, time: np.ndarray) -> np.ndarray:
        """(m, C) bool: the condition has begun by `time` (rows: patient, time)."""
        return has[patient] & (self.onset[patient] <= time[:, None])

    def state(self, has: np.ndarray, patient: np.ndarray, time: np.ndarray) -> np.ndarray:
        """(m, C) in [0, 1): how far each condition moves labs and risk at `time`, 0 before its
        onset, 0.3 at onset, rising towards 1 at the patient's pace."""
        years = np.maximum(time[:, None] - self.onset[patient], 0) / _YEAR
        progress = 1.0 - np.exp(-self.pace[patient] * years)
        return self.active(has, patient, time) * (0.3 + 0.7 * progress)


def _draw_course(patients: _Patients, arrival: np.ndarray, rng: np.random.Generator) -> _Course:
    """Onsets, paces and the start of each patient's local records, given the visit times."""
    n, c = patients.has.shape
    first = np.cumsum(patients.n_visits) - patients.n_visits
    first_arrival = arrival[first]
    last_arrival = arrival[first + patients.n_visits - 1]
    before = first_arrival[:, None] - (rng.random((n, c)) * _ONSET_YEARS_BEFORE * _YEAR)
    span = (last_arrival - first_arrival)[:, None] + _YEAR  # from a year before the first visit
    within = first_arrival[:, None] - _YEAR + (rng.random((n, c)) * span)
    onset = np.where(rng.random((n, c)) < _PREEXISTING, before, within).astype(np.int64)
    pace = _PACE_MEDIAN * np.exp(_PACE_SD * rng.standard_normal((n, c)))
    lookback = rng.uniform(*_LOOKBACK_YEARS, n) * _YEAR
    local = rng.random(n) < _LOCAL_HISTORY
    start = np.where(local, first_arrival - lookback, first_arrival).astype(np.int64)
    return _Course(onset, pace, (start // _DAY) * _DAY)


def _encounters(
    patients: _Patients, course: _Course, arrival: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Outpatient encounters from each patient's first record to the last ED visit: (patient
    index, time in us), on weekdays' office hours."""
    n = len(patients.age)
    last = np.cumsum(patients.n_visits) - 1
    span_days = np.maximum((arrival[last] - course.history_start) // _DAY, 1)
    rate = (_ENCOUNTER_RATE + _ENCOUNTER_RATE_PER_CONDITION * patients.has.sum(axis=1)) * np.exp(
        0.3 * patients.frailty
    )
    pat = np.repeat(np.arange(n), rng.poisson(rate * span_days / _YEAR_DAYS))
    day = np.floor(rng.random(len(pat)) * span_days[pat]).astype(np.int64)
    time = course.history_start[pat] + day * _DAY + 8 * _HOUR + _minutes(rng.random(len(pat)) * 540)
    return pat, time


def _add_coded_conditions(
    events: _EventBuffer,
    patients: _Patients,
    course: _Course,
    pat: np.ndarray,
    time: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Diagnoses, home medications and labs of the conditions active at each encounter."""
    active = course.active(patients.documented, pat, time)
    state = course.state(patients.has, pat, time)
    for c, cond in enumerate(CONDITIONS_V2):
        idx = np.flatnonzero(active[:, c] & (rng.random(len(pat)) < _RECORDED_PER_ENCOUNTER))
        dx_ids = _add_condition_codes(events, cond, pat, time, idx, state, 0.5, rng)
        rule_out = np.flatnonzero(~patients.has[pat, c] & (rng.random(len(pat)) < _RULE_OUT_DX))
        events.add(pat[rule_out], time[rule_out], dx_ids[rng.integers(0, 2, len(rule_out))])
    panel = np.flatnonzero(rng.random(len(pat)) < _PANEL_PER_ENCOUNTER)
    result = time[panel] + _minutes(60 + 120 * rng.random(len(panel)))
    for name in BASIC_PANEL:
        lab = LABS[LAB_INDEX[name]]
        values = _lab_values(lab, state[panel], rng).round(lab.decimals)
        events.add(pat[panel], result, f"LAB//{lab.name}", values)


def _add_tail(
    events: _EventBuffer, pat: np.ndarray, time: np.ndarray, rate: float, rng: np.random.Generator
) -> None:
    """Long-tail codes, Poisson(`rate`) per row of (pat, time), 10 minutes after it."""
    rows = np.repeat(np.arange(len(pat)), rng.poisson(rate, len(pat)))
    vocabulary = tail_codes()
    drawn = rng.choice(len(vocabulary), len(rows), p=tail_weights(len(vocabulary)))
    events.add(pat[rows], time[rows] + 10 * _MINUTE, events.code_ids(vocabulary)[drawn])


def _history_stays(
    patients: _Patients, course: _Course, times: _Times, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inpatient stays not from an ED visit of the data (elective, or through another door):
    (patient index, admission, discharge in us). None begins within 8 days after an ED arrival
    or ends within 7 days before one, so a visit's 7-day window holds only its own admission."""
    n = len(patients.age)
    visit_patient, arrival, _ = times
    last = np.cumsum(patients.n_visits) - 1
    years = np.maximum(arrival[last] - course.history_start, _DAY) / _YEAR
    rate = _STAY_RATE * np.exp(0.6 * patients.frailty + 0.25 * patients.has.sum(axis=1))
    pat = np.repeat(np.arange(n), rng.poisson(rate * years))
    admit = course.history_start[pat] + (rng.random(len(pat)) * years[pat] * _YEAR).astype(np.int64)
    discharge = admit + _minutes(
        24 * 60 * np.clip(3.0 * np.exp(0.6 * rng.standard_normal(len(pat))), 1, 12)
    )
    previous = _last_before(visit_patient, arrival, pat, admit + 1)
    following = -_last_before(visit_patient, -arrival, pat, -admit)
    keep = (admit - previous > 8 * _DAY) & (following - discharge > 7 * _DAY)
    return pat[keep], admit[keep], discharge[keep]


def _last_before(
    pat: np.ndarray, time: np.ndarray, patient: np.ndarray, at: np.ndarray
) -> np.ndarray:
    """For each query (patient, at): the latest `time` among rows of `pat` equal to that
    patient with time < at; a time about 146,000 years in the past where there is none."""
    none = np.iinfo(np.int64).min // 4
    who = np.concatenate([pat, patient])
    when = np.concatenate([time, at])
    is_query = np.concatenate([np.zeros(len(pat), bool), np.ones(len(patient), bool)])
    order = np.lexsort((~is_query, when, who))  # at equal times a query comes first: strict <
    row = np.where(is_query[order], -1, np.arange(len(order)))
    latest = np.maximum.accumulate(row)  # the last row before each position that is no query
    found = (latest >= 0) & (who[order][np.maximum(latest, 0)] == who[order])
    answer = np.where(found, when[order][np.maximum(latest, 0)], none)
    result = np.empty(len(who), np.int64)
    result[order] = answer
    return result[len(pat) :]


@dataclass
class _Outcomes:
    """Each visit's admission, whether the data sees it, and its timeline."""

    admitted: np.ndarray  # bool: admitted within 7 days, at this hospital or another
    recorded: np.ndarray  # bool: admitted at this hospital: the label
    from_ed: np.ndarray  # bool: admitted from the ED visit itself
    disposition: np.ndarray  # int64 us: the ED disposition
    back: np.ndarray  # int64 us: the return to an ED (where admitted, not from the ED)
    admit: np.ndarray  # int64 us: the admission (where admitted)
    discharge: np.ndarray  # int64 us: the inpatient discharge (where admitted)

    @classmethod
    def empty(cls, v: int) -> _Outcomes:
        kinds = {"admitted": bool, "recorded": bool, "from_ed": bool}
        return cls(**{f.name: np.zeros(v, kinds.get(f.name, np.int64)) for f in fields(cls)})

    def put(self, idx: np.ndarray, other: _Outcomes) -> None:
        for f in fields(self):
            getattr(self, f.name)[idx] = getattr(other, f.name)


def _draw_outcomes(logit: np.ndarray, arrival: np.ndarray, rng: np.random.Generator) -> _Outcomes:
    """Admissions of some visits and their timeline, as version 1 draws them (85% from the ED,
    the rest after a return within 1-6.5 days), of which a share of the returns is admitted at
    another hospital and never seen."""
    v = len(logit)
    admitted = rng.random(v) < _sigmoid(logit)
    from_ed = admitted & (rng.random(v) < 0.85)
    elsewhere = admitted & ~from_ed & (rng.random(v) < _ELSEWHERE)
    wait = np.minimum(120.0 * np.exp(0.5 * rng.standard_normal(v)), 600)
    disposition = arrival + _minutes(np.where(from_ed, 90.0, 75.0) + wait)
    back = arrival + _minutes(60 * 24 * (1.0 + 5.5 * rng.random(v)))
    admit = np.where(
        from_ed,
        disposition + _minutes(30 + 150 * rng.random(v)),
        back + _minutes(120 + 240 * rng.random(v)),
    )
    stay = _minutes(24 * 60 * np.clip(3.0 * np.exp(0.6 * rng.standard_normal(v)), 0.5, 6.0))
    recorded = admitted & ~elsewhere
    return _Outcomes(admitted, recorded, from_ed, disposition, back, admit, admit + stay)


def _admission_logit(
    patients: _Patients, course: _Course, times: _Times, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each visit's acute problem, severity and admission logit before the recency of stays."""
    patient, arrival, age = times
    active = course.active(patients.has, patient, arrival).astype(np.float64)
    frailty = patients.frailty[patient]
    problem, severity = _draw_problem_and_severity(active, age, frailty, rng)
    weights = np.array([c.admit_weight for c in CONDITIONS_V2])
    logit = (
        _ADMIT_INTERCEPT
        + _ADMIT_FRAILTY * frailty
        + _ADMIT_AGE_PER_DECADE * (age - 55.0) / 10.0
        + _CONDITION_SCALE * course.state(patients.has, patient, arrival) @ weights
        + np.array([p.admit_effect for p in PROBLEMS_V2])[problem]
        + _ADMIT_SEVERITY * severity
    )
    return problem, severity, logit


def _draw_visits_v2(
    patients: _Patients, course: _Course, times: _Times, stays: _Stays, rng: np.random.Generator
) -> tuple[_Visits, _Outcomes]:
    """Each visit's problem, severity and outcome. Visits of one rank at a time, since a visit's
    risk depends on how recently the patient left hospital, earlier visits' stays included."""
    patient, arrival, age = times
    problem, severity, logit = _admission_logit(patients, course, times, rng)
    last_stay = _last_before(stays[0], stays[2], patient, arrival)
    first = np.cumsum(patients.n_visits) - patients.n_visits
    rank = np.arange(len(patient)) - first[patient]
    outcomes = _Outcomes.empty(len(patient))
    last_ed = np.full(len(patients.age), np.iinfo(np.int64).min // 4)
    probability = np.zeros(len(patient))
    for r in range(int(rank.max()) + 1):
        idx = np.flatnonzero(rank == r)
        since = arrival[idx] - np.maximum(last_stay[idx], last_ed[patient[idx]])
        full = logit[idx] + _RECENT_STAY * np.exp(-since / _DAY / _RECENT_DAYS)
        probability[idx] = _sigmoid(full)
        drawn = _draw_outcomes(full, arrival[idx], rng)
        outcomes.put(idx, drawn)
        last_ed[patient[idx[drawn.admitted]]] = drawn.discharge[drawn.admitted]
    # The oracle is the chance of the label: an admission this hospital records.
    recorded_probability = probability * (1.0 - 0.15 * _ELSEWHERE)
    visits = _Visits(
        patient, arrival, age, problem, severity, recorded_probability, outcomes.recorded
    )
    return visits, outcomes


def _add_outcomes_v2(
    events: _EventBuffer,
    patients: _Patients,
    course: _Course,
    visits: _Visits,
    outcomes: _Outcomes,
    rng: np.random.Generator,
) -> None:
    """Events after the prediction time, where this hospital records them: the disposition,
    the return, the admission and the discharge diagnoses (problem's and conditions')."""
    pat = visits.patient
    events.add(
        pat,
        outcomes.disposition,
        events.code_ids(["DISP//DISCHARGE", "DISP//ADMIT"])[outcomes.from_ed * 1],
    )
    # A return admitted elsewhere went to that hospital's ED: neither is in this data.
    returned = np.flatnonzero(outcomes.recorded & ~outcomes.from_ed)
    events.add(pat[returned], outcomes.back[returned], "ENC//ED_RETURN")
    idx = np.flatnonzero(outcomes.recorded)
    events.add(pat[idx], outcomes.admit[idx], "ADMIT//INPATIENT")
    _add_discharge_codes(
        events, patients, course, pat[idx], outcomes.discharge[idx], visits.problem[idx], rng
    )


def _add_discharge_codes(
    events: _EventBuffer,
    patients: _Patients,
    course: _Course,
    pat: np.ndarray,
    discharge: np.ndarray,
    problem: np.ndarray | None,
    rng: np.random.Generator,
) -> None:
    """Discharge diagnoses of stays: the problem's (ED admissions), the active conditions (the
    stay finds them, documented or not) and long-tail codes."""
    if problem is not None:
        for p, prob in enumerate(PROBLEMS_V2):
            rows = np.flatnonzero(problem == p)
            rows = np.repeat(rows, 1 + (rng.random(len(rows)) < 0.4))
            codes = events.code_ids(prob.discharge_dx)
            drawn = rng.choice(len(codes), len(rows), p=zipf_weights(len(codes)))
            events.add(pat[rows], discharge[rows], codes[drawn])
    active = course.active(patients.has, pat, discharge)
    for c, cond in enumerate(CONDITIONS_V2):
        coded = np.flatnonzero(active[:, c] & (rng.random(len(pat)) < 0.6))
        codes = events.code_ids(cond.dx_family)
        weights = family_weights(len(cond.dx_codes), len(DX_EXTENSIONS))
        events.add(
            pat[coded], discharge[coded], codes[rng.choice(len(codes), len(coded), p=weights)]
        )
    _add_tail(events, pat, discharge - 10 * _MINUTE, 2.0, rng)


def generate_cohort_v2(n_visits: int, *, labeled_frac: float, seed: int) -> Cohort:
    """Cohort version 2 with exactly `n_visits` visits (arguments checked by `generate_cohort`).

    Patients, their visits' times and acute problems are drawn as in version 1; then each
    condition's onset and pace, the local records' start, outpatient encounters and inpatient
    stays; each visit's outcome, rank by rank (a recent stay raises the risk); the events.
    """
    rng = np.random.default_rng(seed)
    patients = _draw_patients(n_visits, rng)
    n_patients = int(np.searchsorted(np.cumsum(patients.n_visits), n_visits)) + 1
    patients = patients.head(n_patients)
    times = _visit_times(patients, rng)
    course = _draw_course(patients, times[1], rng)
    stays = _history_stays(patients, course, times, rng)
    visits, outcomes = _draw_visits_v2(patients, course, times, stays, rng)

    events = _EventBuffer()
    enc_pat, enc_time = _encounters(patients, course, visits.arrival, rng)
    kinds = events.code_ids(("ENC//PRIMARY_CARE", "ENC//SPECIALTY", "ENC//TELEHEALTH"))
    events.add(enc_pat, enc_time, kinds[rng.choice(3, len(enc_pat), p=[0.55, 0.3, 0.15])])
    _add_coded_conditions(events, patients, course, enc_pat, enc_time, rng)
    _add_tail(events, enc_pat, enc_time, _TAIL_PER_ENCOUNTER, rng)
    events.add(stays[0], stays[1], "ADMIT//INPATIENT")
    _add_discharge_codes(events, patients, course, stays[0], stays[2], None, rng)

    has_now = course.active(patients.has, visits.patient, visits.arrival)
    _add_arrival_and_complaint(events, visits, rng)
    _add_triage(events, visits, rng, noise=_ESI_NOISE, missing=_ESI_MISSING)
    _add_vitals(events, has_now, visits, rng, missing=_VITALS_MISSING)
    _add_ed_labs(events, course.state(patients.has, visits.patient, visits.arrival), visits, rng)
    _add_ed_medications(events, visits, rng)
    _add_outcomes_v2(events, patients, course, visits, outcomes, rng)
    events_frame = events.to_frame(np.arange(1, n_patients + 1, dtype=np.int64))
    return _visit_frames(patients, visits, events_frame, n_visits, labeled_frac, rng)
