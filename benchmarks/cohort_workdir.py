"""A benchmark's work directory holds one synthetic cohort; reuse it only for the same cohort.

`--work DIR` lets a long benchmark be rerun without regenerating its data, but a directory made
with other arguments, or by an older version of the generator, would silently hold another
cohort. The stamp records the arguments and a digest of the cohort's true admission
probabilities (they depend on every latent draw, so any change to the recipe changes them) and
of its labels.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ehr_ssl.data.synthetic import Cohort, generate_cohort, write_cohort


def cohort_stamp(cohort: Cohort, **made: object) -> dict:
    """The arguments the cohort was made with, plus a sha256 of its oracle probabilities and its
    labels (which visits are labeled, and how)."""
    digest = hashlib.sha256()
    digest.update(cohort.oracle.sort("visit_id")["admission_probability"].to_numpy().tobytes())
    labels = cohort.labels.sort("visit_id")
    digest.update(labels["visit_id"].to_numpy().tobytes())
    digest.update(labels["label"].to_numpy().tobytes())
    return {**made, "cohort_sha256": digest.hexdigest()}


def write_or_reuse(cohort: Cohort, work: Path, stamp: dict) -> bool:
    """Write `cohort` to work/data and the stamp beside it; returns False (and writes nothing)
    when work already holds the same cohort.

    Raises:
        SystemExit: If work holds a cohort with another stamp (or data without a stamp).
    """
    path = work / "cohort.json"
    if path.exists() or (work / "data").exists():
        found = json.loads(path.read_text()) if path.exists() else "no stamp"
        if found != stamp:
            raise SystemExit(
                f"{work} holds another cohort ({found}), not {stamp}; use a new --work"
            )
        return False
    write_cohort(cohort, work / "data")
    path.write_text(json.dumps(stamp))
    return True


def bench_stamp(cohort: Cohort, args) -> dict:
    """The stamp of a benchmark's cohort drawn from its --visits, --labeled-frac and
    --cohort-version (seed 0)."""
    return cohort_stamp(
        cohort,
        visits=args.visits,
        labeled_frac=args.labeled_frac,
        seed=0,
        cohort_version=args.cohort_version,
    )


def stamped_cohort(work: Path) -> Cohort:
    """The cohort a work directory's stamp (cohort.json) was made from, regenerated (its latent
    state is never written), checked against the stamp.

    Raises:
        SystemExit: If the generator no longer makes the stamped cohort.
    """
    made = json.loads((work / "cohort.json").read_text())
    version = made.get("cohort_version", 1)  # stamps before version 2 name none
    cohort = generate_cohort(
        made["visits"], labeled_frac=made["labeled_frac"], seed=made["seed"], version=version
    )
    if cohort_stamp(cohort, **{k: v for k, v in made.items() if k != "cohort_sha256"}) != made:
        raise SystemExit(f"{work}: the generator no longer makes the stamped cohort")
    return cohort
