"""The synthetic cohort's clinical catalog: chronic conditions, labs, acute problems and the
families of synonymous codes each is recorded with. Static tables, the same for every seed."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


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
        return _code_family(self.dx_codes, DX_EXTENSIONS)

    @property
    def med_family(self) -> tuple[str, ...]:
        """Every home-medication code: each of `med_codes` in several strengths and forms (as
        RxNorm codes clinical drugs), most used first."""
        return _code_family(self.med_codes, MED_FORMS)


# Real vocabularies spread one condition over dozens of specific codes, each rare: a model that
# learns codes one at a time from labels sees each too seldom, while their co-occurrence in
# unlabeled histories shows they mean the same thing. Codes within a family are drawn with
# flat Zipf weights (exponent 0.5 over the named codes, and over their children).
DX_EXTENSIONS = ("", "A", "B", "C", "D", "E", "F", "G")
MED_FORMS = ("", "_5MG_TAB", "_10MG_TAB", "_20MG_TAB", "_40MG_TAB", "_ER_TAB")
_FAMILY_EXPONENT = 0.5


def zipf_weights(n: int, exponent: float = 1.3) -> np.ndarray:
    """Zipf-like choice probabilities over n items, the first the most likely."""
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


@functools.cache
def _code_family(named: tuple[str, ...], suffixes: tuple[str, ...]) -> tuple[str, ...]:
    # Letter extensions, so that no child ("N18.3" + "1") spells another named code ("N18.31").
    return tuple(code + suffix for code in named for suffix in suffixes)


@functools.cache
def family_weights(n_named: int, n_suffixes: int) -> np.ndarray:
    """Choice probabilities over a family laid out as `_code_family` does (named-code major)."""
    weights = np.outer(
        zipf_weights(n_named, _FAMILY_EXPONENT), zipf_weights(n_suffixes, _FAMILY_EXPONENT)
    )
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
        dx_codes = tuple(f"DX//{chapter}{number}.{j}" for j in range(4))
        med_codes = tuple(  # 2 of the 72 stem-ending pairs, each used once
            f"MED_HOME//{stems[m % 12]}{endings[m // 12]}" for m in (2 * k, 2 * k + 1)
        )
        conditions.append(minor_condition(k, dx_codes, med_codes, rng))
    return tuple(conditions)


def minor_condition(
    k: int, dx_codes: tuple[str, ...], med_codes: tuple[str, ...], rng: np.random.Generator
) -> Condition:
    """Minor condition `k`, coded as given: prevalence, slopes and admission weight drawn from
    `rng` in a fixed order (no parents, no labs)."""
    return Condition(
        name=f"minor_condition_{k:02d}",
        prevalence_logit=float(rng.uniform(-4.2, -2.8)),
        age_slope=float(rng.uniform(0.0, 0.5)),
        frailty_slope=float(rng.uniform(0.1, 0.5)),
        parents=(),
        admit_weight=float(rng.normal(0.3, 0.8)),
        dx_codes=dx_codes,
        med_codes=med_codes,
        labs=(),
    )


CONDITIONS: tuple[Condition, ...] = _NAMED_CONDITIONS + _minor_conditions(_N_MINOR_CONDITIONS)
CONDITION_INDEX = {c.name: i for i, c in enumerate(CONDITIONS)}


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
LAB_INDEX = {lab.name: i for i, lab in enumerate(LABS)}
BASIC_PANEL = ("WBC", "HGB", "SODIUM", "POTASSIUM", "CREATININE", "GLUCOSE")  # CBC + BMP
ROUTINE_OUTPATIENT_LABS = ("CREATININE", "HGB", "GLUCOSE")
# How the acute severity moves ED lab values: value *= exp(coef * max(severity, 0)).
SEVERITY_LAB_COEF = {"WBC": 0.12, "LACTATE": 0.3, "CREATININE": 0.08, "TROPONIN": 0.25,
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

# The outcome-unrelated long tail: how many diagnosis and procedure codes it draws from.
_N_NOISE_DX, _N_NOISE_PROC = 1400, 900


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


@functools.cache
def problem_index(name: str) -> int:
    """The index of the acute problem called `name` in `PROBLEMS`."""
    return next(i for i, p in enumerate(PROBLEMS) if p.name == name)
