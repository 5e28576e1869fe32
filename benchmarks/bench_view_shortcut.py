"""Can the contrastive objective be solved without the history? A diagnostic of the views
(issue 19): for batches of train visits, two views per visit are drawn as pretraining draws
them, and each view is reduced to a bag of its tokens (code, value bin) from one part of the
visit only. The share of visits whose partner view is the strict nearest neighbour (cosine of
the bags) among the batch's other visits' views is reported per part:

- statics + current visit: what the views share besides the history;
- history: where the chronic state lives;
- all tokens.

If statics + current visit alone find the partner nearly always, the InfoNCE loss can be driven
down without reading the history, and the encoder is not pushed to represent it. No model is
involved: this measures the views, so it reads the same before and after training.

`--views disjoint` draws the pair as `objective.contrastive_views = "disjoint"` does (history
encounters split between the views, statics and current visit in view A only). `--views patient`
as `"patient"` does: view B is another train visit of the same patient (both views augmented);
only visits that have such a partner are scored, and other rows of the same patient are no
candidates (they are no negatives in the loss either).

usage: python benchmarks/bench_view_shortcut.py --tokens TOKENS [--batch-size 128]
           [--batches 20] [--seed 0] [--views augment|disjoint|patient]
       python benchmarks/bench_view_shortcut.py --visits 20000   (synthesize and tokenize)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from ehr_ssl.config import ObjectiveConfig, TokenizeConfig
from ehr_ssl.data.synthetic import DEFAULT_COHORT_VERSION
from ehr_ssl.model.views import augment_view, disjoint_views
from ehr_ssl.tokens.batching import TokenDataset, collate
from ehr_ssl.tokens.pairs import PatientVisits
from ehr_ssl.tokens.vocab import (
    CLS_ID,
    HIST_ID,
    MASK_ID,
    PAD_ID,
    SEGMENT_CURRENT,
    SEGMENT_HISTORY,
    SEGMENT_STATIC,
    VISIT_ID,
)

BIN_SLOTS = 128  # value bins per code in a bag's columns (tokenizer.n_bins is at most 100)
STRUCTURAL = (PAD_ID, MASK_ID, CLS_ID, HIST_ID, VISIT_ID)  # never part of a bag
PARTS = {
    "statics_and_current": (SEGMENT_STATIC, SEGMENT_CURRENT),
    "history": (SEGMENT_HISTORY,),
    "all": (SEGMENT_STATIC, SEGMENT_HISTORY, SEGMENT_CURRENT),
}


def bags(view: dict[str, torch.Tensor], segments: tuple[int, ...]) -> sp.csr_matrix:
    """Rows: visits; columns: (code, value bin) pairs; values: counts, L2-normalized.
    Only tokens of `segments` count. Shape: (B, T) view -> (B, vocab * n_bins) sparse."""
    ids = view["input_ids"].numpy()
    keep = view["attention_mask"].numpy() & np.isin(view["segment_ids"].numpy(), segments)
    keep &= ~np.isin(ids, STRUCTURAL)
    rows, cols = np.nonzero(keep)
    keys = ids[rows, cols].astype(np.int64) * BIN_SLOTS + view["value_bins"].numpy()[rows, cols]
    width = int(keys.max()) + 1 if keys.size else 1
    matrix = sp.csr_matrix((np.ones(len(rows)), (rows, keys)), shape=(ids.shape[0], width))
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1))).ravel()
    return sp.diags(1.0 / np.maximum(norms, 1e-12)) @ matrix


def top1_retrieval(
    a: sp.csr_matrix, b: sp.csr_matrix, excluded: np.ndarray | None = None
) -> np.ndarray:
    """Per visit i, whether view b_i is strictly nearer to a_i than every other b_j that
    `excluded[i, j]` does not rule out (ties and empty bags count as misses).
    Shape: (B, B) bool excluded -> (B,) bool."""
    width = max(a.shape[1], b.shape[1])
    a = sp.csr_matrix(a, shape=(a.shape[0], width)) if a.shape[1] < width else a
    b = sp.csr_matrix(b, shape=(b.shape[0], width)) if b.shape[1] < width else b
    similarity = (a @ b.T).toarray()
    own = np.diag(similarity).copy()
    if excluded is not None:
        similarity[excluded] = -np.inf
    np.fill_diagonal(similarity, -np.inf)
    return (own > similarity.max(axis=1)) & (own > 0)


def draw_pair(
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    objective: ObjectiveConfig,
    views: str,
    partner: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The contrastive pair as PretrainingModel draws it (without the masking of view A);
    "patient" views augment `batch` and `partner`, the partner visits."""
    if views == "disjoint":
        return disjoint_views(batch, generator=generator)
    sources = (batch, partner) if views == "patient" else (batch, batch)
    return tuple(
        augment_view(
            source,
            generator=generator,
            event_dropout=objective.event_dropout,
            history_crop=objective.history_crop,
            time_jitter=objective.time_jitter,
        )
        for source in sources
    )


def draw_batch(
    dataset: TokenDataset,
    patients: PatientVisits | None,
    size: int,
    rng: np.random.Generator,
) -> tuple[dict, dict | None, np.ndarray, np.ndarray | None]:
    """A random batch of visits; with `patients`, also their partner visits (the visit itself
    where it has none), whether each has one, and which candidates are the same patient.
    Returns (batch, partner batch, scored rows (B,) bool, excluded candidates (B, B) bool)."""
    rows = rng.choice(len(dataset), size=min(size, len(dataset)), replace=False)
    batch = collate([dataset[int(i)] for i in rows])
    if patients is None:
        return batch, None, np.ones(len(rows), dtype=bool), None
    partners = patients.draw_partners(rows, rng)
    paired = partners >= 0
    partner = collate([dataset[int(j)] for j in np.where(paired, partners, rows)])
    groups = patients.groups(rows)
    excluded = (groups[:, None] == groups[None, :]) | ~paired[None, :]
    return batch, partner, paired, excluded


def measure(tokens: Path, batch_size: int, batches: int, seed: int, views: str = "augment") -> dict:
    """Top-1 retrieval of the partner view per part of the visit, over `batches` random batches
    of train visits, with views drawn as `objective.contrastive_views = views` draws them (the
    default augmentation knobs)."""
    dataset = TokenDataset(tokens, pl.lit(True), splits=["train"])
    patients = PatientVisits.of_dataset(dataset) if views == "patient" else None
    objective = ObjectiveConfig()
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    hits = {part: [] for part in PARTS}
    has_history, n_rows = [], 0
    for _ in range(batches):
        batch, partner, scored, excluded = draw_batch(dataset, patients, batch_size, rng)
        view_a, view_b = draw_pair(batch, generator, objective, views, partner)
        for part, segments in PARTS.items():
            a, b = bags(view_a, segments), bags(view_b, segments)
            hits[part].append(top1_retrieval(a, b, excluded)[scored])
        history_events = (batch["segment_ids"].numpy() == SEGMENT_HISTORY) & ~np.isin(
            batch["input_ids"].numpy(), STRUCTURAL
        )
        has_history.append(history_events.any(axis=1)[scored])
        n_rows += len(scored)
    with_history = np.concatenate(has_history)
    result = {"views": views, "batch_size": batch_size, "batches": batches}
    result["visits"] = int(len(with_history))  # scored: with "patient", those with a partner
    result["share_scored"] = round(len(with_history) / n_rows, 4)
    result["share_with_history"] = round(float(with_history.mean()), 4)
    for part, found in hits.items():
        found = np.concatenate(found)
        result[f"top1_{part}"] = round(float(found.mean()), 4)
        result[f"top1_{part}_visits_with_history"] = round(float(found[with_history].mean()), 4)
    return result


def synthesize(visits: int, work: Path, cohort_version: int) -> Path:
    from ehr_ssl.data.synthetic import generate_cohort, write_cohort
    from ehr_ssl.tokens.tokenize import tokenize_dataset

    write_cohort(
        generate_cohort(visits, labeled_frac=0.3, seed=0, version=cohort_version), work / "data"
    )
    tokenize_dataset(work / "data", work / "tokens", TokenizeConfig())
    return work / "tokens"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=Path, help="a tokens directory (else --visits)")
    parser.add_argument("--visits", type=int, default=20_000, help="synthetic visits [20000]")
    parser.add_argument(
        "--cohort-version",
        type=int,
        default=DEFAULT_COHORT_VERSION,
        help="synthetic cohort version (1: the figures recorded before 2026-12-04 (fifth session))",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="the small preset's [128]")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", choices=("augment", "disjoint", "patient"), default="augment")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-view-shortcut-") as work:
        tokens = args.tokens or synthesize(args.visits, Path(work), args.cohort_version)
        result = measure(tokens, args.batch_size, args.batches, args.seed, args.views)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
