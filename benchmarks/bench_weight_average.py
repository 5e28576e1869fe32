"""A screen of weight averaging in pretraining, before any switch is built: does an exponential
moving average (EMA) of the weights make the encoder steadier or better across pretraining seeds?

EMA (Polyak averaging; "Exponential Moving Average of Weights in Deep Learning: Dynamics and
Benefits", Morales-Brotons et al. 2024) smooths the last iterates' noise. Pretraining here
runs the pipeline's own loop (`ehr_ssl.training.pretrain.pretrain`, every setting of
`--preset`, with `--seed` and `--epochs`), with the step wrapped to keep a moving average of every
floating-point weight (decay `--decay`, warmed up as min(decay, (1 + t) / (10 + t))), and the
averaged weights written as the encoder and heads at the end; `--decay 0` writes the last
weights, as the pipeline does. The encoders then go to `bench_probe.py`.

usage: python benchmarks/bench_weight_average.py --tokens RUN/tokens --out DIR --seed 0 \
           [--decay 0.99] [--epochs 3] [--preset small]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ehr_ssl.training.pretrain as pretraining
from ehr_ssl.errors import InputError
from ehr_ssl.pipeline import load_checked_config


def averaged(decay: float) -> dict:
    """Wrap the loop's step and finish so that the weights written are the moving average."""
    state: dict = {"average": None, "updates": 0}
    train_step, finish = pretraining._train_step, pretraining._finish

    def step_and_average(learner, *args, **kwargs):
        out = train_step(learner, *args, **kwargs)
        weights = {name: value.detach() for name, value in learner.model.state_dict().items()
                   if value.dtype.is_floating_point}  # fmt: skip
        if state["average"] is None:
            state["average"] = {name: value.clone() for name, value in weights.items()}
        else:
            t = state["updates"]
            d = min(decay, (1 + t) / (10 + t))
            for name, value in weights.items():
                state["average"][name].mul_(d).add_(value, alpha=1 - d)
        state["updates"] += 1
        return out

    def finish_averaged(out_dir, tokens_dir, model, *args, **kwargs):
        model.load_state_dict({**model.state_dict(), **state["average"]})
        return finish(out_dir, tokens_dir, model, *args, **kwargs)

    pretraining._train_step, pretraining._finish = step_and_average, finish_averaged
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decay", type=float, default=0.99)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()
    if not 0 <= args.decay < 1:
        parser.error("--decay must be in [0, 1)")
    torch.set_num_threads(2)
    settings = {"preset": args.preset, "train.seed": args.seed, "train.device": "cpu",
                "train.epochs": args.epochs}  # fmt: skip
    try:  # bad settings, tokens or output directory: one line, exit status 2
        config = load_checked_config(None, settings).pretrain_config()
        if args.decay > 0:
            averaged(args.decay)
        summary = pretraining.pretrain(args.tokens, args.out, config)
    except InputError as e:
        parser.error(str(e))
    print(f"{args.out}: {summary['steps']} steps, decay {args.decay}")


if __name__ == "__main__":
    main()
