"""Where full fine-tuning's first steps move the visit vector: the classifier starts as
fine-tuning starts it (the pretrained encoder under the linear probe of the train split's
labels, LP-FT), its head is frozen, and the encoder alone takes the first steps of an epoch at
fine-tuning's rates. After chosen steps: the validation AUROC and balanced log-loss, how far
each part of the readout moved, in the probe's standard deviations (the scale the head reads
it on), and the shift of the head's logit that the move alone makes.

usage: python benchmarks/bench_finetune_drift.py TOKENS_DIR ENCODER_DIR
           [--steps 1,3,10,30,75] [--encoder-lr-ratio 0.1] [--eval-mode] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ehr_ssl.config import FinetuneConfig
from ehr_ssl.model.encoder import EHRConfig, pooled_dim, readout_dim
from ehr_ssl.training import classifier_loop
from ehr_ssl.training.finetune import labeled_split
from ehr_ssl.training.probe import init_head_from_probe, pooled_vectors
from ehr_ssl.training.selection import balanced_log_loss

CPU = torch.device("cpu")


def readout_parts(config: EHRConfig) -> dict[str, slice]:
    """The forecast readout's parts, in its column order (`EHREncoder.readout`: three pooled
    summaries of P columns, two log counts, the forecast state of D)."""
    p, d = pooled_dim(config), config.hidden_size
    widths = {"cls": p, "history mean": p, "current mean": p, "log counts": 2, "forecast state": d}
    ends = np.cumsum(list(widths.values()))
    assert ends[-1] == readout_dim(config, "forecast")
    return {name: slice(end - w, end) for (name, w), end in zip(widths.items(), ends, strict=True)}


def standardized(model, dataset) -> np.ndarray:
    """The readout on the head's scale: (x - probe mean) / probe std. Shape: (N, R)."""
    x = pooled_vectors(model.encoder, dataset, CPU, readout=model.config.readout)
    return (x - model.feature_mean.numpy()) / model.feature_std.numpy()


def report(model, val, start: np.ndarray, step: int) -> None:
    """One row: the figures after `step` encoder steps."""
    moved = standardized(model, val) - start
    scores = classifier_loop.predict_scores(model, val, CPU)
    drift = np.abs(moved).mean(0)
    parts = " | ".join(f"{drift[part].mean():.3f}" for part in readout_parts(model.config).values())
    logit = moved @ model.head.weight[0].detach().numpy()
    print(f"| {step} | {roc_auc_score(val.labels, scores):.4f} | "
          f"{balanced_log_loss(val.labels, scores):.3f} | {parts} | "
          f"{logit.mean():+.2f} | {logit.std():.2f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokens", type=Path)
    parser.add_argument("encoder", type=Path)
    parser.add_argument("--steps", default="1,3,10,30,75")
    parser.add_argument("--encoder-lr-ratio", type=float, default=0.1)
    parser.add_argument("--eval-mode", action="store_true", help="the encoder's dropout off")
    parser.add_argument("--seed", type=int, default=0, help="of dropout (the order: finetune's)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    steps = sorted(int(s) for s in args.steps.split(","))

    train, val = labeled_split(args.tokens, "train"), labeled_split(args.tokens, "val")
    config = FinetuneConfig(mode="full", encoder_lr_ratio=args.encoder_lr_ratio)
    encoder_config = EHRConfig.from_pretrained(args.encoder)
    model = classifier_loop.build_classifier(args.encoder, encoder_config, config)
    if model.config.readout != "forecast":
        parser.error("the encoder must be pretrained with the forecast term")
    init_head_from_probe(model, train, val, CPU)
    model.head.requires_grad_(False)  # the encoder alone moves
    fold = classifier_loop.start_training(model, train, config, CPU)
    start = standardized(model, val)
    names = " | ".join(readout_parts(model.config))
    print(f"| step | val AUROC | val log-loss | {names} | logit shift, mean | sd |")
    print("|---" * (5 + len(readout_parts(model.config))) + "|")
    report(model, val, start, 0)
    loader = classifier_loop.epoch_loader(train, config, 1)
    for step, batch in enumerate(loader, start=1):  # fine-tuning's steps, one by one
        model.train()
        if args.eval_mode:
            model.encoder.eval()
        classifier_loop.train_step(fold, batch, warmup_steps=0)
        if step in steps:
            report(model, val, start, step)
        if step == steps[-1]:
            break


if __name__ == "__main__":
    main()
