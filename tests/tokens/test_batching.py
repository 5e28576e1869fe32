"""Batching: dynamic padding, length-bucketed deterministic batch order, the pretraining
selection over memory-mapped shards, and workers giving the same batches."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader

from ehr_ssl.data.splits import SPLITS
from ehr_ssl.tokens.batching import LengthBucketSampler, TokenDataset, collate
from ehr_ssl.tokens.shards import open_shard, read_split
from ehr_ssl.training.pretrain import pretraining_selection


def test_collate_pads_to_longest_with_neutral_values():
    visits = [
        {
            "input_ids": np.array([2, 9, 4], np.int32),
            "value_bins": np.array([0, 3, 0], np.int8),
            "time_deltas": np.array([0, -1, -2], np.float32),
            "segment_ids": np.array([0, 1, 1], np.int8),
        },
        {
            "input_ids": np.array([2, 5], np.int32),
            "value_bins": np.array([0, 1], np.int8),
            "time_deltas": np.array([0, -3], np.float32),
            "segment_ids": np.array([0, 2], np.int8),
        },
    ]
    batch = collate(visits)
    assert batch["input_ids"].tolist() == [[2, 9, 4], [2, 5, 0]]
    assert batch["attention_mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["input_ids"].dtype == torch.long and batch["time_deltas"].dtype == torch.float32
    assert collate(visits, pad_to_multiple_of=8)["input_ids"].shape == (2, 8)
    padded = collate(visits, pad_to_multiple_of=8)
    for name in ("value_bins", "time_deltas", "segment_ids"):
        assert not padded[name][~padded["attention_mask"]].any()


def test_sampler_is_a_pure_function_of_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(5, 200, 1000)
    a = LengthBucketSampler(lengths, 32, seed=1, epoch=0)
    assert [b.tolist() for b in a.batches()] == [
        b.tolist() for b in LengthBucketSampler(lengths, 32, seed=1).batches()
    ]
    other_epoch = LengthBucketSampler(lengths, 32, seed=1, epoch=1).batches()
    assert [b.tolist() for b in a.batches()] != [b.tolist() for b in other_epoch]
    resumed = list(LengthBucketSampler(lengths, 32, seed=1, epoch=0, start_batch=7))
    assert resumed == [b.tolist() for b in a.batches()][7:]
    assert len(list(a)) == len(a) == 1000 // 32
    every = np.concatenate(LengthBucketSampler(lengths, 32, seed=1, drop_last=False).batches())
    assert sorted(every.tolist()) == list(range(1000))


def test_length_buckets_cut_padding():
    lengths = np.random.default_rng(0).integers(5, 250, 5000)

    def padding(batches):
        return 1 - sum(lengths[b].sum() for b in batches) / sum(
            lengths[b].max() * len(b) for b in batches
        )

    bucketed = LengthBucketSampler(lengths, 32, seed=0).batches()
    random = np.array_split(np.random.default_rng(1).permutation(5000), 5000 // 32)
    assert padding(bucketed) < 0.05 < 0.3 < padding(random)


def test_pretraining_selection_never_includes_test_labels(cohort_tokens):
    frames = pl.concat(read_split(cohort_tokens, s) for s in SPLITS)
    inductive = TokenDataset(cohort_tokens, pretraining_selection(False), splits=SPLITS)
    transductive = TokenDataset(cohort_tokens, pretraining_selection(True), splits=SPLITS)
    outside_test = frames.filter(pl.col("split") != "test").height
    unlabeled_test = frames.filter((pl.col("split") == "test") & ~pl.col("labeled")).height
    assert len(inductive) == outside_test
    assert len(transductive) == outside_test + unlabeled_test
    assert unlabeled_test > 0
    for dataset, allowed_test in ((inductive, False), (transductive, True)):
        for shard, row in zip(dataset.shard_of, dataset.rows, strict=True):
            meta = pl.from_arrow(open_shard(dataset.shard_paths[shard]).slice(row, 1))
            assert meta["split"][0] != "test" or (allowed_test and not meta["labeled"][0])


def test_items_are_the_shard_rows(cohort_tokens):
    dataset = TokenDataset(cohort_tokens, pl.col("split") == "val", splits=["val"])
    frame = read_split(cohort_tokens, "val")
    assert len(dataset) == frame.height
    for i in (0, 5, len(dataset) - 1):
        for name in ("input_ids", "time_deltas"):
            assert dataset[i][name].tolist() == frame[name][i].to_list()
    assert np.array_equal(dataset.lengths, frame["length"].to_numpy())


def test_workers_give_the_same_batches(cohort_tokens):
    dataset = TokenDataset(cohort_tokens, pl.col("split") == "train", splits=["train"])

    def batches(workers):
        sampler = LengthBucketSampler(dataset.lengths, 16, seed=3)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
        return [b["input_ids"] for _, b in zip(range(6), loader, strict=False)]

    for a, b in zip(batches(0), batches(2), strict=True):
        assert torch.equal(a, b)
