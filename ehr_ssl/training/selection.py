"""Model selection with few labels, for every model alike (issue 19).

At a budget of 100 labels a validation split of 20 picks noise. Under `cv` selection the
budget's labels are all used: repeated stratified K-fold, grouped by patient (a patient's
visits are never on both sides of a fold), chooses the regularization and the epoch by the
mean fold AUROC, then the model is refit on every label of the budget. Under `holdout` (large
budgets, where a validation split of hundreds of labels is a good judge and K refits cost too
much) the budget's labels are split into the train split's and the val split's, as before.
EHRSHOT's few-shot protocol is the model: its labels are the budget, selection never reads the
test split.

Which grid point wins is `finetune.cv_rule`: the best mean fold AUROC (the default), or the
one-standard-error rule (Breiman et al. 1984; The Elements of Statistical Learning, 7.10;
glmnet's lambda.1se): the most regularized point within one standard error of the best mean.
With 100 labels the best mean can mislead (on the 60,000-visit cohort one 100-label subset's
probe chose C = 100 by a fold mean of 0.818 against 0.768 at C = 1e-4 and scored 0.652 on test,
the other two subsets 0.857; ten repeats of the folds chose C = 100 too: the subset itself
rewards the weak penalty, and only a prior toward strong regularization avoids it), but over
three pretrainings of the 20,000-visit cohort the rule moved every model by up to 0.03 in both
directions, the scratch transformer down 0.031 at 100 labels (benchmarks/README.md, "The
one-standard-error rule"), so it is an option, not the default.

What the folds score is `finetune.cv_metric`: the mean fold AUROC (the default), or the mean
fold log-loss, class-balanced as every model's training loss is (`balanced_log_loss`), the
criterion of cv.glmnet ("deviance") and of early stopping on the validation loss. A fold of
20 visits holds a handful of positives: its AUROC moves in steps of a few hundredths and
cannot see a weak penalty's overconfident errors, which a proper score charges for. Measured
on two cohorts it steadied the choices but moved the models' mean test AUROC by -0.001 to
+0.002, the scratch transformer alone gaining on both (benchmarks/README.md, "Selection by
log-loss"), so AUROC stays the default.

How every L2 logistic model (the probe, the counts and tabular logistic regressions, the hybrid)
chooses its penalty C under cv selection is `finetune.penalty_selection`: by the folds, as
every other choice ("cv"), or by the evidence of the budget's labels ("evidence", the
default since it raised every logistic model's few-label AUROC; benchmarks/README.md, "The
penalty by the evidence"): the
marginal likelihood of the labels under the model's own Gaussian prior on its weights
(variance C), integrated over the weights (type-II maximum likelihood; MacKay 1992; Bishop,
Pattern Recognition and Machine Learning, 4.4 and 10.6). It reads every label at once, so no
fold's handful of positives decides, and it charges a weak penalty for the volume of weights
it allows (the Occam factor), which no held-out score of a subset that happens to reward that
penalty can. The fine-tuning epoch, probe versus fine-tuning and the GBM's trees stay chosen by
the folds; every candidate's fold scores are kept under either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from ehr_ssl.config import CV_METRICS, CV_RULES, PENALTY_SELECTIONS
from ehr_ssl.errors import InputError

# L2 strengths of every logistic model (probe, counts, hybrid): 1e-4 .. 1e2, half a decade
# apart. With 100 labels and hundreds of features the best C is often 1e-3 or below; with
# thousands of labels it can be 10 or more.
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 13))
LOGISTIC_MAX_ITER = 5000  # lbfgs iterations of every logistic model: enough at C = 100
# Probabilities are clipped this far from 0 and 1 before a log-loss, so that one certain error
# costs about 16 nats rather than infinity.
PROBABILITY_FLOOR = 1e-7
# The intercept's prior under evidence selection: N(0, 10) on the logit scale (a standard
# deviation of about 3), broad for any base rate, so that the evidence compares the penalties
# of the weights and the intercept stays almost free, as the fits leave it unpenalized.
INTERCEPT_PRIOR_VARIANCE = 10.0
# The variational bound's EM iterations stop when the bound gains less than this (nats): far
# below the differences between grid points that decide a choice.
EVIDENCE_TOLERANCE = 1e-4
EVIDENCE_MAX_ITERATIONS = 500


@dataclass(frozen=True)
class Folds:
    """The (train, validation) positions of every fold of every repeat, over one budget's
    labels. Shape: each array holds positions into the budget's label vector."""

    splits: tuple[tuple[np.ndarray, np.ndarray], ...]
    n_folds: int
    n_repeats: int
    rule: str = "best"
    """How a grid point is chosen from the fold scores (`choose`): "best" or "one_se"."""
    metric: str = "auroc"
    """What the folds score (`FoldScore.key`): "auroc" or "log_loss"."""
    penalty: str = "cv"
    """How an L2 logistic model's C is chosen (`cross_validate`): "cv" or "evidence"."""

    def describe(self) -> dict:
        """What the report says of the protocol."""
        return {"protocol": "cv", "folds": self.n_folds, "repeats": self.n_repeats,
                "rule": self.rule, "metric": self.metric, "penalty": self.penalty}  # fmt: skip


@dataclass(frozen=True)
class FoldScore:
    """A candidate's validation figures: the mean over folds of the AUROC and of the balanced
    log-loss, with their standard errors (0 for a single validation set)."""

    auroc: float
    auroc_se: float
    log_loss: float
    log_loss_se: float

    @classmethod
    def of(cls, folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> FoldScore:
        """The score of (labels, P(admission)) pairs, one per fold."""
        return cls.of_figures([roc_auc_score(y, p) for y, p in folds],
                              [balanced_log_loss(y, p) for y, p in folds])  # fmt: skip

    @classmethod
    def of_figures(cls, aurocs: Sequence[float], log_losses: Sequence[float]) -> FoldScore:
        """The score of each fold's AUROC and log-loss."""
        return cls(*fold_mean_and_se(aurocs), *fold_mean_and_se(log_losses))

    def key(self, metric: str) -> tuple[float, float]:
        """(mean, standard error) of `metric`, signed so that higher is better."""
        if metric not in CV_METRICS:
            raise ValueError(f"metric must be one of {CV_METRICS}, got {metric!r}")
        return (
            (self.auroc, self.auroc_se) if metric == "auroc" else (-self.log_loss, self.log_loss_se)
        )

    def record(self) -> dict:
        """The figures as a history or table row names them."""
        return {"val_auroc": self.auroc, "val_se": self.auroc_se,
                "val_log_loss": self.log_loss, "val_log_loss_se": self.log_loss_se}  # fmt: skip


def balanced_log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The mean negative log-likelihood with each class weighted to half the total, as the
    models are trained (class_weight "balanced", BCE with pos_weight negatives / positives);
    probabilities clipped to [PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR]. Shape: (N,), (N,)."""
    y = np.asarray(labels).astype(bool)
    p = np.clip(
        np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR
    )
    return float(-(np.log(p[y]).mean() + np.log1p(-p[~y]).mean()) / 2)


def resolve_selection(
    selection: str, budget: int | float | None, n_labels: int, max_cv: int
) -> str:
    """ "cv" or "holdout" for a budget: `selection` itself unless "auto", which is cv for a
    budget of at most `max_cv` labels (`n_labels` is the budget's count) and holdout for
    larger budgets and for "all"."""
    if selection != "auto":
        return selection
    return "cv" if budget is not None and n_labels <= max_cv else "holdout"


def cv_folds(
    labels: np.ndarray,
    groups: np.ndarray,
    ids: np.ndarray,
    *,
    folds: int,
    repeats: int,
    seed: int,
    setting: str,
    rule: str = "best",
    metric: str = "auroc",
    penalty: str = "cv",
) -> Folds:
    """Repeated stratified K-fold grouped by patient (`groups`), each repeat shuffled by
    `seed` + repeat. The folds are drawn over the rows sorted by `ids` (visit ids), so every
    model that sees the budget's visits in another order gets the same folds of visits. K is
    lowered to the smaller class's count of patients when that is below `folds`; a fold whose
    validation part lacks a class (the grouping can force it) is left out.

    Shape: labels (N,) 0/1, groups (N,), ids (N,) -> Folds of positions into them.

    Raises:
        InputError: naming `setting`, when a class has fewer than 2 patients (no fold could
            score a validation AUROC).
    """
    order = np.argsort(np.asarray(ids), kind="stable")
    y, groups = np.asarray(labels).astype(np.int64)[order], np.asarray(groups)[order]
    per_class = [len(np.unique(groups[y == c])) for c in (0, 1)]
    k = min(folds, *per_class)
    if k < 2:
        raise InputError(
            f"{len(y)} labels, {int(y.sum())} positive ({per_class[1]} patients) and "
            f"{len(y) - int(y.sum())} negative ({per_class[0]} patients): cross-validation "
            "needs both classes in at least 2 patients each; raise the label budget",
            setting=setting,
        )
    splits = []
    for repeat in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + repeat)
        for train, val in splitter.split(np.zeros(len(y)), y, groups):
            if len(np.unique(y[val])) == 2 and len(np.unique(y[train])) == 2:
                splits.append((np.sort(order[train]), np.sort(order[val])))
    if not splits:
        raise InputError(f"no fold holds both classes among {len(y)} labels", setting=setting)
    if rule not in CV_RULES:
        raise ValueError(f"rule must be one of {CV_RULES}, got {rule!r}")
    if metric not in CV_METRICS:
        raise ValueError(f"metric must be one of {CV_METRICS}, got {metric!r}")
    if penalty not in PENALTY_SELECTIONS:
        raise ValueError(f"penalty must be one of {PENALTY_SELECTIONS}, got {penalty!r}")
    return Folds(tuple(splits), k, repeats, rule, metric, penalty)


def cross_validate(
    fit_score: Callable[[dict, np.ndarray, np.ndarray], np.ndarray],
    labels: np.ndarray,
    folds: Folds,
    grid: Sequence[dict],
    evidence: Callable[[dict], float] | None = None,
) -> tuple[dict, list[dict]]:
    """The grid point chosen (order a grid from the most regularized) and every point's record
    {"params", "cv_auroc", "cv_se", "cv_log_loss", "cv_log_loss_se"}: the means of its fold
    figures and their standard errors. The point is the one of highest `evidence(params)`
    (an L2 logistic model's log evidence on every label, `log_evidence_bound`; recorded as
    "log_evidence") when `folds.penalty` is "evidence" and the model has one; otherwise the
    one `folds.rule` chooses on `folds.metric` (`choose`).

    `fit_score(params, train, val)` fits on the positions `train` and returns P(admission) of
    the positions `val`. Shape: labels (N,)."""
    y = np.asarray(labels)
    scores = [
        FoldScore.of([(y[val], fit_score(params, train, val)) for train, val in folds.splits])
        for params in grid
    ]
    table = [{"params": dict(params), "cv_auroc": score.auroc, "cv_se": score.auroc_se,
              "cv_log_loss": score.log_loss, "cv_log_loss_se": score.log_loss_se}
             for params, score in zip(grid, scores, strict=True)]  # fmt: skip
    if folds.penalty == "evidence" and evidence is not None:
        for row in table:
            row["log_evidence"] = evidence(row["params"])
        chosen = int(np.argmax([row["log_evidence"] for row in table]))  # ties: the first
    else:
        chosen = choose(*zip(*(s.key(folds.metric) for s in scores), strict=True), folds.rule)
    return table[chosen]["params"], table


def chosen_cv_auroc(table: list[dict], params: dict) -> float:
    """The mean fold AUROC of the chosen `params` in a `cross_validate` table."""
    return next(row["cv_auroc"] for row in table if row["params"] == params)


def fold_mean_and_se(aurocs: Sequence[float]) -> tuple[float, float]:
    """The mean of fold AUROCs and its standard error (sample std / sqrt(n); 0 for one fold)."""
    values = np.asarray(aurocs, dtype=np.float64)
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(values.mean()), se


def choose(means: Sequence[float], ses: Sequence[float], rule: str) -> int:
    """The index of the chosen candidate, candidates ordered from the most regularized (the
    fewest epochs, the smallest C). "best": the highest mean (ties: the earlier). "one_se":
    the earliest whose mean is at least the best mean minus the best's standard error."""
    if rule not in CV_RULES:
        raise ValueError(f"rule must be one of {CV_RULES}, got {rule!r}")
    best = int(np.argmax(means))  # argmax keeps the first of equals
    if rule == "best":
        return best
    floor = means[best] - ses[best]
    return next(i for i, mean in enumerate(means) if mean >= floor)


def evidence_by_scaling(scale: Callable[[dict], object], labels: np.ndarray):
    """params -> `log_evidence_bound` of the rows `scale(params without C)` returns (the rows as
    that candidate's model reads them), at params["C"]: each scaling's rows and their
    `RowCovariance` computed once (the N x N gram is most of a wide fit's work), each C
    warm-started from the last C of its scaling. A `cross_validate` evidence."""
    covariances: dict[tuple, RowCovariance] = {}
    last_xi: dict[tuple, np.ndarray] = {}

    def evidence(params: dict) -> float:
        scaling = {k: v for k, v in params.items() if k != "C"}
        key = tuple(sorted(scaling.items()))
        if key not in covariances:
            covariances[key] = RowCovariance(scale(scaling))
        value, last_xi[key] = log_evidence_bound(
            covariances[key], labels, params["C"], start=last_xi.get(key)
        )
        return value

    return evidence


def log_evidence_bound(
    features, labels: np.ndarray, c: float, *, start: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """A lower bound on the log evidence log p(labels | X, C) of a balanced L2 logistic
    regression: weights ~ N(0, C I) (sklearn's C, the penalty |w|^2 / 2C), intercept ~
    N(0, INTERCEPT_PRIOR_VARIANCE), each visit's log-likelihood weighted as class_weight
    "balanced" weights it. The Jaakkola-Jordan (2000) bound makes each log sigmoid quadratic
    in the logit, so the weights integrate in closed form; its variational parameters xi
    (one per visit) are set by their EM fixed point, from `start` (the xi of a neighbouring C)
    if given. Unlike the Laplace approximation at the fitted weights, it does not reward a
    penalty weak enough to separate the labels: the Laplace curvature vanishes there, and with
    it the Occam factor. Computed over the weights (D + 1 wide) when the features are
    narrower than the rows, over the logits (N x N) otherwise.

    Shape: features (N, D), dense or sparse, as the model reads them (standardized, scaled), or
    their `RowCovariance` (to reuse it across C); labels (N,) 0/1 holding both classes. Returns
    the bound and xi (N,)."""
    y = np.asarray(labels).astype(bool)
    n = len(y)
    weight = np.where(y, n / (2 * y.sum()), n / (2 * (~y).sum()))
    half_signed = weight * np.where(y, 0.5, -0.5)  # the bound's linear term in the logit
    rows = features if isinstance(features, RowCovariance) else RowCovariance(features)
    moments = rows.posterior_moments(c, half_signed)

    def em_step(xi: np.ndarray) -> tuple[float, np.ndarray]:
        """The bound at xi and the EM update of xi."""
        lam = np.tanh(xi / 2) / (4 * xi)
        variance, mean, log_det, quadratic = moments(2 * weight * lam)
        value = float(
            np.sum(weight * (-np.logaddexp(0, -xi) - xi / 2 + lam * xi**2))
            + quadratic / 2 - log_det / 2
        )  # fmt: skip
        return value, np.sqrt(variance + mean**2)

    return _accelerated_em(em_step, np.ones(n) if start is None else np.asarray(start, float))


def _accelerated_em(em_step, xi: np.ndarray) -> tuple[float, np.ndarray]:
    """The bound at the EM fixed point of xi, from `xi`, and that xi: every two EM steps
    extrapolated along their path (SQUAREM, Varadhan and Roland 2008, step length S3), kept
    only where it beats the two plain steps, so that the bound never falls. Near a penalty
    weak enough to separate the labels plain EM creeps (about 400 steps at C = 100 on 1,000
    labels of counts features); any xi gives a valid bound, so the extrapolation changes
    only how fast it is reached."""
    value, following = em_step(xi)
    for _ in range(EVIDENCE_MAX_ITERATIONS // 2):
        plain_value, second = em_step(following)
        step, curve = following - xi, second - 2 * following + xi
        alpha = min(-np.sqrt((step @ step) / max(curve @ curve, 1e-300)), -1.0)
        # alpha = -1 is the two plain steps; |xi| since the bound is even in each xi
        candidate = np.maximum(np.abs(xi - 2 * alpha * step + alpha**2 * curve), 1e-12)
        candidate_value, after = em_step(candidate)
        previous = value
        if candidate_value >= plain_value:  # False where the extrapolation overflowed (nan)
            value, xi, following = candidate_value, candidate, after
        else:
            value, xi, following = plain_value, following, second
        if value - previous < EVIDENCE_TOLERANCE:
            break
    return value, xi


class RowCovariance:
    """The rows' part of the logits' prior covariance, which does not depend on C: the dense
    rows when they are narrower than they are many (the bound then works over the D + 1
    weights), else their N x N gram X X^T (it works over the N logits)."""

    def __init__(self, features):
        n, width = features.shape
        self.rows = self.gram = None
        if width + 1 < n:
            self.rows = _dense(features)
        else:
            self.gram = _dense(features @ features.T)

    def posterior_moments(self, c: float, linear: np.ndarray):
        """curvature (N,) -> the logits' posterior variances (N,) and means (N,), log det(I + L K)
        and linear' Sigma linear, where K = C X X^T + INTERCEPT_PRIOR_VARIANCE is the logits'
        prior covariance, L = diag(curvature), Sigma = (K^-1 + L)^-1 and the mean is Sigma
        linear."""
        if self.rows is not None:
            return _primal_moments(self.rows, c, linear)
        return _dual_moments(c * self.gram + INTERCEPT_PRIOR_VARIANCE, linear)


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix, np.float64)


def _primal_moments(x: np.ndarray, c: float, linear: np.ndarray):
    """`RowCovariance.posterior_moments` with K = B B^T, over B's R = D + 1 columns."""
    n = x.shape[0]
    factor = np.hstack([np.sqrt(c) * x, np.full((n, 1), np.sqrt(INTERCEPT_PRIOR_VARIANCE))])
    projected = factor.T @ linear

    def primal(curvature: np.ndarray):
        system = np.eye(factor.shape[1]) + factor.T @ (curvature[:, None] * factor)
        inverse = np.linalg.inv(system)
        spread = factor @ inverse
        return (np.einsum("ij,ij->i", spread, factor), spread @ projected,
                np.linalg.slogdet(system)[1], projected @ inverse @ projected)  # fmt: skip

    return primal


def _dual_moments(prior: np.ndarray, linear: np.ndarray):
    """`RowCovariance.posterior_moments` over the N logits, from their prior covariance K."""
    n = prior.shape[0]
    prior_diagonal, prior_linear = np.diag(prior).copy(), prior @ linear

    def dual(curvature: np.ndarray):
        # Sigma = K - K S B^-1 S K with S = L^(1/2) and B = I + S K S, symmetric positive
        # definite: one Cholesky factor gives log det(I + L K) = log det B and Sigma's moments
        # (a third of the work of an LU solve for K (I + L K)^-1 and another for its log det)
        root = np.sqrt(curvature)
        factor = scipy.linalg.cholesky(np.eye(n) + root[:, None] * prior * root, lower=True)
        reduced = scipy.linalg.solve_triangular(factor, root[:, None] * prior, lower=True)
        mean = prior_linear - reduced.T @ (reduced @ linear)
        return (prior_diagonal - np.einsum("ij,ij->j", reduced, reduced), mean,
                2 * np.log(np.diag(factor)).sum(), linear @ mean)  # fmt: skip

    return dual
