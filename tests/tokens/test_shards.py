"""Token shards: memory-mapped, zero-copy flat arrays, sharding by visit count, manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ehr_ssl.config import TokenizeConfig
from ehr_ssl.errors import InputError
from ehr_ssl.tokens.shards import flat_tokens, open_shard, read_manifest, read_split
from ehr_ssl.tokens.tokenize import tokenize_dataset
from tests.conftest import make_tables, write_tables


@pytest.fixture
def tokens_dir(tmp_path):
    data = write_tables(tmp_path / "data", make_tables())
    out = tmp_path / "tokens"
    tokenize_dataset(data, out, TokenizeConfig(shard_visits=15))
    return out


def test_shards_respect_size_and_cover_every_visit(tokens_dir):
    manifest = read_manifest(tokens_dir)
    total = 0
    for name, entry in manifest["splits"].items():
        frame = read_split(tokens_dir, name)
        assert frame.height == entry["visits"]
        assert int(frame["length"].sum()) == entry["tokens"]
        assert frame["labeled"].sum() == entry["labeled"]
        assert (frame["split"] == name).all()
        sizes = [open_shard(tokens_dir / shard).num_rows for shard in entry["shards"]]
        assert max(sizes) <= 15
        total += entry["visits"]
    assert total == make_tables()["visits"].height


def test_flat_tokens_are_zero_copy_views_of_the_file(tokens_dir):
    shard = read_manifest(tokens_dir)["splits"]["train"]["shards"][0]
    table = open_shard(tokens_dir / shard)
    values, offsets = flat_tokens(table)
    assert not values.flags.owndata and not values.flags.writeable
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the array's memory must be a mapping of the shard file itself
        address = values.ctypes.data
        mapped = [
            line.split()
            for line in maps.read_text().splitlines()
            if line.endswith(str((tokens_dir / shard).resolve()))
        ]
        ranges = [tuple(int(x, 16) for x in fields[0].split("-")) for fields in mapped]
        assert any(start <= address < end for start, end in ranges)
    frame = pl.from_arrow(table)
    for i, row in enumerate(frame["input_ids"].to_list()):
        assert values[offsets[i] : offsets[i + 1]].tolist() == row
    times, _ = flat_tokens(table, "time_deltas")
    assert times.dtype == np.float32


def test_labels_carried_with_tokens(tokens_dir):
    labels = make_tables()["labels"]
    tokens = pl.concat(read_split(tokens_dir, s) for s in ("train", "val", "test"))
    joined = tokens.join(labels, on="visit_id", how="left", suffix="_true")
    assert joined["labeled"].sum() == labels.height
    assert (joined["label"].eq_missing(joined["label_true"])).all()


def test_not_a_tokens_directory(tmp_path):
    with pytest.raises(InputError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "bad.arrow").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable token shard"):
        open_shard(tmp_path / "bad.arrow")
