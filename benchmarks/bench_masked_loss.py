"""Forward and backward time of the masked-event code term: the softmax over the vocabulary at
every masked position, unfused (`F.cross_entropy(F.linear(...))`, the (N, V) logits held whole)
against `ehr_ssl.model.losses.linear_cross_entropy` (chunked, its gradient multiplied out in
the forward pass). Random states and labels at the sizes of a pretraining step: N masked
positions, D-wide states, a vocabulary of V codes. Prints one JSON line per variant (median of
`--repeats` timed runs after one warm-up) and the largest difference of the loss and gradients.

usage: python benchmarks/bench_masked_loss.py [--positions 4800] [--width 64] [--vocab 11516]
           [--repeats 8] [--chunk-elements N ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from ehr_ssl.model import losses


def _time(loss_fn, tensors: tuple[torch.Tensor, ...], repeats: int) -> tuple[float, list]:
    """Median seconds of loss_fn().backward() over `repeats` runs, after one warm-up; and the
    last run's loss and gradients."""
    times = []
    for attempt in range(repeats + 1):
        for tensor in tensors:
            tensor.grad = None
        start = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        if attempt:
            times.append(time.perf_counter() - start)
    return statistics.median(times), [loss.detach()] + [t.grad.clone() for t in tensors]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=4800)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=11516)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--chunk-elements", type=int, nargs="*", default=[])
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.positions, args.width, generator=g).requires_grad_(True)
    weight = (0.1 * torch.randn(args.vocab, args.width, generator=g)).requires_grad_(True)
    bias = torch.zeros(args.vocab, requires_grad=True)
    labels = torch.randint(0, args.vocab, (args.positions,), generator=g)
    tensors = (hidden, weight, bias)
    sizes = {"positions": args.positions, "width": args.width, "vocab": args.vocab}

    unfused_s, reference = _time(
        lambda: F.cross_entropy(F.linear(hidden, weight, bias), labels), tensors, args.repeats
    )
    print(json.dumps({"variant": "unfused", **sizes, "ms": round(1000 * unfused_s, 1)}))
    for chunk in args.chunk_elements or [losses.LINEAR_CE_CHUNK_ELEMENTS]:
        losses.LINEAR_CE_CHUNK_ELEMENTS = chunk
        fused_s, result = _time(
            lambda: losses.linear_cross_entropy(hidden, weight, bias, labels), tensors, args.repeats
        )
        difference = max(float((a - b).abs().max()) for a, b in zip(result, reference, strict=True))
        print(json.dumps({
            "variant": "fused", **sizes, "chunk_elements": chunk, "ms": round(1000 * fused_s, 1),
            "max_abs_difference": difference,
        }))  # fmt: skip


if __name__ == "__main__":
    main()
