"""Synthetic cohort: generation speed and the cohort's headline properties.

Generates and writes N visits, then reports wall time, peak RSS, events per visit, distinct
codes, label prevalence and the oracle AUROC (true admission probability against the labels of
the labeled visits: the ceiling any model can reach on this cohort).

usage: python benchmarks/bench_synth.py --visits 1000000 [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

from ehr_ssl.data.synthetic import DEFAULT_COHORT_VERSION, generate_cohort, write_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=1_000_000)
    parser.add_argument(
        "--cohort-version",
        type=int,
        default=DEFAULT_COHORT_VERSION,
        help="synthetic cohort version (1: the figures recorded before 2026-12-04 (fifth session))",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labeled-frac", type=float, default=0.05)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        started = time.perf_counter()
        cohort = generate_cohort(
            args.visits,
            labeled_frac=args.labeled_frac,
            seed=args.seed,
            version=args.cohort_version,
        )
        generated = time.perf_counter()
        write_cohort(cohort, work / "data")
        written = time.perf_counter()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    labeled = cohort.labels.join(cohort.oracle, on="visit_id")
    result = {
        "visits": args.visits,
        "seed": args.seed,
        "generate_seconds": round(generated - started, 2),
        "write_seconds": round(written - generated, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "events": cohort.events.height,
        "events_per_visit": round(cohort.events.height / args.visits, 2),
        "distinct_codes": cohort.events["code"].n_unique(),
        "patients": cohort.visits["patient_id"].n_unique(),
        "labeled_visits": labeled.height,
        "prevalence": round(labeled["label"].mean(), 4),
        "oracle_auroc_on_labeled": round(
            roc_auc_score(labeled["label"], labeled["admission_probability"]), 4
        ),
        "mean_true_probability": round(cohort.oracle["admission_probability"].mean(), 4),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
