"""What the forecast head says, without a label, about how the current visit ends.

At the prediction time the whole input is a prefix that ends inside the current visit, so the
forecast head (`objective.forecast_weight`) can be asked what follows it. The zero-shot score of
a visit is the head's logit of an admission code minus that of a discharge code (the log-odds
between the two under its softmax); its AUROC against the admission labels of the labeled test
visits says whether what the term learned from past ED visits' endings reaches the encoding of
the current visit. "as history" reads the same visits with the current visit's [VISIT]
separator dropped and its events in the history segment, as a past ED visit is encoded: the
gap between the two rows is what the framing of the current visit withholds.

A diagnostic of the pretraining, not a model: the codes are named by hand (on the synthetic
cohort DISP//ADMIT and DISP//DISCHARGE).

usage: python benchmarks/bench_forecast_zero_shot.py --run PRETRAIN_DIR --tokens RUN/tokens \
           [--admit-code DISP//ADMIT] [--discharge-code DISP//DISCHARGE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from ehr_ssl.layout import ENCODER_DIR, HEADS_FILE
from ehr_ssl.model.encoder import EHREncoder
from ehr_ssl.model.pretraining import ENCODER_INPUTS
from ehr_ssl.tokens.batching import TokenDataset, collate
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import SEGMENT_CURRENT, SEGMENT_HISTORY, VISIT_ID


def forecast_head(run: Path, encoder: EHREncoder):
    """The run's forecast head as a function of pooled vectors: the encoder's forecast state
    against its code table, plus the code bias from the run's heads file.
    Shape: pooled (B, P), code table (V, D) -> logits (B, V)."""
    logits = forecast_logits(run)
    encoder.eval()
    return lambda pooled, table: logits(encoder.forecast_state(pooled), table)


def forecast_logits(run: Path):
    """The run's forecast head from the forecast state on (the last D columns of the "forecast"
    readout): the state against the code table, plus the code bias of the run's heads file.
    Shape: state (B, D), code table (V, D) -> logits (B, V)."""
    bias = load_file(run / HEADS_FILE)["forecast_code_bias"]
    return lambda state, table: F.linear(state, table, bias)


def as_history(item: dict) -> dict:
    """A visit encoded as a past ED visit is: no [VISIT], its events in the history segment."""
    keep = item["input_ids"] != VISIT_ID
    item = {k: v[keep] if isinstance(v, np.ndarray) else v for k, v in item.items()}
    current = item["segment_ids"] == SEGMENT_CURRENT
    item["segment_ids"] = np.where(current, SEGMENT_HISTORY, item["segment_ids"]).astype(np.int8)
    return item


@torch.no_grad()
def zero_shot(encoder, head, dataset, codes: tuple[int, int], history: bool) -> np.ndarray:
    """logit(admit) - logit(discharge) of each visit. Shape: (N,)."""
    scores = []
    for start in range(0, len(dataset), 256):
        items = [dataset[i] for i in range(start, min(start + 256, len(dataset)))]
        batch = collate([as_history(it) for it in items] if history else items)
        pooled = encoder(**{k: batch[k] for k in ENCODER_INPUTS}).pooler_output
        logits = head(pooled, encoder.code_table())
        scores.append((logits[:, codes[0]] - logits[:, codes[1]]).numpy())
    return np.concatenate(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a pretraining output directory")
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--admit-code", default="DISP//ADMIT")
    parser.add_argument("--discharge-code", default="DISP//DISCHARGE")
    args = parser.parse_args()
    torch.set_num_threads(2)
    vocab = Tokenizer.load(args.tokens).vocab
    codes = (vocab.index(args.admit_code), vocab.index(args.discharge_code))
    encoder = EHREncoder.load_checked(args.run / ENCODER_DIR).eval()
    head = forecast_head(args.run, encoder)
    dataset = TokenDataset(args.tokens, pl.col("labeled"), splits=["test"])
    for history in (False, True):
        score = zero_shot(encoder, head, dataset, codes, history)
        auroc = roc_auc_score(dataset.labels, score)
        print(f"| {args.run} | {'as history' if history else 'as it is'} | {auroc:.3f} |")


if __name__ == "__main__":
    main()
