"""Patient partitions: the chunk files a streamed stage writes and reads back are checked like
any input (page checksums), so damage on disk between the two is an error, never other events."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ehr_ssl.config import DataConfig
from ehr_ssl.data.partitions import chunk_path, partition_events, read_chunk_events
from ehr_ssl.data.synthetic import generate_cohort
from ehr_ssl.errors import InputError


def test_a_damaged_chunk_file_is_an_error(tmp_path):
    events = generate_cohort(1000, seed=0).events
    events.write_parquet(tmp_path / "events.parquet")
    work = tmp_path / "work"
    work.mkdir()
    rows = partition_events(
        [tmp_path / "events.parquet"],
        n_chunks=2,
        id_type=pl.Int64,
        times=[],
        config=DataConfig(),
        source="visits.parquet",
        work=work,
        batch_rows=10_000,
    )
    chunks = [read_chunk_events(work, chunk, pl.Int64) for chunk in (0, 1)]
    assert rows == events.height == sum(chunk.height for chunk in chunks)
    path = chunk_path(work, 0)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 256] = np.random.default_rng(0).integers(0, 256, 256, np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="damaged Parquet file") as info:
        read_chunk_events(work, 0, pl.Int64)
    assert info.value.file == str(path)
