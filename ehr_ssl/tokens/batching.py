"""Batches from token shards: a memory-mapped dataset, length-bucketed batch order, and a collate
function that pads each batch only to its own longest visit.

The dataset never loads the token arrays: each process memory-maps the Arrow shards on first
use (so DataLoader workers open their own maps) and a visit is a slice of the flat arrays. The
batch order is a pure function of (seed, epoch), so a resumed run can skip the batches it had
already trained on and see exactly the same data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset, Sampler

from ehr_ssl.tokens.shards import flat_tokens, open_shard, read_manifest
from ehr_ssl.tokens.vocab import PAD_ID, TOKEN_COLUMNS

_DTYPES = {  # model input dtypes (embedding lookups take int64)
    "input_ids": np.int64,
    "value_bins": np.int64,
    "time_deltas": np.float32,
    "segment_ids": np.int64,
}


class TokenDataset(Dataset):
    """Selected visits of a tokens directory; item i is a dict of numpy views of one visit."""

    def __init__(self, tokens_dir: Path, selection: pl.Expr, *, splits: Sequence[str]):
        """`selection` filters the per-visit columns (split, labeled, label, length, ...)."""
        self.tokens_dir = Path(tokens_dir)
        manifest = read_manifest(self.tokens_dir)
        self.shard_paths = [
            self.tokens_dir / name
            for split in splits
            for name in manifest["splits"][split]["shards"]
        ]
        metas = []
        for index, path in enumerate(self.shard_paths):
            meta = pl.from_arrow(
                open_shard(path).select(
                    ["visit_id", "patient_id", "split", "labeled", "label", "length"]
                )
            )
            metas.append(
                meta.with_columns(
                    pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
                    pl.lit(index, pl.Int32).alias("shard"),
                ).filter(selection)
            )
        # Per selected visit: where it is, and what it is (no token data is read here).
        self.meta = pl.concat(metas) if metas else pl.DataFrame()
        self.rows = self.meta["row"].to_numpy()
        self.shard_of = self.meta["shard"].to_numpy()
        self.lengths = self.meta["length"].to_numpy()
        # 1.0 / 0.0 for labeled visits, NaN for unlabeled ones.
        self.labels = self.meta["label"].cast(pl.Float32).fill_null(float("nan")).to_numpy()
        self._columns: list[dict[str, tuple[np.ndarray, np.ndarray]]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _open(self) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
        if self._columns is None:  # first use in this process
            tables = [open_shard(path) for path in self.shard_paths]
            self._columns = [{c: flat_tokens(t, c) for c in TOKEN_COLUMNS} for t in tables]
        return self._columns

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        columns = self._open()[self.shard_of[index]]
        row = self.rows[index]
        out = {"label": self.labels[index]}
        for name, (values, offsets) in columns.items():
            out[name] = values[offsets[row] : offsets[row + 1]]
        return out

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_columns"] = None  # memory maps are reopened in the receiving process
        return state


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of visits of similar length, in an order fixed by (seed, epoch).

    Visits are shuffled, cut into pools of `pool_batches` batches, sorted by length within a pool
    and cut into batches; the batch order is shuffled again. Padding stays low while every epoch
    sees a different mix. `start_batch` skips the first batches of the epoch (resume).

    Data-parallel: every process builds the same global batches (`batches()`) and iterates
    over its own contiguous share of each, rows [rank * B/W, (rank + 1) * B/W) with W the
    world size, so the processes together read each visit of a batch once.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        *,
        seed: int,
        epoch: int = 0,
        start_batch: int = 0,
        pool_batches: int = 50,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size % world_size:
            raise ValueError(
                f"{world_size} processes need batches of a multiple of {world_size} visits, "
                f"got batch_size {batch_size}"
            )
        self.rank, self.world_size = rank, world_size
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed, self.epoch, self.start_batch = seed, epoch, start_batch
        self.pool = batch_size * pool_batches
        self.drop_last = drop_last

    def batches(self) -> list[np.ndarray]:
        """Every batch of this epoch (before skipping), as arrays of dataset indices."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        if not self.drop_last:
            # Equal shares of the last partial batch: fewer than W random visits sit out.
            order = order[: len(order) - len(order) % self.world_size]
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start : start + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __len__(self) -> int:
        n = len(self.lengths)
        full, rest = divmod(n if self.drop_last else n - n % self.world_size, self.batch_size)
        return full if self.drop_last else full + (rest > 0)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches()[self.start_batch :]:
            # (B,) -> (W, B/W): row r is rank r's share.
            yield batch.reshape(self.world_size, -1)[self.rank].tolist()


def collate(visits: list[dict[str, np.ndarray]], pad_to_multiple_of: int = 1) -> dict:
    """Right-pad visits to the batch's longest one (rounded up to `pad_to_multiple_of`).

    Shape: each output tensor (B, T); attention_mask bool (True = token); padding is [PAD] with
    value bin 0, time 0 and segment 0.
    """
    lengths = np.array([len(v["input_ids"]) for v in visits])
    t = int(-(-lengths.max() // pad_to_multiple_of) * pad_to_multiple_of)
    batch = {}
    for name, dtype in _DTYPES.items():
        padded = np.full((len(visits), t), PAD_ID if name == "input_ids" else 0, dtype=dtype)
        for i, visit in enumerate(visits):
            padded[i, : lengths[i]] = visit[name]
        batch[name] = torch.from_numpy(padded)
    batch["attention_mask"] = torch.from_numpy(np.arange(t)[None, :] < lengths[:, None])
    if "label" in visits[0]:  # (B,) float: 1.0 / 0.0, NaN where unlabeled
        batch["labels"] = torch.tensor([v["label"] for v in visits], dtype=torch.float32)
    return batch
