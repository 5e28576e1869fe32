"""The few-label linear probe of pretrained encoders, as the pipeline selects it, over many label
subsets: for each encoder and readout, at each budget, a logistic regression on the frozen
visit vectors of a random subset of the train split's labeled visits, C chosen by 5-fold cv
over the subset grouped by patient (`fit_probe_cv`, the pipeline's few-label protocol), scored
on every labeled test visit. Every encoder gets the same subsets and test visits, so their
differences are paired; the spread is over label subsets (the test visits are fixed).

Cheaper than a pipeline run per pretraining variant (no fine-tuning; `--tabular` adds the tabular
baselines on the same subsets and folds, the reference to beat, and `--counts` the counts
logistic regression): the
screen that picks which variants are worth a full label-efficiency curve. At small budgets the
pipeline's SSL model mostly selects this probe (report.md, "Model selection").

usage: python benchmarks/bench_probe.py --tokens RUN/tokens \
           --encoders A/encoder,B/encoder [--budgets 100,300,1000] [--subsets 12,6,3] \
           [--readouts pooled,segments] [--tabular logistic,lightgbm] [--counts] \
           [--with-current-visit] \
           [--pca 8,16,32] [--forecast-codes 64,256] [--past-forecast-codes 64,256] \
           [--random-features 256,1024] \
           [--latent-work WORK] [--global-scale] [--heads] [--cv-rule best|one_se] \
           [--cv-metric auroc|log_loss] [--penalty-selection cv|evidence] \
           [--cv-repeats N] [--json FILE]

`--pca` and `--forecast-codes` try two unsupervised priors on the direction a few labels must
find: the vectors on their top-k principal axes (fitted on the labeled train visits' vectors,
no label read), and, in place of the vector, the pretraining forecast head's log-probabilities
of the k codes most frequent in those visits (one column per code the patient may meet next,
as a tabular model has one per code seen; the encoder's run directory must hold its heads).
`--past-forecast-codes` asks the same head with the visit read as a completed past encounter,
as the "forecast" readout reads it (its forecast state, the readout's last D columns; the
framing under which the head's admission log-odds score a visit without labels, "The forecast
readout" in benchmarks/README.md): those log-probabilities alone, and appended to the readout
(needs "forecast" among `--readouts`).
`--global-scale` asks whether the probe's scale per column is the right prior: each readout is
also probed with one scale for all its columns, without its log event-count columns, and on
those columns alone. `--heads` fits, beside the probe, three linear heads that choose no
regularization by cv: the nearest centroid (the probe's strong-L2 limit), shrinkage LDA, and
LDA whose covariance comes from every labeled train visit's vector (labels unread).
`--random-features` probes, beside each encoder's readouts, the mean over
each visit's statics and event tokens of ReLU(W h + b) with W fixed random (D x k): a wide
readout of the same token states, pooled after a nonlinearity
(`bench_representation.random_feature_vectors`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ehr_ssl.config import CV_METRICS, CV_RULES, PENALTY_SELECTIONS, READOUTS, FinetuneConfig
from ehr_ssl.evaluation.baselines import count_features, fit_counts_baseline_cv, predict_proba
from ehr_ssl.evaluation.tabular import TabularSpec
from ehr_ssl.model.encoder import EHREncoder, pooled_dim, readout_dim
from ehr_ssl.tokens.batching import TokenDataset
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import NOT_EVENT_IDS, SEGMENT_CURRENT
from ehr_ssl.training.probe import fit_probe_cv, pooled_vectors, probe_scores
from ehr_ssl.training.selection import C_GRID, cross_validate, cv_folds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forecast_zero_shot import forecast_head, forecast_logits  # noqa: E402
from bench_representation import random_feature_vectors  # noqa: E402
from cohort_workdir import stamped_cohort  # noqa: E402


def probe_curve(
    x_train: np.ndarray,
    y_train: np.ndarray,
    groups: np.ndarray,
    ids: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    budgets: dict[int, int],
    fit_cv=None,
    cv_rule: str = "best",
    cv_repeats: int = 1,
    cv_metric: str = "auroc",
    penalty_selection: str = "cv",
) -> dict[int, list[float]]:
    """Test AUROCs of the cv-selected probe at each budget, one per label subset (subset k of
    every budget drawn with seed 100 + k, its folds with seed k, so every encoder gets the same
    ones). `fit_cv(x, y, folds)` fits one model and returns `(x_test -> scores)`; the default
    is the pipeline's probe. `cv_rule`, `cv_repeats`, `cv_metric` and `penalty_selection` are
    the `finetune` settings of those names (the pipeline's defaults).
    Shape: x (N, D)."""
    fit_cv = fit_cv or probe_fit
    out = {}
    for budget, n_subsets in budgets.items():
        aurocs = []
        for k in range(n_subsets):
            draw = np.random.default_rng(100 + k)
            rows = np.sort(draw.choice(len(y_train), budget, replace=False))
            folds = cv_folds(y_train[rows], groups[rows], ids[rows], folds=5, repeats=cv_repeats,
                             seed=k, setting="bench_probe", rule=cv_rule,
                             metric=cv_metric, penalty=penalty_selection)  # fmt: skip
            score = fit_cv(x_train[rows], y_train[rows], folds)
            aurocs.append(float(roc_auc_score(y_test, score(x_test))))
        out[budget] = aurocs
    return out


def global_scale_fit(x: np.ndarray, y: np.ndarray, folds):
    """The probe with one scale for every column (the root mean column variance) in place of
    the pipeline's scale per column, so the L2 penalty keeps the vector's own geometry; C by
    cv over C_GRID as the pipeline's probe. A `probe_curve` fitter of dense vectors."""

    def fit(x_fit: np.ndarray, y_fit: np.ndarray, c: float) -> dict:
        mean = x_fit.mean(0)
        std = np.full_like(mean, np.sqrt(x_fit.var(0).mean()) + 1e-6)
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
        model.fit((x_fit - mean) / std, y_fit)
        return {"coef": model.coef_[0], "intercept": model.intercept_, "mean": mean, "std": std}

    def fit_score(params: dict, train: np.ndarray, val: np.ndarray) -> np.ndarray:
        return probe_scores(fit(x[train], y[train], params["C"]), x[val])

    params, _ = cross_validate(fit_score, y, folds, [{"C": c} for c in C_GRID])
    probe = fit(x, y, params["C"])
    return lambda x_test: probe_scores(probe, x_test)


def _standardizer(x: np.ndarray):
    """x -> (x - mean) / std with the columns' mean and std in `x`, as the probe standardizes."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    return lambda v: (v - mean) / std


def _mean_difference(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The positive class's mean minus the negative's. Shape: z (N, D) -> (D,)."""
    return z[y == 1].mean(0) - z[y == 0].mean(0)


def centroid_fit(x: np.ndarray, y: np.ndarray, folds):
    """The nearest-centroid rule on the standardized columns (the probe's limit as C -> 0:
    the difference of the class means, no covariance, nothing selected; `folds` unused)."""
    standardize = _standardizer(x)
    direction = _mean_difference(standardize(x), y)
    return lambda x_test: standardize(x_test) @ direction


def lda_fit(x: np.ndarray, y: np.ndarray, folds):
    """Linear discriminant analysis on the standardized columns, its covariance shrunk by the
    Ledoit-Wolf formula, not by cv (nothing selected; `folds` unused)."""
    standardize = _standardizer(x)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(standardize(x), y)
    return lambda x_test: lda.decision_function(standardize(x_test))


def unlabeled_covariance_fit(pool: np.ndarray):
    """LDA whose covariance is estimated on `pool` (every labeled train visit's vector, the
    labels unread: what unlabeled visits give for free) and whose class means come from the
    subset: the few labels only have to find the means."""
    standardize = _standardizer(pool)
    z = standardize(pool)
    precision = np.linalg.inv(np.cov(z, rowvar=False) + 1e-3 * np.eye(z.shape[1]))

    def fit(x: np.ndarray, y: np.ndarray, folds):
        direction = precision @ _mean_difference(standardize(x), y)
        return lambda x_test: standardize(x_test) @ direction

    return fit


def probe_fit(x: np.ndarray, y: np.ndarray, folds):
    """The pipeline's probe (`fit_probe_cv`) as a scorer of test rows."""
    probe = fit_probe_cv(x, y, folds)
    return lambda x_test: probe_scores(probe, x_test)


def baseline_fit(kind: str):
    """A counts-style baseline of `kind` (the pipeline's grid, cv-selected on the same folds as
    the probe) as a `probe_curve` fitter of sparse tabular features."""

    def fit(x, y, folds):
        model, _ = fit_counts_baseline_cv(kind, x, y, folds, seed=0)
        return lambda x_test: predict_proba(model, x_test)

    return fit


def tabular_rows(tokens: Path, y: dict, groups, ids, budgets: dict, kinds: list[str],
                 cv: dict | None = None) -> list:  # fmt: skip
    """The tabular baseline (`TabularSpec` features of the same visits) under each of `kinds`,
    on the same label subsets and folds as the encoders: the reference the probes must beat.
    `cv`: `probe_curve`'s cv settings."""
    spec = TabularSpec.from_tokens(tokens)
    x = {s: spec.features(read_split(tokens, s).filter(pl.col("labeled"))) for s in y}
    return _baseline_rows("tabular", x, y, groups, ids, budgets, kinds, cv)


def counts_rows(tokens: Path, y: dict, groups, ids, budgets: dict, cv: dict) -> list:
    """The counts logistic regression (the pipeline's counts features and model) on the same
    label subsets and folds as the encoders."""
    tokenizer = Tokenizer.load(tokens)
    sizes = {"vocab_size": tokenizer.vocab_size, "n_bins": tokenizer.config.n_bins}
    x = {s: count_features(read_split(tokens, s).filter(pl.col("labeled")), **sizes) for s in y}
    return _baseline_rows("counts", x, y, groups, ids, budgets, ["logistic"], cv)


def _baseline_rows(features: str, x: dict, y: dict, groups, ids, budgets: dict,
                   kinds: list[str], cv: dict | None) -> list:  # fmt: skip
    """A row per baseline kind on the sparse features `x` (each split's), named
    "{features} {kind}"."""
    rows = []
    for kind in kinds:
        curve = probe_curve(x["train"], y["train"], groups, ids, x["test"], y["test"], budgets,
                            fit_cv=baseline_fit(kind), **(cv or {}))  # fmt: skip
        rows.append(_row(f"{features} {kind}", f"{features} features", curve, budgets))
    return rows


def latent_rows(work: Path, tokens: Path, labeled: dict, y: dict, groups, ids, budgets: dict,
                current: dict, cv: dict | None = None) -> list:  # fmt: skip
    """A perfect representation of the history, on the same label subsets and folds: the
    cohort's true latent state (frailty, chronic conditions; regenerated from `work`'s stamp)
    beside the current visit's one-hots (the probe), and beside the tabular features (the
    tabular logistic regression). What bounds any encoder's probe at each budget."""
    cohort = stamped_cohort(work)
    state = {s: frame.select("patient_id").join(cohort.latent, on="patient_id", how="left",
                                                 maintain_order="left").drop("patient_id")
             for s, frame in labeled.items()}  # fmt: skip
    state = {s: v.to_numpy().astype(np.float64) for s, v in state.items()}
    spec = TabularSpec.from_tokens(tokens)
    tabular = {s: sp.hstack([spec.features(frame), state[s]]).tocsr()
               for s, frame in labeled.items()}  # fmt: skip
    rows = []
    for name, z, fit in (
        ("true latent state + current visit", {s: np.hstack([state[s], current[s]]) for s in y},
         None),
        ("true latent state + tabular", tabular, baseline_fit("logistic")),
    ):  # fmt: skip
        curve = probe_curve(z["train"], y["train"], groups, ids, z["test"], y["test"], budgets,
                            fit_cv=fit, **(cv or {}))  # fmt: skip
        rows.append(_row("(no encoder)", name, curve, budgets))
    return rows


def current_visit_onehots(frames: dict[str, pl.DataFrame], tokenizer: Tokenizer) -> dict:
    """Each visit's current-visit events as one-hot (code, value bin) columns, the columns any
    train visit has: the triage and first results a tabular model reads exactly, to measure
    how much of the probe's gap they are. Shape: (N, C) per split."""
    n_values = tokenizer.config.n_bins + 1  # bins 1..n and 0 = no value
    out = {}
    for split, frame in frames.items():
        ids, bins, segments = (np.concatenate(frame[c].to_list()) for c in
                               ("input_ids", "value_bins", "segment_ids"))  # fmt: skip
        rows = np.repeat(np.arange(frame.height), frame["length"].to_numpy())
        chosen = (segments == SEGMENT_CURRENT) & ~np.isin(ids, NOT_EVENT_IDS)
        columns = ids[chosen].astype(np.int64) * n_values + bins[chosen]
        shape = (frame.height, tokenizer.vocab_size * n_values)
        out[split] = sp.csr_matrix((np.ones(columns.size), (rows[chosen], columns)), shape=shape)
    seen = np.unique(out["train"].nonzero()[1])
    return {split: m[:, seen].toarray() for split, m in out.items()}


def pca_features(x: dict[str, np.ndarray], widths: list[int]) -> dict[str, dict]:
    """Each split's vectors on the top-k principal axes of the train split's vectors, for each k
    of `widths`; no label is read. Shape: (N, D) per split -> (N, k)."""
    mean = x["train"].mean(axis=0)
    _, _, axes = np.linalg.svd(x["train"] - mean, full_matrices=False)
    return {f"pca {k}": {s: (v - mean) @ axes[:k].T for s, v in x.items()} for k in widths}


@torch.no_grad()
def forecast_features(encoder_dir: Path, encoder, datasets: dict, frames: dict, widths) -> dict:
    """The forecast head's log-probabilities (over the vocabulary, from the pooled vector, as it
    was trained) of the k codes most frequent in the train split's visits, for each k of
    `widths`. Shape: (N, k) per split."""
    head = forecast_head(encoder_dir.parent, encoder.eval())
    logprobs = {}
    for split, dataset in datasets.items():
        pooled = torch.from_numpy(pooled_vectors(encoder, dataset, torch.device("cpu")))
        logprobs[split] = torch.log_softmax(head(pooled, encoder.code_table()), -1).numpy()
    ranked = _most_frequent_codes(frames, logprobs["train"].shape[1])
    return {f"forecast codes {k}": {s: v[:, ranked[:k]] for s, v in logprobs.items()}
            for k in widths}  # fmt: skip


@torch.no_grad()
def past_forecast_features(encoder_dir: Path, encoder, readouts: dict, frames: dict,
                           widths) -> dict:  # fmt: skip
    """The forecast head's log-probabilities of the k most frequent train codes (as
    `forecast_features`) from the state of the "forecast" readout (`readouts`, each split's:
    the visit read as a completed past encounter), for each k of `widths`: alone, and appended
    to the readout. Shape: readouts (N, R) -> (N, k) and (N, R + k) per split."""
    logits = forecast_logits(encoder_dir.parent)
    table, width = encoder.eval().code_table(), encoder.config.hidden_size
    logprobs = {s: torch.log_softmax(logits(torch.from_numpy(x[:, -width:]), table), -1).numpy()
                for s, x in readouts.items()}  # fmt: skip
    ranked = _most_frequent_codes(frames, logprobs["train"].shape[1])
    out = {}
    for k in widths:
        out[f"past forecast codes {k}"] = {s: v[:, ranked[:k]] for s, v in logprobs.items()}
        out[f"forecast + past forecast codes {k}"] = {
            s: np.hstack([readouts[s], v[:, ranked[:k]]]) for s, v in logprobs.items()
        }
    return out


def _most_frequent_codes(frames: dict, vocab_size: int) -> np.ndarray:
    """Code ids by their count in the train split's visits, most frequent first."""
    seen = np.concatenate(frames["train"]["input_ids"].to_list())
    return np.argsort(-np.bincount(seen, minlength=vocab_size), kind="stable")


def _ints(text: str) -> list[int]:
    """A comma-separated list of integers, empty for ""."""
    return [int(k) for k in filter(None, text.split(","))]


def _row(name: str, readout: str, curve: dict, budgets: dict) -> dict:
    """One printed and recorded result row."""
    row = {"encoder": name, "readout": readout,
           "auroc": {b: float(np.mean(a)) for b, a in curve.items()},
           "se": {b: float(np.std(a) / np.sqrt(len(a))) for b, a in curve.items()},
           "per_subset": curve}  # fmt: skip
    cells = " | ".join(f"{row['auroc'][b]:.3f} ± {row['se'][b]:.3f}" for b in budgets)
    print(f"| {name} | {readout} | {cells} |", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--encoders", default="", help="comma-separated encoder directories")
    parser.add_argument("--budgets", default="100,300,1000")
    parser.add_argument("--subsets", default="12,6,3", help="label subsets per budget")
    parser.add_argument("--readouts", default="pooled", help=f"of {', '.join(READOUTS)}")
    parser.add_argument("--tabular", default="", help="tabular baselines to add: logistic,lightgbm")
    parser.add_argument("--counts", action="store_true",
                        help="add the counts logistic regression on the same subsets")  # fmt: skip
    parser.add_argument("--with-current-visit", action="store_true",
                        help="also probe each readout with the current visit's (code, bin) "
                        "one-hots beside it, and those alone")  # fmt: skip
    parser.add_argument("--pca", default="", help="also probe each readout on its top-k "
                        "principal axes, for each k (comma-separated)")  # fmt: skip
    parser.add_argument("--random-features", default="", help="also probe each encoder's "
                        "random ReLU readout of its token states, for each width k")  # fmt: skip
    parser.add_argument("--forecast-codes", default="", help="also probe the forecast head's "
                        "log-probabilities of the k most frequent codes, for each k")  # fmt: skip
    parser.add_argument("--past-forecast-codes", default="", help="also probe the forecast "
                        "head's log-probabilities of the k most frequent codes for the visit "
                        "read as a past encounter, alone and beside its readout")  # fmt: skip
    parser.add_argument("--latent-work", type=Path, help="a synthetic cohort's work directory "
                        "(cohort.json): also probe its true latent state, what bounds the "
                        "encoders")  # fmt: skip
    parser.add_argument("--global-scale", action="store_true", help="also probe each readout "
                        "with one scale for every column (the vector's own geometry) instead "
                        "of the pipeline's scale per column, with and without its count "
                        "columns, and those columns alone")  # fmt: skip
    parser.add_argument("--heads", action="store_true", help="also fit, on each readout, heads "
                        "that select nothing: the nearest centroid, Ledoit-Wolf shrinkage LDA, "
                        "and LDA with the covariance of every labeled train visit (labels "
                        "unread)")  # fmt: skip
    defaults = FinetuneConfig()  # the pipeline's: one place declares them
    parser.add_argument("--cv-rule", default=defaults.cv_rule, choices=CV_RULES,
                        help="finetune.cv_rule of every probe and baseline")  # fmt: skip
    parser.add_argument("--cv-metric", default=defaults.cv_metric, choices=CV_METRICS,
                        help="finetune.cv_metric of every probe and baseline")  # fmt: skip
    parser.add_argument("--penalty-selection", default=defaults.penalty_selection,
                        choices=PENALTY_SELECTIONS, help="finetune.penalty_selection of every "
                        "probe and logistic baseline")  # fmt: skip
    parser.add_argument("--cv-repeats", type=int, default=defaults.cv_repeats,
                        help="finetune.cv_repeats of every probe and baseline")  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.cv_repeats < 1:
        parser.error("--cv-repeats must be at least 1")
    cv = {
        "cv_rule": args.cv_rule,
        "cv_repeats": args.cv_repeats,
        "cv_metric": args.cv_metric,
        "penalty_selection": args.penalty_selection,
    }
    torch.set_num_threads(2)
    sizes, subsets = args.budgets.split(","), args.subsets.split(",")
    if len(sizes) != len(subsets):
        parser.error("--subsets needs one count per budget")
    budgets = {int(b): int(n) for b, n in zip(sizes, subsets, strict=True)}
    labeled = {s: read_split(args.tokens, s).filter(pl.col("labeled")) for s in ("train", "test")}
    datasets = {s: TokenDataset(args.tokens, pl.col("labeled"), splits=[s]) for s in labeled}
    y = {s: np.asarray(d.labels).astype(np.int64) for s, d in datasets.items()}
    groups, ids = labeled["train"]["patient_id"].to_numpy(), labeled["train"]["visit_id"].to_numpy()
    results, current = [], None

    def row(name: str, readout: str, z: dict, fit_cv=None) -> None:  # z: "train", "test"
        curve = probe_curve(z["train"], y["train"], groups, ids, z["test"], y["test"], budgets,
                            fit_cv=fit_cv, **cv)  # fmt: skip
        results.append(_row(name, readout, curve, budgets))

    if args.with_current_visit or args.latent_work:
        current = current_visit_onehots(labeled, Tokenizer.load(args.tokens))
        row("(no encoder)", "current visit", current)
    pca, codes, widths = (_ints(a) for a in (args.pca, args.forecast_codes, args.random_features))
    past_codes = _ints(args.past_forecast_codes)
    if past_codes and "forecast" not in args.readouts.split(","):
        parser.error('--past-forecast-codes needs "forecast" among --readouts')
    for encoder_dir in filter(None, args.encoders.split(",")):
        encoder = EHREncoder.load_checked(Path(encoder_dir))
        for readout in args.readouts.split(","):
            x = {s: pooled_vectors(encoder, d, torch.device("cpu"), readout=readout)
                 for s, d in datasets.items()}  # fmt: skip
            row(encoder_dir, readout, x)
            for name, z in pca_features(x, pca).items() if pca else ():
                row(encoder_dir, f"{readout}, {name}", z)
            if past_codes and readout == "forecast":
                for name, z in past_forecast_features(Path(encoder_dir), encoder, x, labeled,
                                                      past_codes).items():  # fmt: skip
                    row(encoder_dir, name, z)
            if current is not None:
                row(encoder_dir, f"{readout} + current visit",
                    {s: np.hstack([x[s], current[s]]) for s in x})  # fmt: skip
            if args.heads:
                row(encoder_dir, f"{readout}, nearest centroid", x, fit_cv=centroid_fit)
                row(encoder_dir, f"{readout}, shrinkage LDA", x, fit_cv=lda_fit)
                row(encoder_dir, f"{readout}, LDA, unlabeled covariance", x,
                    fit_cv=unlabeled_covariance_fit(x["train"]))  # fmt: skip
            if args.global_scale:
                row(encoder_dir, f"{readout}, one scale", x, fit_cv=global_scale_fit)
                counts = readout_dim(encoder.config, readout) % pooled_dim(encoder.config)
                if readout not in ("segments", "windows"):  # "forecast" ends in its state
                    counts = 0
                if counts:  # the readout's log event counts (3 P + 2, 6 P + 5 columns)
                    row(
                        encoder_dir,
                        f"{readout} without its counts, one scale",
                        {s: v[:, :-counts] for s, v in x.items()},
                        fit_cv=global_scale_fit,
                    )
                    row(encoder_dir, f"{readout}: its counts alone",
                        {s: v[:, -counts:] for s, v in x.items()})  # fmt: skip
        by_split = {s: random_feature_vectors(encoder, d, torch.device("cpu"), widths)
                    for s, d in datasets.items()} if widths else {}  # fmt: skip
        for name in by_split.get("train", ()):
            row(encoder_dir, name, {s: v[name] for s, v in by_split.items()})
        if codes:
            for name, z in forecast_features(Path(encoder_dir), encoder, datasets, labeled,
                                             codes).items():  # fmt: skip
                row(encoder_dir, name, z)
    if args.tabular:
        results += tabular_rows(args.tokens, y, groups, ids, budgets, args.tabular.split(","),
                                cv)  # fmt: skip
    if args.counts:
        results += counts_rows(args.tokens, y, groups, ids, budgets, cv)
    if args.latent_work:
        results += latent_rows(args.latent_work, args.tokens, labeled, y, groups, ids, budgets,
                               current, cv)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
