"""Trace readers: a hand-made sample of every format, compressed inputs, remapping, bad files."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import zstandard

from accesslog.traces import FORMATS, ImportOptions, permute_ids, read_trace
from common.errors import DataError

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "": lambda b: b,
    ".gz": gzip.compress,
    ".xz": lzma.compress,
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
    ".bz2": bz2.compress,
}

LIBCACHESIM_CSV = (
    b"version,time,op,size,lbn\n1,5633898,2a,512,42932745\n1,5633898,28,512,42932746\n1,5641098,28,4096,7\n"
)
ARC = b"10 3 0 0\n5 1 0 1\n11 2 0 2\n"
LINES = b"0\n1\n2\n0\n\n17\n"
TWITTER = (
    b"0,keyA,5,100,1,get,0\n"
    b"0,keyB,5,200,2,set,3600\n"
    b"1,keyA,5,100,1,gets,0\n"
    b"2,keyA,5,0,3,delete,0\n"
    b"2,keyC,5,64,1,incr,0\n"
)


def cache2k(ids: list[int]) -> bytes:
    return np.asarray(ids, dtype=">i4").tobytes()


def oracle(rows: list[tuple[int, int, int, int]]) -> bytes:
    return b"".join(struct.pack("<IQIq", *r) for r in rows)


def write(tmp_path: Path, name: str, data: bytes, suffix: str = "") -> Path:
    path = tmp_path / (name + suffix)
    path.write_bytes(COMPRESSORS[suffix](data))
    return path


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_libcachesim_csv(tmp_path: Path, suffix: str) -> None:
    log = read_trace(str(write(tmp_path, "cp.csv", LIBCACHESIM_CSV, suffix)), "libcachesim-csv")
    rows = log.table.to_pylist()
    assert [r["key"] for r in rows] == ["42932745", "42932746", "7"]
    assert [r["op"] for r in rows] == ["SET", "GET", "GET"]  # SCSI WRITE(10), READ(10)
    assert [r["ts"] for r in rows] == [5.633898, 5.633898, 5.641098]  # microseconds by default
    assert [r["size"] for r in rows] == [512, 512, 4096]
    assert (
        log.meta["synthetic_clock"] is False
        and log.meta["compression"]
        == ({"": "none", ".gz": "gzip", ".xz": "xz", ".zst": "zstd", ".bz2": "bzip2"}[suffix])
    )


def test_libcachesim_csv_time_unit(tmp_path: Path) -> None:
    log = read_trace(
        str(write(tmp_path, "cp.csv", LIBCACHESIM_CSV)), "libcachesim-csv", ImportOptions(time_unit="s")
    )
    assert log.timestamps()[0] == 5633898.0


@pytest.mark.parametrize("suffix", ["", ".zst"])
def test_arc_expands_multi_block_requests(tmp_path: Path, suffix: str) -> None:
    log = read_trace(str(write(tmp_path, "t.lis", ARC, suffix)), "arc")
    assert log.keys() == ["10", "11", "12", "5", "11", "12"]
    assert log.meta["synthetic_clock"] is True
    assert log.timestamps().tolist() == [i / 1000 for i in range(6)]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_one_key_per_line(tmp_path: Path, suffix: str) -> None:
    log = read_trace(str(write(tmp_path, "m.trace", LINES, suffix)), "lines", ImportOptions(clock_rate=10))
    assert log.keys() == ["0", "1", "2", "0", "17"]
    assert log.timestamps().tolist() == [i / 10 for i in range(5)]


@pytest.mark.parametrize("suffix", ["", ".xz"])
def test_cache2k_is_remapped_by_default(tmp_path: Path, suffix: str) -> None:
    ids = [0, 1, 2, 0, 3, 1, 4]
    path = str(write(tmp_path, "w.trace", cache2k(ids), suffix))
    raw = read_trace(path, "cache2k", ImportOptions(remap=False))
    assert raw.keys() == [str(i) for i in ids]
    remapped = read_trace(path, "cache2k")
    assert remapped.meta["remapped"] is True
    keys = remapped.keys()
    # Same equality pattern, different names, and the new keys no longer count up.
    assert [keys.index(k) for k in keys] == [ids.index(i) for i in ids]
    assert set(keys).isdisjoint({str(i) for i in ids})
    assert sorted(keys[i] for i in (0, 1, 2, 4, 6)) != [keys[i] for i in (0, 1, 2, 4, 6)]
    other_seed = read_trace(path, "cache2k", ImportOptions(seed=1))
    assert other_seed.keys() != keys


def test_oracle_general(tmp_path: Path) -> None:
    rows = [(10, 2**40, 4096, 3), (11, 5, 512, -1), (12, 2**40, 4096, -1)]
    log = read_trace(str(write(tmp_path, "o.oracleGeneral.bin", oracle(rows))), "oracle-general")
    assert log.keys() == [str(2**40), "5", str(2**40)]
    assert log.column("size").tolist() == [4096, 512, 4096]
    assert log.timestamps().tolist() == [10.0, 11.0, 12.0]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_twitter(tmp_path: Path, suffix: str) -> None:
    log = read_trace(str(write(tmp_path, "cluster.csv", TWITTER, suffix)), "twitter")
    rows = log.table.to_pylist()
    assert [r["op"] for r in rows] == ["GET", "SET", "GET", "DEL", "INCR"]
    assert [r["client"] for r in rows] == [1, 2, 1, 3, 1]
    assert [r["ttl"] for r in rows] == [None, 3600.0, None, None, None]
    assert [r["size"] for r in rows] == [100, 200, 100, 0, 64]


def test_permutation_is_a_seeded_bijection() -> None:
    ids = np.arange(100_000)
    out = permute_ids(ids, seed=3)
    assert np.unique(out).size == ids.size
    assert (permute_ids(ids, seed=3) == out).all() and not (permute_ids(ids, seed=4) == out).all()
    # No arithmetic trace of the numbering: consecutive ids map to unrelated values.
    assert abs(np.corrcoef(ids, out)[0, 1]) < 0.02
    assert 0.45 < np.mean(np.diff(out) > 0) < 0.55


@pytest.mark.parametrize(
    ("name", "data", "fmt", "message"),
    [
        ("cut.trace.gz", gzip.compress(cache2k(list(range(1000))))[:-20], "cache2k", "truncated, corrupt"),
        ("cut.trace.xz", lzma.compress(cache2k(list(range(1000))))[:-20], "cache2k", "truncated, corrupt"),
        ("cut.lis.zst", zstandard.ZstdCompressor().compress(ARC * 100)[:-20], "arc", "truncated, corrupt"),
        ("odd.trace", cache2k([0, 1, 2]) + b"\x00\x01", "cache2k", "truncated cache2k trace"),
        ("odd.bin", oracle([(1, 2, 3, 4)]) + b"\x00" * 5, "oracle-general", "truncated oracleGeneral"),
        ("nokey.csv", b"time,op\n1,r\n", "libcachesim-csv", "no key column"),
        # (fuzzing found it: pyarrow's KeyError, a traceback)
        ("twice.csv", b"time,id,id\n1,a,b\n", "libcachesim-csv", "names the column 'id' 2 times"),
        ("binary.csv", cache2k(list(range(50))), "twitter", "not a twitter trace"),
        ("text.lis", b"hello world\n", "arc", "not a arc trace"),
        ("empty.trace", b"", "lines", "holds no requests"),
    ],
)
def test_bad_traces(tmp_path: Path, name: str, data: bytes, fmt: str, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError, match=message) as info:
        read_trace(str(path), fmt)
    assert "\n" not in str(info.value)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown trace format"):
        read_trace(str(write(tmp_path, "x", LINES)), "nope")
    with pytest.raises(DataError, match="cannot read"):
        read_trace(str(tmp_path / "absent"), "lines")
    assert set(FORMATS) == {"libcachesim-csv", "arc", "lines", "cache2k", "oracle-general", "twitter"}


# --- the shared real traces, where this machine has them -------------------------------------------

SHARED = [
    ("cloudPhysicsIO.csv", "libcachesim-csv", 113_872, 48_974),
    ("OLTP.lis.zst", "arc", 914_145, 186_880),
    ("multi1.trace.gz", "lines", 15_858, 2_606),
    ("web07.trace.xz", "cache2k", 76_118, 20_484),
]


@pytest.mark.parametrize(("name", "fmt", "requests", "unique"), SHARED)
def test_shared_traces_import_with_the_published_counts(
    traces: Path, name: str, fmt: str, requests: int, unique: int
) -> None:
    log = read_trace(str(traces / name), fmt)
    codes, names = log.key_codes()
    assert (len(log), len(names)) == (requests, unique)


def test_a_read_error_ends_pyarrows_stream_and_is_raised_in_the_calling_thread() -> None:
    """pyarrow's CSV reader reads its file from an I/O thread of its own. A read that fails there
    (a gzip stream cut short) must not leave that thread reading on while the command exits (a
    process aborted with -6 in CI): the failing read ends the stream, no read follows it, and the
    error is raised where the batches are read, after the last one."""
    import io

    from accesslog.traces import _csv_reader

    class CutShort(io.RawIOBase):
        def __init__(self) -> None:
            self.data = io.BytesIO(b"1\n2\n3\n")
            self.failed = False
            self.reads_after_failing = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            if self.failed:
                self.reads_after_failing += 1
            chunk = self.data.read(size)
            if not chunk:
                self.failed = True
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            return chunk

    source = CutShort()
    batches = _csv_reader(source, names=["key"], types={"key": pa.string()})  # type: ignore[arg-type]
    keys: list[str] = []
    with pytest.raises(EOFError, match="end-of-stream"):
        for batch in batches:
            keys += batch.column("key").to_pylist()
    assert keys == ["1", "2", "3"]
    assert source.failed and source.reads_after_failing == 0
