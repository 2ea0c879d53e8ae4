"""The access-log format: round trips, streaming and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from accesslog.log import SCHEMA, AccessLog, conform, iter_batches, make_table, read_log, read_meta, write_log
from common.errors import DataError


def sample(n: int = 1000) -> AccessLog:
    rng = np.random.default_rng(1)
    keys = [f"user:{i}:profile" for i in rng.integers(0, 50, size=n)]
    table = make_table(
        np.arange(n) * 0.01,
        keys,
        ["GET" if i % 3 else "SET" for i in range(n)],
        100,
        "unit",
        client=np.arange(n) % 7,
        ttl=np.where(np.arange(n) % 2, 30.0, np.nan),
    )
    return AccessLog(table, {"source": "unit", "kind": "synthetic", "seed": 1})


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_trip_keeps_rows_and_metadata(tmp_path: Path, suffix: str) -> None:
    log = sample()
    path = tmp_path / f"log{suffix}"
    write_log(log, path)
    back = read_log(path)
    assert back.meta == log.meta
    assert back.table.schema == SCHEMA
    assert back.table.to_pylist() == log.table.to_pylist()


def test_streams_in_batches(tmp_path: Path) -> None:
    log = sample(5000)
    path = tmp_path / "log.parquet"
    write_log(log, path)
    batches = list(iter_batches(path, rows=1000))
    assert len(batches) >= 5 and all(b.num_rows <= 1000 for b in batches)
    assert sum(b.num_rows for b in batches) == 5000
    assert pa.Table.from_batches(batches).column("key").to_pylist() == log.keys()


def test_key_codes_follow_first_appearance() -> None:
    log = AccessLog(make_table(np.arange(5.0), ["b", "a", "b", "c", "a"], "GET", 0, "t"))
    codes, names = log.key_codes()
    assert codes.tolist() == [0, 1, 0, 2, 1] and names.to_pylist() == ["b", "a", "c"]


def test_missing_required_column_is_named() -> None:
    table = pa.table({"ts": [1.0], "key": ["a"], "op": ["GET"], "source": ["s"]})
    with pytest.raises(DataError, match="lacks the column.*size"):
        conform(table)


def test_a_column_given_twice_is_named() -> None:
    table = pa.table(
        [[1.0], ["a"], ["b"], ["GET"], [1], ["s"]], names=["ts", "key", "key", "op", "size", "source"]
    )
    with pytest.raises(DataError, match="the column.s. key more than once"):
        conform(table)


def test_wrong_column_type_is_named() -> None:
    table = pa.table({"ts": ["yesterday"], "key": ["a"], "op": ["GET"], "size": [1], "source": ["s"]})
    with pytest.raises(DataError, match="column 'ts'"):
        conform(table)


def test_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    write_log(sample(), good)
    truncated = tmp_path / "cut.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="unreadable access log"):
        read_log(truncated)
    other = tmp_path / "trace.txt"
    other.write_text("1\n2\n3\n")
    with pytest.raises(DataError, match="not an access log"):
        read_log(other)
    with pytest.raises(DataError, match="cannot read"):
        read_meta(tmp_path / "absent.parquet")
