"""What a visit vector keeps of what a tabular model reads: the R2 of a ridge regression from an
encoder's visit vectors (a readout) to simple quantities read off each visit's own tokens: the
current visit's triage (ESI) and vital-sign value bins, the age bin, the history's volume, its
inpatient admissions and its last creatinine bin, and the current visit's event count. Fitted
on a sample of train visits, scored on every test visit. A quantity the vector keeps at a low
R2 is one that a few labels cannot get back from it, however a classifier is selected.

Codes are those of the synthetic cohort (`ehr-ssl synth`); a code absent from the vocabulary
reads as 0 (no value).

usage: python benchmarks/bench_visit_features.py --tokens RUN/tokens \
           --encoders A/encoder,B/encoder [--readouts pooled,segments] [--train 4000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl
import torch
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score

from ehr_ssl.model.encoder import EHREncoder
from ehr_ssl.tokens.batching import TokenDataset
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import SEGMENT_CURRENT, SEGMENT_HISTORY
from ehr_ssl.training.probe import pooled_vectors

# quantity -> (code, segment): the value bin of the code's last event in that segment
LAST_BIN = {
    "esi_bin": ("TRIAGE//ESI", SEGMENT_CURRENT),
    "sbp_bin": ("VITAL//SBP", SEGMENT_CURRENT),
    "spo2_bin": ("VITAL//SPO2", SEGMENT_CURRENT),
    "hr_bin": ("VITAL//HR", SEGMENT_CURRENT),
    "age_bin": ("STATIC//age", 0),
    "last_creatinine_bin_history": ("LAB//CREATININE", SEGMENT_HISTORY),
}


def visit_quantities(frame: pl.DataFrame, vocab: list[str]) -> dict[str, np.ndarray]:
    """Each quantity per visit of a token frame (input_ids, value_bins, segment_ids lists).
    Shape: (N,) each."""
    index = {code: i for i, code in enumerate(vocab)}
    admit = index.get("ADMIT//INPATIENT", -1)
    out: dict[str, list[float]] = {name: [] for name in LAST_BIN}
    out |= {"log_history_events": [], "history_admissions": [], "current_events": []}
    for ids, bins, segments in zip(
        frame["input_ids"], frame["value_bins"], frame["segment_ids"], strict=True
    ):
        ids, bins, segments = np.asarray(ids), np.asarray(bins), np.asarray(segments)
        for name, (code, segment) in LAST_BIN.items():
            hit = (ids == index.get(code, -1)) & (segments == segment)
            out[name].append(float(bins[hit][-1]) if hit.any() else 0.0)
        history = segments == SEGMENT_HISTORY
        out["log_history_events"].append(float(np.log1p(history.sum())))
        out["history_admissions"].append(float(((ids == admit) & history).sum()))
        out["current_events"].append(float((segments == SEGMENT_CURRENT).sum()))
    return {name: np.asarray(values) for name, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--encoders", required=True, help="comma-separated encoder directories")
    parser.add_argument("--readouts", default="pooled")
    parser.add_argument("--train", type=int, default=4000, help="train visits to fit on")
    args = parser.parse_args()
    torch.set_num_threads(2)
    vocab = Tokenizer.load(args.tokens).vocab
    sample = read_split(args.tokens, "train").sample(n=args.train, seed=0)["visit_id"].implode()
    chosen = {"train": pl.col("visit_id").is_in(sample), "test": pl.lit(True)}
    # A dataset's rows are its split's shard rows that pass the filter, in shard order.
    frames = {s: read_split(args.tokens, s).filter(f) for s, f in chosen.items()}
    datasets = {s: TokenDataset(args.tokens, f, splits=[s]) for s, f in chosen.items()}
    targets = {s: visit_quantities(frame, vocab) for s, frame in frames.items()}
    names = list(targets["train"])
    print("| encoder | readout | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for encoder_dir in args.encoders.split(","):
        encoder = EHREncoder.load_checked(Path(encoder_dir))
        for readout in args.readouts.split(","):
            x = {s: pooled_vectors(encoder, d, torch.device("cpu"), readout=readout)
                 for s, d in datasets.items()}  # fmt: skip
            r2 = []
            for name in names:
                ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(
                    x["train"], targets["train"][name]
                )
                r2.append(r2_score(targets["test"][name], ridge.predict(x["test"])))
            print(f"| {encoder_dir} | {readout} | " + " | ".join(f"{v:.2f}" for v in r2) + " |")


if __name__ == "__main__":
    main()
