"""Diagnoses coded as specifically as real ICD: a dataset whose diagnosis codes are split into
rare specific codes, and what the tokenizer reads of them with and without backoff.

Real ICD-10-CM codes carry up to 4 characters after the dot (S72.001A, E11.65), so one
condition is spread over many specific codes, most of them rare at one hospital, while its
category is common. The synthetic cohorts code a condition with a few frequent codes. This
script rewrites a dataset's dotted diagnosis codes with 1-2 characters after the dot
("DX//C25.9G") into `--specific` codes each ("DX//C25.9G00" ... "DX//C25.9G49"), one per patient
and code (a hash: the same patient keeps the same specific code), writes the new dataset, and
prints what tokenizing it reads under `tokenizer.rare_codes` "unk" and "ancestor".

    .venv/bin/ehr-ssl synth WORK/data --visits 20000 --labeled-frac 0.5
    .venv/bin/python benchmarks/bench_rare_codes.py --data WORK/data --out WORK/specific
    .venv/bin/python benchmarks/bench_rare_codes.py --data WORK/data --specific 0  # as it is
    .venv/bin/ehr-ssl run --data WORK/specific --out WORK/run-unk --preset small \\
        --label-budget 1000 --set tokenizer.rare_codes='"unk"'   # and '"ancestor"'

The input must hold its events in one events.parquet (`ehr-ssl synth` with one shard).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import polars as pl

from ehr_ssl.config import TokenizeConfig, TokenizerConfig
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenize import tokenize_dataset
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import SEGMENT_HISTORY, SPECIAL_TOKENS, UNK_ID

SHORT_DIAGNOSIS = r"^DX//[A-Za-z0-9]{2,4}\.[A-Za-z0-9]{1,2}$"  # room for 2 more characters


def specific_codes(events: pl.DataFrame, n_specific: int, seed: int) -> pl.DataFrame:
    """`events` with each short dotted diagnosis code made one of `n_specific` (<= 100) codes
    by two more digits, chosen by a hash of (patient_id, code)."""
    choice = (pl.struct("patient_id", "code").hash(seed=seed) % n_specific).cast(pl.Int32)
    suffix = choice.cast(pl.String).str.zfill(2)
    short = pl.col("code").str.contains(SHORT_DIAGNOSIS)
    return events.with_columns(
        pl.when(short).then(pl.col("code") + suffix).otherwise(pl.col("code")).alias("code")
    )


def reading(data: Path, rare_codes: str, work: Path) -> dict[str, float]:
    """Tokenize `data` and say what the training visits' history tokens read."""
    config = TokenizeConfig(tokenizer=TokenizerConfig(rare_codes=rare_codes))
    out = work / rare_codes
    tokenize_dataset(data, out, config)
    tokenizer = Tokenizer.load(out)
    tokens = read_split(out, "train")
    ids = tokens["input_ids"].explode().to_numpy()
    history = tokens["segment_ids"].explode().to_numpy() == SEGMENT_HISTORY
    return {
        "vocabulary": tokenizer.vocab_size - len(SPECIAL_TOKENS),
        "unk_share_history": float((ids[history] == UNK_ID).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="the rewritten dataset (not with --specific 0)")
    parser.add_argument("--specific", type=int, default=50, help="0: read --data as it is")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 <= args.specific <= 100 or (args.specific > 0) != (args.out is not None):
        parser.error("--specific must be in [0, 100], and --out is needed unless it is 0")
    events = pl.read_parquet(args.data / "events.parquet")
    read = args.data
    if args.specific:
        rewritten = specific_codes(events, args.specific, args.seed)
        args.out.mkdir(parents=True, exist_ok=False)
        for path in args.data.glob("*.parquet"):
            if path.name != "events.parquet":
                shutil.copy(path, args.out / path.name)
        rewritten.write_parquet(args.out / "events.parquet")
        read, events = args.out, rewritten
    patients = events.group_by("code").agg(pl.col("patient_id").n_unique())["patient_id"]
    print(f"codes: {events['code'].n_unique():,}; held by fewer than 5 patients: "
          f"{(patients < 5).mean():.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        for rare_codes in ("unk", "ancestor"):
            figures = reading(read, rare_codes, Path(work))
            print(f"rare_codes={rare_codes}: vocabulary {figures['vocabulary']:,}, "
                  f"[UNK] share of training history tokens "
                  f"{figures['unk_share_history']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
