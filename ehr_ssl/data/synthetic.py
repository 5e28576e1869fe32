"""The built-in synthetic emergency-department cohort: visits, events, labels and the true risk.

A latent patient state (frailty, chronic conditions) shows only through a history of outpatient
encounters coded with synonymous codes; each ED visit adds a complaint, triage, vitals, labs and
medications; the outcome (admission within 7 days) leaves leak events after the prediction time.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import polars as pl

from ehr_ssl.atomic import atomic_directory
from ehr_ssl.data import schema

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


# --------------------------------------------------------------------------------------------
# The clinical vocabulary: chronic conditions, labs and acute problems.


@dataclass(frozen=True)
class Condition:
    """A chronic condition: who has it, how it is coded in the history, how it moves the risk."""

    name: str
    prevalence_logit: float  # at age 55, frailty 0, no parent condition
    age_slope: float  # logit per 10 years of age
    frailty_slope: float  # logit per unit of frailty
    parents: tuple[tuple[str, float], ...]  # (earlier condition, logit boost): comorbidity
    admit_weight: float  # added to the admission logit
    dx_codes: tuple[str, ...]  # synonymous diagnosis codes, most used first
    med_codes: tuple[str, ...]  # home medications, most used first
    labs: tuple[str, ...]  # outpatient labs ordered when the condition is addressed

    @property
    def dx_family(self) -> tuple[str, ...]:
        """Every diagnosis code the condition is recorded with: each of `dx_codes` and its more
        specific children (letter extensions, as ICD-10-CM adds characters), most used first."""
        return _code_family(self.dx_codes, _DX_EXTENSIONS)

    @property
    def med_family(self) -> tuple[str, ...]:
        """Every home-medication code: each of `med_codes` in several strengths and forms (as
        RxNorm codes clinical drugs), most used first."""
        return _code_family(self.med_codes, _MED_FORMS)


# Real vocabularies spread one condition over dozens of specific codes, each rare: a model that
# learns codes one at a time from labels sees each too seldom, while their co-occurrence in
# unlabeled histories shows they mean the same thing. Codes within a family are drawn with
# flat Zipf weights (exponent 0.5 over the named codes, and over their children).
_DX_EXTENSIONS = ("", "A", "B", "C", "D", "E", "F", "G")
_MED_FORMS = ("", "_5MG_TAB", "_10MG_TAB", "_20MG_TAB", "_40MG_TAB", "_ER_TAB")
_FAMILY_EXPONENT = 0.5


@functools.cache
def _code_family(named: tuple[str, ...], suffixes: tuple[str, ...]) -> tuple[str, ...]:
    # Letter extensions, so that no child ("N18.3" + "1") spells another named code ("N18.31").
    return tuple(code + suffix for code in named for suffix in suffixes)


@functools.cache
def _family_weights(n_named: int, n_suffixes: int) -> np.ndarray:
    """Choice probabilities over a family laid out as `_code_family` does (named-code major)."""
    weights = np.outer(_skewed(n_named, _FAMILY_EXPONENT), _skewed(n_suffixes, _FAMILY_EXPONENT))
    return weights.ravel()


# Ordered so that parents come before their children.
_NAMED_CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "hypertension", -1.2, 0.55, 0.3, (), 0.05,
        ("DX//I10", "DX//I11.9", "DX//I15.9", "DX//I16.9", "DX//I67.4", "DX//R03.0"),
        ("MED_HOME//AMLODIPINE", "MED_HOME//LISINOPRIL", "MED_HOME//LOSARTAN",
         "MED_HOME//HYDROCHLOROTHIAZIDE"),
        ("POTASSIUM",),
    ),
    Condition(
        "diabetes", -2.0, 0.35, 0.35, (("hypertension", 0.6),), 0.2,
        ("DX//E11.9", "DX//E11.65", "DX//E11.22", "DX//E11.40", "DX//E11.8", "DX//E11.649",
         "DX//E11.319", "DX//Z79.4"),
        ("MED_HOME//METFORMIN", "MED_HOME//INSULIN_GLARGINE", "MED_HOME//EMPAGLIFLOZIN",
         "MED_HOME//GLIPIZIDE"),
        ("HBA1C",),
    ),
    Condition(
        "coronary_artery_disease", -3.0, 0.6, 0.4, (("hypertension", 0.6), ("diabetes", 0.6)),
        0.2,
        ("DX//I25.10", "DX//I25.2", "DX//I25.119", "DX//I25.5", "DX//Z95.1", "DX//Z95.5",
         "DX//I20.8"),
        ("MED_HOME//ATORVASTATIN", "MED_HOME//CLOPIDOGREL", "MED_HOME//ASPIRIN",
         "MED_HOME//ISOSORBIDE_MONONITRATE"),
        ("LDL",),
    ),
    Condition(
        "atrial_fibrillation", -3.3, 0.75, 0.4, (("hypertension", 0.4),), 0.25,
        ("DX//I48.91", "DX//I48.0", "DX//I48.20", "DX//I48.19", "DX//I48.11", "DX//I48.21"),
        ("MED_HOME//APIXABAN", "MED_HOME//WARFARIN", "MED_HOME//METOPROLOL",
         "MED_HOME//DILTIAZEM"),
        ("INR",),
    ),
    Condition(
        "heart_failure", -3.9, 0.6, 0.7,
        (("coronary_artery_disease", 1.0), ("atrial_fibrillation", 0.8), ("hypertension", 0.4)),
        0.6,
        ("DX//I50.9", "DX//I50.22", "DX//I50.32", "DX//I50.42", "DX//I50.30", "DX//I11.0",
         "DX//I50.20", "DX//I50.812"),
        ("MED_HOME//FUROSEMIDE", "MED_HOME//CARVEDILOL", "MED_HOME//SACUBITRIL_VALSARTAN",
         "MED_HOME//SPIRONOLACTONE"),
        ("BNP",),
    ),
    Condition(
        "chronic_kidney_disease", -3.6, 0.55, 0.5,
        (("diabetes", 0.9), ("hypertension", 0.7), ("heart_failure", 0.6)),
        0.45,
        ("DX//N18.3", "DX//N18.30", "DX//N18.9", "DX//N18.4", "DX//N18.31", "DX//I12.9",
         "DX//N18.32", "DX//N18.5"),
        ("MED_HOME//SEVELAMER", "MED_HOME//CALCITRIOL", "MED_HOME//SODIUM_BICARBONATE"),
        ("CREATININE",),
    ),
    Condition(
        "copd", -2.9, 0.45, 0.55, (), 0.35,
        ("DX//J44.9", "DX//J44.1", "DX//J43.9", "DX//J43.2", "DX//J41.8", "DX//J42"),
        ("MED_HOME//TIOTROPIUM", "MED_HOME//FLUTICASONE_SALMETEROL", "MED_HOME//ALBUTEROL_INHALER",
         "MED_HOME//UMECLIDINIUM_VILANTEROL"),
        (),
    ),
    Condition(
        "asthma", -2.5, -0.2, 0.2, (), -0.1,
        ("DX//J45.909", "DX//J45.20", "DX//J45.30", "DX//J45.40", "DX//J45.50", "DX//J45.901",
         "DX//J45.998"),
        ("MED_HOME//ALBUTEROL_INHALER", "MED_HOME//MONTELUKAST", "MED_HOME//BUDESONIDE_FORMOTEROL"),
        ("EOSINOPHILS",),
    ),
    Condition(
        "cirrhosis", -4.0, 0.15, 0.6, (), 0.7,
        ("DX//K74.60", "DX//K70.30", "DX//K74.69", "DX//K70.31", "DX//K76.6", "DX//I85.10",
         "DX//K74.4"),
        ("MED_HOME//LACTULOSE", "MED_HOME//RIFAXIMIN", "MED_HOME//SPIRONOLACTONE",
         "MED_HOME//NADOLOL"),
        ("BILIRUBIN", "ALBUMIN"),
    ),
    Condition(
        "cancer", -3.2, 0.45, 0.6, (), 0.8,
        ("DX//C34.90", "DX//C50.919", "DX//C18.9", "DX//C61", "DX//Z51.11", "DX//C25.9",
         "DX//C85.90", "DX//C79.51", "DX//C91.10"),
        ("MED_HOME//ONDANSETRON", "MED_HOME//DEXAMETHASONE", "MED_HOME//CAPECITABINE",
         "MED_HOME//TAMOXIFEN"),
        ("HGB",),
    ),
    Condition(
        "dementia", -5.0, 1.1, 0.6, (), 0.5,
        ("DX//F03.90", "DX//G30.9", "DX//F01.50", "DX//F02.80", "DX//G30.1", "DX//F03.91",
         "DX//G31.84"),
        ("MED_HOME//DONEPEZIL", "MED_HOME//MEMANTINE", "MED_HOME//RIVASTIGMINE"),
        (),
    ),
    Condition(
        "prior_stroke", -3.9, 0.6, 0.5, (("atrial_fibrillation", 0.7), ("hypertension", 0.5)),
        0.3,
        ("DX//Z86.73", "DX//I69.354", "DX//I63.9", "DX//I69.30", "DX//I69.320", "DX//I69.398"),
        ("MED_HOME//CLOPIDOGREL", "MED_HOME//ATORVASTATIN", "MED_HOME//ASPIRIN_DIPYRIDAMOLE"),
        ("LDL",),
    ),
)  # fmt: skip

_N_MINOR_CONDITIONS = 36


def _minor_conditions(n: int) -> tuple[Condition, ...]:
    """Less common chronic conditions (the long tail of a problem list), each coded by its own
    family of diagnoses and medications, with no labs and no acute problem of their own: they are
    visible only in the history. Their effects on admission differ in size and sign (nearly
    half lower it), so a model must learn which codes belong together to weigh them. The spread
    of the effects (sd 0.8 logits) makes the history about as predictive as the current visit,
    as in ED admission data (see `_ADMIT_FRAILTY`).
    Parameters are fixed (seed-independent): the cohort's structure does not change with `seed`.
    """
    rng = np.random.default_rng(20210102)
    stems = ("ALO", "BRI", "CAL", "DOR", "ELI", "FEN", "GLI", "IVA", "LUR", "MIR", "NEV", "OLA")
    endings = ("GLIPTIN", "DRONATE", "FIBRATE", "SETRON", "TEGRAVIR", "PAMIDE")
    conditions = []
    for k in range(n):
        chapter, number = "GKNRTJ"[k % 6], 60 + k // 6 * 6 + k % 6
        conditions.append(
            Condition(
                name=f"minor_condition_{k:02d}",
                prevalence_logit=float(rng.uniform(-4.2, -2.8)),
                age_slope=float(rng.uniform(0.0, 0.5)),
                frailty_slope=float(rng.uniform(0.1, 0.5)),
                parents=(),
                admit_weight=float(rng.normal(0.3, 0.8)),
                dx_codes=tuple(f"DX//{chapter}{number}.{j}" for j in range(4)),
                med_codes=tuple(  # 2 of the 72 stem-ending pairs, each used once
                    f"MED_HOME//{stems[m % 12]}{endings[m // 12]}" for m in (2 * k, 2 * k + 1)
                ),
                labs=(),
            )
        )
    return tuple(conditions)


CONDITIONS: tuple[Condition, ...] = _NAMED_CONDITIONS + _minor_conditions(_N_MINOR_CONDITIONS)
_CONDITION_INDEX = {c.name: i for i, c in enumerate(CONDITIONS)}


@dataclass(frozen=True)
class Lab:
    """A lab test: its value is median * prod(factor of each condition the patient has) * noise."""

    name: str  # the code is LAB//<name>
    median: float
    log_sd: float
    decimals: int
    condition_factors: tuple[tuple[str, float], ...] = ()
    turnaround_min: float = 30.0  # median minutes from collection to result in the ED


LABS: tuple[Lab, ...] = (
    Lab("WBC", 7.5, 0.25, 1, (("cancer", 0.9),), 30),
    Lab("HGB", 13.6, 0.09, 1, (("cancer", 0.8), ("chronic_kidney_disease", 0.85),
                               ("cirrhosis", 0.85)), 30),
    Lab("SODIUM", 139.0, 0.018, 0, (("cirrhosis", 0.97), ("heart_failure", 0.985)), 35),
    Lab("POTASSIUM", 4.1, 0.09, 1, (("chronic_kidney_disease", 1.12),), 35),
    Lab("CREATININE", 0.9, 0.2, 2, (("chronic_kidney_disease", 2.3), ("heart_failure", 1.2),
                                    ("diabetes", 1.1)), 35),
    Lab("GLUCOSE", 100.0, 0.15, 0, (("diabetes", 1.7),), 35),
    Lab("LACTATE", 1.2, 0.3, 1, (("cirrhosis", 1.3),), 12),
    Lab("TROPONIN", 8.0, 0.7, 0, (("chronic_kidney_disease", 2.5), ("heart_failure", 2.0)), 45),
    Lab("BNP", 50.0, 0.8, 0, (("heart_failure", 12.0), ("chronic_kidney_disease", 2.0),
                              ("atrial_fibrillation", 2.0)), 80),
    Lab("LIPASE", 35.0, 0.4, 0, (), 75),
    Lab("INR", 1.0, 0.06, 2, (("atrial_fibrillation", 2.0), ("cirrhosis", 1.5)), 55),
    # Outpatient-only labs.
    Lab("HBA1C", 5.4, 0.06, 1, (("diabetes", 1.5),)),
    Lab("LDL", 110.0, 0.25, 0, (("coronary_artery_disease", 0.7), ("prior_stroke", 0.75))),
    Lab("BILIRUBIN", 0.7, 0.4, 1, (("cirrhosis", 3.0),)),
    Lab("ALBUMIN", 4.1, 0.07, 1, (("cirrhosis", 0.72), ("cancer", 0.9))),
    Lab("EOSINOPHILS", 150.0, 0.5, 0, (("asthma", 2.5), ("copd", 1.5))),
)  # fmt: skip
_LAB_INDEX = {lab.name: i for i, lab in enumerate(LABS)}
_BASIC_PANEL = ("WBC", "HGB", "SODIUM", "POTASSIUM", "CREATININE", "GLUCOSE")  # CBC + BMP
_ROUTINE_OUTPATIENT_LABS = ("CREATININE", "HGB", "GLUCOSE")
# How the acute severity moves ED lab values: value *= exp(coef * max(severity, 0)).
_SEVERITY_LAB_COEF = {"WBC": 0.12, "LACTATE": 0.3, "CREATININE": 0.08, "TROPONIN": 0.25,
                      "HGB": -0.03, "SODIUM": -0.01}  # fmt: skip


@dataclass(frozen=True)
class Problem:
    """An acute problem that brings a patient to the ED; one is drawn per visit."""

    name: str
    base_logit: float  # choice logit at age 55 without chronic conditions
    age_slope: float  # choice logit per 10 years of age
    condition_boosts: tuple[tuple[str, float], ...]  # chronic conditions that raise its logit
    severity_mean: float  # mean of the acute severity latent
    admit_effect: float  # added to the admission logit
    complaints: tuple[tuple[str, float], ...]  # chief complaint codes and weights
    lab_orders: tuple[tuple[str, float], ...]  # ED lab (or "BASIC" panel) and order probability
    lab_factors: tuple[tuple[str, float], ...]  # acute multipliers of ED lab values
    ed_meds: tuple[str, ...]  # ED medications, most used first
    med_rate: float  # mean number of ED medications at severity 0
    discharge_dx: tuple[str, ...]  # inpatient discharge diagnoses, most used first
    infectious: bool = False  # fever
    respiratory: bool = False  # tachypnea, low oxygen saturation


PROBLEMS: tuple[Problem, ...] = (
    Problem(
        "acute_coronary_syndrome", -2.8, 0.25,
        (("coronary_artery_disease", 1.5), ("diabetes", 0.4), ("hypertension", 0.3)), 0.4, 0.6,
        (("CC//CHEST_PAIN", 0.85), ("CC//DYSPNEA", 0.1), ("CC//DIAPHORESIS", 0.05)),
        (("BASIC", 0.95), ("TROPONIN", 1.0), ("BNP", 0.4), ("INR", 0.3)),
        (("TROPONIN", 15.0),),
        ("MED_ED//ASPIRIN", "MED_ED//NITROGLYCERIN", "MED_ED//HEPARIN", "MED_ED//MORPHINE"),
        1.6, ("DX//I21.4", "DX//I24.9", "DX//I20.0"),
    ),
    Problem(
        "chest_pain_other", -1.4, 0.0, (("coronary_artery_disease", 0.4),), -0.5, -0.5,
        (("CC//CHEST_PAIN", 0.9), ("CC//PALPITATIONS", 0.05), ("CC//DYSPNEA", 0.05)),
        (("BASIC", 0.85), ("TROPONIN", 0.95), ("BNP", 0.2), ("LIPASE", 0.1)),
        (),
        ("MED_ED//ACETAMINOPHEN", "MED_ED//KETOROLAC", "MED_ED//FAMOTIDINE", "MED_ED//ASPIRIN"),
        0.6, ("DX//R07.9", "DX//R07.89", "DX//K21.9"),
    ),
    Problem(
        "heart_failure_exacerbation", -4.2, 0.2, (("heart_failure", 3.3),), 0.5, 0.5,
        (("CC//DYSPNEA", 0.7), ("CC//LEG_SWELLING", 0.2), ("CC//CHEST_PAIN", 0.1)),
        (("BASIC", 0.95), ("BNP", 0.9), ("TROPONIN", 0.8), ("LACTATE", 0.2)),
        (("BNP", 2.5), ("CREATININE", 1.2)),
        ("MED_ED//FUROSEMIDE_IV", "MED_ED//NITROGLYCERIN", "MED_ED//BIPAP"),
        1.3, ("DX//I50.23", "DX//I50.33", "DX//I50.43", "DX//J81.0"), respiratory=True,
    ),
    Problem(
        "airway_exacerbation", -3.2, -0.1, (("copd", 2.3), ("asthma", 2.1)), 0.2, 0.1,
        (("CC//DYSPNEA", 0.6), ("CC//WHEEZING", 0.3), ("CC//COUGH", 0.1)),
        (("BASIC", 0.6), ("BNP", 0.3), ("TROPONIN", 0.3), ("LACTATE", 0.1)),
        (("WBC", 1.15),),
        ("MED_ED//ALBUTEROL_NEB", "MED_ED//IPRATROPIUM_NEB", "MED_ED//METHYLPREDNISOLONE",
         "MED_ED//MAGNESIUM_SULFATE"),
        1.6, ("DX//J44.1", "DX//J45.901", "DX//J96.01"), respiratory=True,
    ),
    Problem(
        "pneumonia", -2.7, 0.25,
        (("copd", 0.8), ("dementia", 0.7), ("cancer", 0.5), ("heart_failure", 0.3)), 0.3, 0.4,
        (("CC//COUGH", 0.4), ("CC//FEVER", 0.3), ("CC//DYSPNEA", 0.3)),
        (("BASIC", 0.95), ("LACTATE", 0.5), ("BNP", 0.25), ("TROPONIN", 0.2)),
        (("WBC", 1.6), ("LACTATE", 1.2)),
        ("MED_ED//CEFTRIAXONE", "MED_ED//AZITHROMYCIN", "MED_ED//ACETAMINOPHEN",
         "MED_ED//NS_BOLUS"),
        1.4, ("DX//J18.9", "DX//J15.9", "DX//J18.1", "DX//J69.0"),
        infectious=True, respiratory=True,
    ),
    Problem(
        "sepsis", -3.6, 0.3,
        (("cancer", 1.0), ("dementia", 0.9), ("cirrhosis", 0.7), ("diabetes", 0.4),
         ("chronic_kidney_disease", 0.4)),
        0.9, 0.8,
        (("CC//FEVER", 0.4), ("CC//ALTERED_MENTAL_STATUS", 0.3), ("CC//WEAKNESS", 0.3)),
        (("BASIC", 1.0), ("LACTATE", 0.95), ("INR", 0.4), ("TROPONIN", 0.25)),
        (("WBC", 1.9), ("LACTATE", 2.0), ("CREATININE", 1.4), ("GLUCOSE", 1.2)),
        ("MED_ED//PIPERACILLIN_TAZOBACTAM", "MED_ED//NS_BOLUS", "MED_ED//VANCOMYCIN",
         "MED_ED//ACETAMINOPHEN", "MED_ED//NOREPINEPHRINE"),
        2.0, ("DX//A41.9", "DX//N39.0", "DX//R65.20", "DX//A41.51"), infectious=True,
    ),
    Problem(
        "abdominal", -1.0, -0.05, (("cirrhosis", 0.5),), -0.3, -0.15,
        (("CC//ABDOMINAL_PAIN", 0.75), ("CC//VOMITING", 0.2), ("CC//DIARRHEA", 0.05)),
        (("BASIC", 0.85), ("LIPASE", 0.8), ("LACTATE", 0.15)),
        (("LIPASE", 2.5), ("WBC", 1.2)),
        ("MED_ED//ONDANSETRON", "MED_ED//MORPHINE", "MED_ED//NS_BOLUS", "MED_ED//PANTOPRAZOLE",
         "MED_ED//KETOROLAC"),
        1.2, ("DX//K85.90", "DX//K57.32", "DX//K35.80", "DX//K56.609", "DX//K81.0"),
    ),
    Problem(
        "gi_bleed", -3.8, 0.25,
        (("cirrhosis", 2.3), ("atrial_fibrillation", 0.7), ("chronic_kidney_disease", 0.3)),
        0.5, 0.6,
        (("CC//MELENA", 0.4), ("CC//HEMATEMESIS", 0.3), ("CC//ABDOMINAL_PAIN", 0.15),
         ("CC//WEAKNESS", 0.15)),
        (("BASIC", 1.0), ("INR", 0.8), ("LACTATE", 0.4)),
        (("HGB", 0.7), ("LACTATE", 1.3), ("INR", 1.1)),
        ("MED_ED//PANTOPRAZOLE", "MED_ED//OCTREOTIDE", "MED_ED//PRBC_TRANSFUSION",
         "MED_ED//NS_BOLUS"),
        1.5, ("DX//K92.2", "DX//K92.1", "DX//K25.4", "DX//I85.11"),
    ),
    Problem(
        "fall_injury", -1.9, 0.35, (("dementia", 1.2), ("prior_stroke", 0.5)), -0.2, -0.1,
        (("CC//FALL", 0.8), ("CC//HIP_PAIN", 0.1), ("CC//HEAD_INJURY", 0.1)),
        (("BASIC", 0.4), ("INR", 0.15), ("TROPONIN", 0.1)),
        (),
        ("MED_ED//ACETAMINOPHEN", "MED_ED//OXYCODONE", "MED_ED//TETANUS_TOXOID",
         "MED_ED//LIDOCAINE_LOCAL"),
        0.9, ("DX//S72.001A", "DX//S06.0X0A", "DX//S32.009A", "DX//S22.39XA"),
    ),
    Problem(
        "hyperglycemia", -4.3, 0.0, (("diabetes", 3.0),), 0.1, 0.05,
        (("CC//HYPERGLYCEMIA", 0.6), ("CC//WEAKNESS", 0.2), ("CC//VOMITING", 0.2)),
        (("BASIC", 1.0), ("LACTATE", 0.3)),
        (("GLUCOSE", 3.5), ("POTASSIUM", 1.1)),
        ("MED_ED//INSULIN_REGULAR", "MED_ED//NS_BOLUS", "MED_ED//POTASSIUM_CHLORIDE"),
        1.2, ("DX//E11.10", "DX//E11.65", "DX//E87.2"),
    ),
    Problem(
        "renal_electrolyte", -3.8, 0.3,
        (("chronic_kidney_disease", 2.0), ("heart_failure", 0.5), ("diabetes", 0.3)), 0.2, 0.3,
        (("CC//WEAKNESS", 0.6), ("CC//ABNORMAL_LAB", 0.4)),
        (("BASIC", 1.0), ("BNP", 0.2), ("TROPONIN", 0.2)),
        (("CREATININE", 2.0), ("POTASSIUM", 1.15), ("SODIUM", 0.97)),
        ("MED_ED//NS_BOLUS", "MED_ED//CALCIUM_GLUCONATE", "MED_ED//INSULIN_REGULAR",
         "MED_ED//SODIUM_ZIRCONIUM"),
        1.0, ("DX//N17.9", "DX//E87.1", "DX//E87.5"),
    ),
    Problem(
        "syncope_arrhythmia", -2.6, 0.3, (("atrial_fibrillation", 1.8), ("heart_failure", 0.4)),
        0.0, 0.15,
        (("CC//SYNCOPE", 0.5), ("CC//PALPITATIONS", 0.4), ("CC//DIZZINESS", 0.1)),
        (("BASIC", 0.9), ("TROPONIN", 0.8), ("BNP", 0.3)),
        (),
        ("MED_ED//DILTIAZEM_IV", "MED_ED//METOPROLOL_IV", "MED_ED//NS_BOLUS", "MED_ED//ADENOSINE"),
        0.7, ("DX//R55", "DX//I48.91", "DX//I47.1", "DX//R00.2"),
    ),
    Problem(
        "stroke_tia", -3.6, 0.45,
        (("prior_stroke", 1.3), ("atrial_fibrillation", 0.8), ("hypertension", 0.5)), 0.4, 0.7,
        (("CC//FOCAL_WEAKNESS", 0.5), ("CC//SPEECH_DIFFICULTY", 0.3), ("CC//DIZZINESS", 0.2)),
        (("BASIC", 0.95), ("INR", 0.7), ("TROPONIN", 0.5)),
        (),
        ("MED_ED//ASPIRIN", "MED_ED//LABETALOL", "MED_ED//ALTEPLASE"),
        0.8, ("DX//I63.9", "DX//G45.9", "DX//I63.512", "DX//I61.9"),
    ),
    Problem(
        "minor", -0.2, -0.35, (), -1.0, -0.8,
        (("CC//BACK_PAIN", 0.25), ("CC//LACERATION", 0.2), ("CC//SORE_THROAT", 0.15),
         ("CC//ANKLE_INJURY", 0.15), ("CC//RASH", 0.1), ("CC//HEADACHE", 0.1),
         ("CC//DENTAL_PAIN", 0.05)),
        (("BASIC", 0.15),),
        (),
        ("MED_ED//IBUPROFEN", "MED_ED//ACETAMINOPHEN", "MED_ED//LIDOCAINE_LOCAL",
         "MED_ED//CEPHALEXIN", "MED_ED//CYCLOBENZAPRINE"),
        0.6, ("DX//M54.50", "DX//S61.419A", "DX//J02.9", "DX//L03.90"),
    ),
    Problem(
        "psychiatric", -2.3, -0.25, (("dementia", 0.3),), -0.4, -0.2,
        (("CC//ANXIETY", 0.45), ("CC//SUICIDAL_IDEATION", 0.3), ("CC//AGITATION", 0.25)),
        (("BASIC", 0.5),),
        (),
        ("MED_ED//LORAZEPAM", "MED_ED//OLANZAPINE", "MED_ED//HALOPERIDOL"),
        0.5, ("DX//F32.9", "DX//F41.9", "DX//R45.851", "DX//F10.129"),
    ),
)  # fmt: skip

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
_N_NOISE_DX, _N_NOISE_PROC = 1400, 900


def _skewed(n: int, exponent: float = 1.3) -> np.ndarray:
    """Zipf-like choice probabilities over n items, the first the most likely."""
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


@functools.cache
def noise_codes() -> tuple[str, ...]:
    """The outcome-unrelated long tail, in decreasing order of frequency (seed-independent)."""
    signal = {code for c in CONDITIONS for code in c.dx_family + c.med_family}
    signal |= {code for p in PROBLEMS for code in p.discharge_dx}
    dx = [
        f"DX//{letter}{num:02d}.{dec}"
        for dec in range(2)
        for letter in "ZMLHBDQ"
        for num in range(100)
    ][:_N_NOISE_DX]
    proc = [f"PROC//{10021 + 89 * i}" for i in range(_N_NOISE_PROC)]
    stems = ("AM", "BEN", "CAR", "DEX", "ESO", "FLU", "GAB", "HYD", "LEV", "MET", "NAP", "OME",
             "PRA", "RAN", "SER", "TAM", "VAL", "ZOL", "CLO", "TRI")  # fmt: skip
    endings = ("AZOLE", "IPRIL", "OLOL", "ASTATIN", "OXETINE", "IDINE", "AMINE", "ACIN", "ONE",
               "IDE", "ARTAN", "ENT", "INE", "ATE", "ICLOVIR", "EPAM", "ALIN", "OXACIN",
               "AFIL", "UMAB", "TROPIN", "OXIB", "TIDINE", "LUKAST", "ISOLONE")  # fmt: skip
    med = [f"MED_HOME//{s}{e}" for e in endings for s in stems]
    codes = [c for c in dx + proc + med if c not in signal]
    # A fixed interleaving, so that each kind has frequent and rare codes.
    order = np.random.default_rng(20210101).permutation(len(codes))
    return tuple(codes[i] for i in order)


# --------------------------------------------------------------------------------------------
# Generation.


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
            logit = logit + boost * has[:, _CONDITION_INDEX[parent]]
        has[:, c] = rng.random(n) < _sigmoid(logit)
    documented = has & (rng.random(has.shape) < _DOCUMENTED)
    # Frail patients come back: 1 + Poisson(rate growing with frailty), mean about 1.7.
    rate = 0.55 * np.exp(0.55 * frailty + 0.1 * has.sum(axis=1))
    n_visits = np.minimum(1 + rng.poisson(rate), MAX_VISITS_PER_PATIENT)
    return _Patients(age, female, frailty, has, documented, n_visits)


def _draw_visits(patients: _Patients, rng: np.random.Generator) -> _Visits:
    """ED visits of all patients (grouped by patient, in time order), their problem and outcome."""
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

    has = patients.has[patient].astype(np.float64)  # (V, C)
    boosts = np.zeros((len(CONDITIONS), len(PROBLEMS)))
    for p, prob in enumerate(PROBLEMS):
        for cond, boost in prob.condition_boosts:
            boosts[_CONDITION_INDEX[cond], p] = boost
    base = np.array([p.base_logit for p in PROBLEMS])
    age_slope = np.array([p.age_slope for p in PROBLEMS])
    logits = base + has @ boosts + np.outer((age - 55.0) / 10.0, age_slope)  # (V, P)
    problem = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)

    frailty = patients.frailty[patient]
    severity_mean = np.array([p.severity_mean for p in PROBLEMS])
    severity = severity_mean[problem] + 0.25 * frailty + rng.standard_normal(len(patient))
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


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _minutes(x: np.ndarray) -> np.ndarray:
    """Durations in minutes as int64 microseconds, rounded to the second."""
    return np.round(np.asarray(x) * 60.0).astype(np.int64) * _SECOND


def _lab_values(
    lab: Lab, patients: _Patients, patient: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Chronic-state lab values for the given patient indices (before any acute effect)."""
    log_value = np.full(len(patient), np.log(lab.median))
    for cond, factor in lab.condition_factors:
        log_value += np.log(factor) * patients.has[patient, _CONDITION_INDEX[cond]]
    return np.exp(log_value + lab.log_sd * rng.standard_normal(len(patient)))


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

    for c, cond in enumerate(CONDITIONS):
        coded = patients.documented[pat, c] & (rng.random(len(pat)) < _RECORDED_PER_ENCOUNTER)
        idx = np.flatnonzero(coded)
        dx = np.repeat(idx, 1 + (rng.random(len(idx)) < 0.25))
        dx_ids = events.code_ids(cond.dx_family)
        dx_p = _family_weights(len(cond.dx_codes), len(_DX_EXTENSIONS))
        events.add(pat[dx], time[dx], dx_ids[rng.choice(len(dx_ids), len(dx), p=dx_p)])
        med = idx[rng.random(len(idx)) < 0.5]
        med_ids = events.code_ids(cond.med_family)
        med_p = _family_weights(len(cond.med_codes), len(_MED_FORMS))
        events.add(
            pat[med], time[med] + 5 * _MINUTE, med_ids[rng.choice(len(med_ids), len(med), p=med_p)]
        )
        for name in cond.labs:
            lab = LABS[_LAB_INDEX[name]]
            ordered = idx[rng.random(len(idx)) < 0.4]
            values = _lab_values(lab, patients, pat[ordered], rng).round(lab.decimals)
            result = time[ordered] + _minutes(60 + 120 * rng.random(len(ordered)))
            events.add(pat[ordered], result, f"LAB//{lab.name}", values)
        # Rule-out diagnoses: a condition code on a patient without the condition.
        rule_out = np.flatnonzero(~patients.has[pat, c] & (rng.random(len(pat)) < _RULE_OUT_DX))
        events.add(pat[rule_out], time[rule_out], dx_ids[rng.integers(0, 2, len(rule_out))])

    routine = np.flatnonzero(rng.random(len(pat)) < 0.15)
    result = time[routine] + _minutes(60 + 120 * rng.random(len(routine)))
    for name in _ROUTINE_OUTPATIENT_LABS:
        lab = LABS[_LAB_INDEX[name]]
        values = _lab_values(lab, patients, pat[routine], rng).round(lab.decimals)
        events.add(pat[routine], result, f"LAB//{lab.name}", values)

    noise = np.repeat(np.arange(len(pat)), rng.poisson(_NOISE_PER_ENCOUNTER, len(pat)))
    vocabulary = noise_codes()
    noise_ids = events.code_ids(vocabulary)
    drawn = rng.choice(len(vocabulary), len(noise), p=_skewed(len(vocabulary), 1.0))
    events.add(pat[noise], time[noise] + 10 * _MINUTE, noise_ids[drawn])


def _add_ed_visits(
    events: _EventBuffer, patients: _Patients, visits: _Visits, rng: np.random.Generator
) -> None:
    """The current visit: arrival, complaint, triage, vitals, labs and ED medications."""
    v = len(visits.arrival)
    pat, arrival, s, problem = visits.patient, visits.arrival, visits.severity, visits.problem
    has = patients.has[pat]
    cond = {c.name: has[:, i] for i, c in enumerate(CONDITIONS)}
    infectious = np.array([p.infectious for p in PROBLEMS])[problem]
    respiratory = np.array([p.respiratory for p in PROBLEMS])[problem]

    events.add(pat, arrival, "ENC//ED")
    for p, prob in enumerate(PROBLEMS):
        idx = np.flatnonzero(problem == p)
        codes = events.code_ids([c for c, _ in prob.complaints])
        weights = np.array([w for _, w in prob.complaints])
        drawn = rng.choice(len(codes), len(idx), p=weights / weights.sum())
        events.add(pat[idx], arrival[idx] + _minutes(3 * rng.random(len(idx))), codes[drawn])

    esi = np.clip(np.round(3.0 - 0.7 * s + 0.45 * rng.standard_normal(v)), 1, 5)
    events.add(pat, arrival + _minutes(1 + 7 * rng.random(v)), "TRIAGE//ESI", esi)

    noise = rng.standard_normal((5, v))
    heart_rate = 82 + 11 * s + 10 * infectious + 18 * (problem == _problem("syncope_arrhythmia"))
    sbp = 132 + 10 * cond["hypertension"] - 10 * s - 12 * (problem == _problem("gi_bleed"))
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
        events.add(pat, vitals_time, f"VITAL//{name}", values.astype(np.float64))

    # Labs: ordered by problem (and more when severe), resulted after a turnaround, so a share of
    # them lands after the 1-hour prediction time.
    collected = arrival + _minutes(5 + 30 * rng.random(v))
    basic = np.array([dict(p.lab_orders).get("BASIC", 0.0) for p in PROBLEMS])[problem]
    basic_ordered = rng.random(v) < basic + 0.1 * s
    positive_s = np.maximum(s, 0.0)
    for lab in LABS:
        if lab.name not in _BASIC_PANEL and not any(
            dict(p.lab_orders).get(lab.name) for p in PROBLEMS
        ):
            continue  # outpatient-only
        if lab.name in _BASIC_PANEL:
            ordered = basic_ordered
        else:
            prob = np.array([dict(p.lab_orders).get(lab.name, 0.02) for p in PROBLEMS])[problem]
            ordered = rng.random(v) < prob + 0.05 * s
        idx = np.flatnonzero(ordered)
        acute = np.array([dict(p.lab_factors).get(lab.name, 1.0) for p in PROBLEMS])[problem[idx]]
        acute = acute * np.exp(_SEVERITY_LAB_COEF.get(lab.name, 0.0) * positive_s[idx])
        values = (_lab_values(lab, patients, pat[idx], rng) * acute).round(lab.decimals)
        turnaround = lab.turnaround_min * np.exp(0.35 * rng.standard_normal(len(idx)))
        events.add(pat[idx], collected[idx] + _minutes(turnaround), f"LAB//{lab.name}", values)

    med_rate = np.array([p.med_rate for p in PROBLEMS])[problem] * np.exp(0.3 * s)
    med_visit = np.repeat(np.arange(v), rng.poisson(med_rate))
    for p, prob in enumerate(PROBLEMS):
        idx = med_visit[problem[med_visit] == p]
        codes = events.code_ids(prob.ed_meds)
        drawn = rng.choice(len(codes), len(idx), p=_skewed(len(codes), 1.0))
        given = arrival[idx] + _minutes(15 + 60 * np.exp(0.6 * rng.standard_normal(len(idx))))
        events.add(pat[idx], given, codes[drawn])


@functools.cache
def _problem(name: str) -> int:
    return next(i for i, p in enumerate(PROBLEMS) if p.name == name)


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
        drawn = rng.choice(len(codes), len(rows), p=_skewed(len(codes)))
        events.add(pat[rows], discharge[np.searchsorted(idx, rows)], codes[drawn])
    # Chronic conditions are coded at discharge too (documented or not: the stay finds them).
    for c, cond in enumerate(CONDITIONS):
        coded = np.flatnonzero(patients.has[pat[idx], c] & (rng.random(len(idx)) < 0.6))
        codes = events.code_ids(cond.dx_family)
        weights = _family_weights(len(cond.dx_codes), len(_DX_EXTENSIONS))
        drawn = rng.choice(len(codes), len(coded), p=weights)
        events.add(pat[idx[coded]], discharge[coded], codes[drawn])


def generate_cohort(n_visits: int, *, labeled_frac: float = 0.05, seed: int = 0) -> Cohort:
    """Generate a synthetic ED cohort with exactly `n_visits` visits.

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

    Args:
        n_visits: Number of visits, >= 1.
        labeled_frac: Fraction of visits, in [0, 1], that get a row in `labels` (rounded).
        seed: Seed of the only random generator used.

    Returns:
        The cohort: about 48 events per visit, about a quarter of the visits admitted.

    Raises:
        ValueError: If `n_visits` < 1 or `labeled_frac` is outside [0, 1].
    """
    if isinstance(n_visits, bool) or not isinstance(n_visits, int | np.integer) or n_visits < 1:
        raise ValueError(f"n_visits must be an integer >= 1, got {n_visits!r}")
    if not 0.0 <= labeled_frac <= 1.0:
        raise ValueError(f"labeled_frac must be in [0, 1], got {labeled_frac!r}")
    n_visits = int(n_visits)
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

    # Keep the first n_visits (grouped by patient, in time order); number them by arrival.
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
    visits_frame = visits_frame.select([c.name for c in schema.VISITS.columns])
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


# --------------------------------------------------------------------------------------------
# Writing.


def write_cohort(
    cohort: Cohort, out_dir: Path, *, shards: int = 1, overwrite: bool = False
) -> None:
    """Write a cohort as a dataset directory, atomically (a failed run leaves nothing).

    Layout: visits.parquet, labels.parquet, oracle.parquet, and events.parquet (shards == 1) or
    events/part-00000.parquet ... (shards > 1; each patient's events in one shard, contiguous
    blocks of patients in patient_id order, so shards keep the (patient_id, time) order).

    Args:
        cohort: The cohort to write.
        out_dir: The dataset directory to create.
        shards: Number of event files, >= 1.
        overwrite: Replace an existing `out_dir`.

    Raises:
        ValueError: If `shards` < 1.
        FileExistsError: If `out_dir` exists and `overwrite` is False.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be an integer >= 1, got {shards!r}")
    with atomic_directory(Path(out_dir), overwrite=overwrite) as tmp:
        cohort.visits.write_parquet(tmp / schema.VISITS.filename)
        if cohort.labels.height:  # no labels: no labels.parquet (an empty table is bad input)
            cohort.labels.write_parquet(tmp / schema.LABELS.filename)
        cohort.oracle.write_parquet(tmp / schema.ORACLE_FILENAME)
        _write_events(cohort.events, tmp, shards=shards)


def _write_events(events: pl.DataFrame, directory: Path, *, shards: int) -> None:
    if shards == 1:
        events.write_parquet(directory / schema.EVENTS.filename)
        return
    shard_dir = directory / schema.EVENTS.name
    shard_dir.mkdir()
    n_patients = max(events["patient_id"].n_unique(), 1)
    rank = pl.col("patient_id").rank("dense").cast(pl.Int64) - 1
    parts = events.with_columns(_shard=rank * shards // n_patients).partition_by(
        "_shard", as_dict=True, include_key=False, maintain_order=True
    )
    for i in range(shards):
        part = parts.get((i,), events.clear())
        part.write_parquet(shard_dir / f"part-{i:05d}.parquet")
