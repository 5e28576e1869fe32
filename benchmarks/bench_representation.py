"""What has a pretrained encoder learned of the synthetic cohort's hidden structure? Three probes
of each encoder (the second also of bag-of-codes counts, for comparison):

1. code families: do the input embeddings of one chronic condition's synonymous codes sit
   together? The share of family codes whose nearest neighbour (cosine) is of the same family
   (chance: about 0.02), and the mean cosine within a family against that across families;
2. the latent state: each chronic condition (AUROC) and frailty (R2) decoded by a logistic /
   ridge regression from the visit vector of each readout (`--readout`: "pooled", the pooled
   vector under [CLS] and mean pooling; "segments", the segment readout of
   `EHREncoder.readout`), fitted on train visits and scored on test visits (the true state comes
   from regenerating the cohort); with two diagnostics of where the state is lost: "embedding
   bag" (the visit's code counts times the encoder's input embedding table: its codes with no
   attention) and the counts through a random projection to the encoder's width (how much any
   D numbers of linear summary allow); `--random-features K` adds a wide readout no training
   chose: the mean of ReLU(W h + b) over the visit's statics and event token states, W fixed
   random (D x K);
3. admission: a logistic regression on the visit vectors of a label budget of train visits,
   C chosen on the budget's val visits, test AUROC.

WORK is a `bench_label_efficiency.py` or `bench_cohort_signal.py` work directory (its
cohort.json says how to regenerate the cohort; the stamp is checked); TOKENS the tokens
directory the encoders were pretrained on.

usage: python benchmarks/bench_representation.py --work WORK --tokens TOKENS \
           --encoders RUN/pretrain/encoder[,RUN2/pretrain/encoder] [--budget 1000] \
           [--latent-train 4000] [--readout pooled,segments] [--projection-widths 64,256] \
           [--random-features 256,1024]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import torch
from cohort_workdir import stamped_cohort
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.preprocessing import MaxAbsScaler, StandardScaler

from ehr_ssl.config import READOUTS
from ehr_ssl.data.synthetic import CONDITIONS
from ehr_ssl.evaluation.baselines import count_features
from ehr_ssl.model.encoder import POOLINGS, EHREncoder
from ehr_ssl.model.pretraining import ENCODER_INPUTS
from ehr_ssl.tokens.batching import TokenDataset, collate
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import NOT_EVENT_IDS
from ehr_ssl.training.budgets import budget_split
from ehr_ssl.training.device import resolve_device
from ehr_ssl.training.finetune import labeled_split
from ehr_ssl.training.probe import pooled_vectors, pooled_vectors_by_pooling

N_NAMED = 12  # CONDITIONS: the named conditions first, then the minor ones
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 1.0)


def family_structure(encoder: EHREncoder, vocab: list[str]) -> dict:
    """Nearest-neighbour family purity of the code embeddings, and their mean cosine within a
    family against that between codes of different families. Codes of two conditions (home
    medications such as spironolactone, of heart failure and of cirrhosis) are left out: their
    family is ambiguous."""
    index = {code: i for i, code in enumerate(vocab)}
    owners: dict[int, set[int]] = {}
    for k, condition in enumerate(CONDITIONS):
        for code in condition.dx_family + condition.med_family:
            if code in index:
                owners.setdefault(index[code], set()).add(k)
    ids = np.array([i for i, ks in owners.items() if len(ks) == 1])
    family = np.array([next(iter(owners[i])) for i in ids])
    e = encoder.code_table().detach().cpu().numpy()
    e = e - e.mean(0)  # cosine around the centroid: the shared frequency direction removed
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    sim = e[ids] @ e[ids].T  # (F, F) over the single-family codes in the vocabulary
    np.fill_diagonal(sim, -np.inf)
    purity = float(np.mean(family[sim.argmax(1)] == family))
    same = family[:, None] == family[None, :]
    np.fill_diagonal(same, False)
    other = family[:, None] != family[None, :]
    return {
        "family_codes": len(ids),
        "nn_purity": purity,
        "within_cosine": float(sim[same].mean()),
        "other_family_cosine": float(sim[other].mean()),
    }


def decode_latent(
    x_train: np.ndarray,
    x_test: np.ndarray,
    latent_train: pl.DataFrame,
    latent_test: pl.DataFrame,
    scaler: StandardScaler | MaxAbsScaler,
) -> dict:
    """Mean AUROC of decoding each condition (named, minor) and frailty R2 from features.

    Shape: x (N, F) dense or sparse, latent (N rows: frailty and one column per condition).
    """
    scaler = scaler.fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    names = [c.name for c in CONDITIONS]
    aucs = []
    for name in names:
        y_train, y_test = latent_train[name].to_numpy(), latent_test[name].to_numpy()
        if y_train.sum() < 20 or y_test.sum() < 5:  # too rare in this sample to score
            aucs.append(np.nan)
            continue
        model = LogisticRegression(C=0.1, max_iter=2000).fit(x_train, y_train)
        aucs.append(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))
    frailty = Ridge(alpha=10).fit(x_train, latent_train["frailty"].to_numpy())
    return {
        "named_auroc": float(np.nanmean(aucs[:N_NAMED])),
        "minor_auroc": float(np.nanmean(aucs[N_NAMED:])),
        "frailty_r2": float(r2_score(latent_test["frailty"], frailty.predict(x_test))),
    }


def admission_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> dict:
    """Logistic regression on standardized features, C by val AUROC; its test AUROC.

    Shape: x (N, D), y (N,) 0/1 for each split.
    """
    scaler = StandardScaler().fit(x_train)
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
        model.fit(scaler.transform(x_train), y_train)
        val = roc_auc_score(y_val, model.predict_proba(scaler.transform(x_val))[:, 1])
        if best is None or val > best[0]:
            best = (val, c, model)
    val, c, model = best
    test = roc_auc_score(y_test, model.predict_proba(scaler.transform(x_test))[:, 1])
    return {"C": c, "val_auroc": float(val), "test_auroc": float(test)}


@torch.no_grad()
def random_feature_vectors(
    encoder: EHREncoder, dataset: TokenDataset, device: torch.device, widths: list[int]
) -> dict[str, np.ndarray]:
    """The mean over each visit's tokens other than [CLS], separators and padding (its statics
    and events, as the pooled mean reads them less [CLS]) of ReLU(W h + b), h the final token state
    standardized across its D numbers, W (D x K) and b fixed Gaussian draws (seed 0): a wide
    readout that no training chose. Does the same token states' content, pooled after a
    nonlinearity rather than before it, hold more than their D-wide mean?
    Shape: {"random features K": (N, K)}."""
    generator = torch.Generator().manual_seed(0)
    d = encoder.config.hidden_size
    draws = {k: (torch.randn(d, k, generator=generator) / d**0.5,
                 torch.randn(k, generator=generator) * 0.5 - 0.5) for k in widths}  # fmt: skip
    out: dict[int, list[torch.Tensor]] = {k: [] for k in widths}
    not_events = torch.tensor(NOT_EVENT_IDS)
    for start in range(0, len(dataset), 256):
        batch = collate([dataset[i] for i in range(start, min(start + 256, len(dataset)))])
        inputs = {k: batch[k].to(device) for k in ENCODER_INPUTS}
        hidden = encoder(**inputs).last_hidden_state.cpu()  # (B, T, D)
        read = inputs["attention_mask"].bool().cpu() & ~torch.isin(
            inputs["input_ids"].cpu(), not_events.to(inputs["input_ids"].dtype)
        )  # (B, T): statics and events
        weights = read.float()[..., None] / read.sum(1).clamp_min(1)[:, None, None]
        h = (hidden - hidden.mean(-1, keepdim=True)) / (hidden.std(-1, keepdim=True) + 1e-5)
        for k, (w, b) in draws.items():
            out[k].append((torch.relu(h @ w + b) * weights).sum(1))
    return {f"random features {k}": torch.cat(v).numpy() for k, v in out.items()}


def visit_vectors(
    encoder: EHREncoder,
    datasets: dict[str, TokenDataset],
    readouts: list[str],
    device: torch.device,
) -> dict[str, dict[str, np.ndarray]]:
    """Each feature set's vectors per split: "cls" and "mean" for the pooled readout (one forward
    pass per batch), and each other readout under its name. Shape: (N, R)."""
    features: dict[str, dict[str, np.ndarray]] = {}
    if "pooled" in readouts:
        by_pooling = {s: pooled_vectors_by_pooling(encoder, d, device, POOLINGS)
                      for s, d in datasets.items()}  # fmt: skip
        features |= {p: {s: v[p] for s, v in by_pooling.items()} for p in POOLINGS}
    for readout in (r for r in readouts if r != "pooled"):  # "segments", "windows"
        features[readout] = {s: pooled_vectors(encoder, d, device, readout=readout)
                             for s, d in datasets.items()}  # fmt: skip
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--encoders", default="", help="comma-separated encoder directories")
    parser.add_argument(
        "--projection-widths", help="widths of the random projections of the counts [encoders']"
    )
    parser.add_argument(
        "--random-features", help="widths K of the random ReLU readouts of the token states"
    )
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--latent-train", type=int, default=4000, help="train visits, probe 2")
    parser.add_argument(
        "--readout", default="pooled", help=f"comma-separated, of {', '.join(READOUTS)}"
    )
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    readouts = args.readout.split(",")
    if not readouts or set(readouts) - set(READOUTS):
        parser.error(f"--readout: choose from {', '.join(READOUTS)}, got {args.readout!r}")
    torch.set_num_threads(2)

    cohort = stamped_cohort(args.work)
    tokenizer = Tokenizer.load(args.tokens)

    splits = {s: read_split(args.tokens, s) for s in ("train", "val", "test")}  # read once
    # Probe 2's visits: a sample of train visits and all test visits, labeled or not.
    sample = splits["train"].sample(n=args.latent_train, seed=0)["visit_id"]
    datasets = {
        "train": TokenDataset(args.tokens, pl.col("visit_id").is_in(sample.implode()),
                              splits=["train"]),
        "test": TokenDataset(args.tokens, pl.lit(True), splits=["test"]),
    }  # fmt: skip
    frames = {  # token frames in dataset order, for the counts
        s: d.meta.select("visit_id").join(
            splits[s], on="visit_id", how="left", maintain_order="left"
        )
        for s, d in datasets.items()
    }
    latent = {
        s: d.meta.select("patient_id").join(
            cohort.latent, on="patient_id", how="left", maintain_order="left"
        )
        for s, d in datasets.items()
    }
    # Probe 3's visits: the label budget (as the pipeline draws it, seed 0) and the test split.
    labeled = {s: splits[s].filter(pl.col("labeled")) for s in ("train", "val")}
    train_ids, val_ids = budget_split(  # holdout: the probes are judged on the val split
        labeled["train"],
        labeled["val"],
        args.budget,
        seed=0,
        selection="holdout",
        cv_max_labels=0,
    )
    budget = {
        "train": labeled_split(args.tokens, "train", train_ids),
        "val": labeled_split(args.tokens, "val", val_ids),
        "test": labeled_split(args.tokens, "test"),
    }

    v, b = tokenizer.vocab_size, tokenizer.config.n_bins
    counts = {s: count_features(f, vocab_size=v, n_bins=b) for s, f in frames.items()}
    rows = {"counts": {"latent": decode_latent(counts["train"], counts["test"], latent["train"],
                                               latent["test"], MaxAbsScaler())}}  # fmt: skip
    # How much do D numbers per visit allow? The code counts through a random Gaussian
    # projection to D (the encoders' width, or --projection-widths): a linear summary that
    # knows nothing of the families.
    encoders = args.encoders.split(",") if args.encoders else []
    features_widths = [int(k) for k in (args.random_features or "").split(",") if k]
    widths = [int(w) for w in args.projection_widths.split(",")] if args.projection_widths else [
        EHREncoder.from_pretrained(encoders[0]).config.hidden_size
    ]  # fmt: skip
    for width in widths:
        projection = np.random.default_rng(0).normal(size=(v, width))
        projected = {s: counts[s][:, :v] @ projection for s in counts}
        rows[f"counts, random projection to {width}"] = {"latent": decode_latent(
            projected["train"], projected["test"], latent["train"], latent["test"],
            StandardScaler(),
        )}  # fmt: skip
    features = []  # the feature sets of each encoder: poolings of "pooled", then "segments"
    for directory in encoders:
        encoder = EHREncoder.from_pretrained(directory).eval().to(device)
        rows[directory] = {"families": family_structure(encoder, tokenizer.vocab)}
        vectors = visit_vectors(encoder, datasets, readouts, device)
        budget_vectors = visit_vectors(encoder, budget, readouts, device)
        pairs = ((vectors, datasets), (budget_vectors, budget)) if features_widths else ()
        for where, sets in pairs:
            by_split = {s: random_feature_vectors(encoder, d, device, features_widths)
                        for s, d in sets.items()}  # fmt: skip
            for name in by_split["train"]:
                where[name] = {s: v[name] for s, v in by_split.items()}
        # The same encoder's input code embeddings, summed over the visit's code counts, with
        # no attention: does the embedding table separate the families that pooling loses?
        table = encoder.code_table().detach().cpu().numpy()  # (V, D)
        vectors["embedding bag"] = {s: counts[s][:, :v] @ table for s in datasets}
        features = list(vectors)
        for name in features:
            x, xb = vectors[name], budget_vectors.get(name)
            rows[directory][name] = {
                "latent": decode_latent(x["train"], x["test"], latent["train"], latent["test"],
                                        StandardScaler()),
            }  # fmt: skip
            if xb is not None:
                rows[directory][name]["admission"] = admission_probe(
                    xb["train"], budget["train"].labels, xb["val"], budget["val"].labels,
                    xb["test"], budget["test"].labels)  # fmt: skip
        f = rows[directory]["families"]
        print(
            f"{directory}: family NN purity {f['nn_purity']:.3f}, within-family cosine "
            f"{f['within_cosine']:.3f} (across families {f['other_family_cosine']:.3f})"
        )
    print("\n| features | named conditions AUROC | minor conditions AUROC | frailty R2 | "
          f"admission probe @{args.budget} (test AUROC) |\n|---|---|---|---|---|")  # fmt: skip
    for name, row in rows.items():
        baseline = name.startswith("counts")
        for pooling in ("latent",) if baseline else features:
            cell = row if baseline else row[pooling]
            lat = cell["latent"]
            probe = f"{cell['admission']['test_auroc']:.3f}" if "admission" in cell else "-"
            label = name if baseline else f"{name} ({pooling})"
            print(f"| {label} | {lat['named_auroc']:.3f} | {lat['minor_auroc']:.3f} | "
                  f"{lat['frailty_r2']:.3f} | {probe} |")  # fmt: skip
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
