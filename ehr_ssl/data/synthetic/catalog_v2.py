"""The catalog of cohort version 2: the named conditions, labs and problems of version 1, minor
conditions whose codes spread over several chapters and share medications, and a long tail of
about 96,000 unrelated codes. Static tables, the same for every seed (docs/cohort.md).

Version 1 gave each minor condition its own three-character code prefix, so a roll-up of codes
to their category handed a bag of codes the condition whole; real ICD-10 and RxNorm spread one
condition over several chapters and ingredients, and one ingredient over several conditions.
"""

from __future__ import annotations

import functools

import numpy as np

from ehr_ssl.data.synthetic.catalog import _NAMED_CONDITIONS, PROBLEMS, Condition, minor_condition

# The long tail: diagnosis codes in 2,000 three-character categories (20 chapters x 100), some
# holding the minor conditions' codes too; procedures; home medications. Large enough that, as
# in real vocabularies, most codes stay rare however many visits are drawn (docs/cohort.md).
_CHAPTERS = "ABDFGHJKLMNOQRSTUVWZ"
_N_TAIL_DX, _N_TAIL_PROC = 70_000, 25_000
_MED_STEMS = ("AM", "BEN", "CAR", "DEX", "ESO", "FLU", "GAB", "HYD", "LEV", "MET", "NAP", "OME",
              "PRA", "RAN", "SER", "TAM", "VAL", "ZOL", "CLO", "TRI", "ALO", "BRI", "CAL", "DOR",
              "ELI", "FEN", "GLI", "IVA", "LUR", "MIR", "NEV", "OLA")  # fmt: skip
_MED_ENDINGS = ("AZOLE", "IPRIL", "OLOL", "ASTATIN", "OXETINE", "IDINE", "AMINE", "ACIN", "ONE",
                "IDE", "ARTAN", "ENT", "INE", "ATE", "ICLOVIR", "EPAM", "ALIN", "OXACIN", "AFIL",
                "UMAB", "TROPIN", "OXIB", "TIDINE", "LUKAST", "ISOLONE", "GLIPTIN", "DRONATE",
                "FIBRATE", "SETRON", "TEGRAVIR", "PAMIDE")  # fmt: skip
_N_MINOR_CONDITIONS = 36
_MINOR_DX_PER_CONDITION = 4  # named codes, each in another category; DX_EXTENSIONS add children
_MINOR_CATEGORY_POOL = 40  # the categories the minor conditions' codes fall in, shared
_MINOR_MEDS_PER_CONDITION = 3  # ingredients; consecutive conditions share one


@functools.cache
def home_medications() -> tuple[str, ...]:
    """Every home-medication ingredient of the long tail and the minor conditions (992)."""
    return tuple(f"MED_HOME//{stem}{ending}" for ending in _MED_ENDINGS for stem in _MED_STEMS)


def _minor_conditions_v2(n: int) -> tuple[Condition, ...]:
    """Minor conditions as in version 1 (prevalence, effects of either sign, history only), but
    each coded by 4 diagnoses in 4 categories, each category shared with about 3 other
    conditions and with the long tail, and by 3 ingredients, one shared with the next condition,
    any of them also drawn as an unrelated medication: no prefix and no single code names it."""
    rng = np.random.default_rng(20210103)
    # 4 categories each out of a shared pool: a category holds about 3-4 conditions' codes.
    pool = rng.choice(len(_CHAPTERS) * 100, _MINOR_CATEGORY_POOL, replace=False)
    meds = home_medications()
    med_pick = rng.permutation(len(meds))[: 2 * n + 1]  # condition k: 2k, 2k + 1, 2k + 2
    conditions = []
    for k in range(n):
        categories = rng.choice(pool, _MINOR_DX_PER_CONDITION, replace=False)
        dx = tuple(  # ".9" + a letter: a spelling the long tail (two digits) never uses
            f"DX//{_CHAPTERS[c // 100]}{c % 100:02d}.9{chr(65 + k % 26)}{k // 26}"
            for c in categories
        )
        med_codes = tuple(meds[m] for m in med_pick[2 * k : 2 * k + 3])
        conditions.append(minor_condition(k, dx, med_codes, rng))
    return tuple(conditions)


CONDITIONS_V2: tuple[Condition, ...] = _NAMED_CONDITIONS + _minor_conditions_v2(_N_MINOR_CONDITIONS)
PROBLEMS_V2 = PROBLEMS


@functools.cache
def tail_codes() -> tuple[str, ...]:
    """The outcome-unrelated long tail, most frequent first (seed-independent): diagnoses in the
    categories the minor conditions use too, procedures, and every home-medication ingredient
    (the minor conditions' among them, as drugs have other indications)."""
    signal = {code for c in CONDITIONS_V2 for code in c.dx_family}
    signal |= {code for p in PROBLEMS_V2 for code in p.discharge_dx}
    rng = np.random.default_rng(20210104)
    cells = rng.choice(len(_CHAPTERS) * 100 * 100, _N_TAIL_DX + 500, replace=False)
    dx = [f"DX//{_CHAPTERS[c // 10_000]}{c // 100 % 100:02d}.{c % 100:02d}" for c in np.sort(cells)]
    dx = [code for code in dx if code not in signal][:_N_TAIL_DX]
    proc = [f"PROC//{10021 + 13 * i}" for i in range(_N_TAIL_PROC)]
    codes = dx + proc + list(home_medications())
    order = rng.permutation(len(codes))
    return tuple(codes[i] for i in order)


def tail_weights(n: int) -> np.ndarray:
    """Zipf-Mandelbrot choice probabilities over the long tail: a few hundred common codes and
    tens of thousands seen a handful of times in 100,000 visits, as in real code vocabularies."""
    p = 1.0 / (np.arange(n) + 20.0) ** 1.1
    return p / p.sum()
