"""Readers for real cache traces, converting each into the access-log format in streamed chunks.

Formats (``FORMATS``): libCacheSim CSV (with a header), ARC ``.lis``, one key per line, cache2k
big-endian int32, libCacheSim ``oracleGeneral`` binary and the Twitter cache-trace CSV. Compressed
inputs (gzip, xz, zstd) are recognised by their magic bytes, whatever the file is called.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from accesslog.log import DEFAULT_BATCH_ROWS, LogWriter, _first_line, make_table
from common.errors import DataError

TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}  # units per second
DEFAULT_CLOCK_RATE = 1000.0  # requests per second of the synthetic clock given to untimed traces


@dataclass
class ImportOptions:
    source: str = ""
    remap: bool | None = None  # None: the format's default (on for cache2k only)
    seed: int = 0
    time_unit: str | None = None  # None: the format's default
    clock_rate: float = DEFAULT_CLOCK_RATE
    chunk_rows: int = DEFAULT_BATCH_ROWS


@dataclass
class _Format:
    reader: Callable[[IO[bytes], ImportOptions, _Clock], Iterator[pa.Table]]
    timed: bool  # carries its own timestamps
    remap_default: bool
    time_unit: str
    doc: str


class _Clock:
    """Synthetic timestamps for untimed traces: request i happens at i / rate seconds."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next = 0

    def take(self, n: int) -> np.ndarray:
        ts = (np.arange(self.next, self.next + n, dtype=np.float64)) / self.rate
        self.next += n
        return ts


# --- compressed input -----------------------------------------------------------------------------

_MAGIC: list[tuple[bytes, str]] = [
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
]


def codec_of(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return "none"


def open_input(path: str) -> IO[bytes]:
    """Open ``path`` for reading, decompressing gzip, xz, zstd or bzip2 on the fly."""
    codec = codec_of(path)
    if codec == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if codec == "xz":
        return lzma.open(path, "rb")
    if codec == "bzip2":
        return bz2.open(path, "rb")
    if codec == "zstd":
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 20)
    return open(path, "rb")  # noqa: SIM115


class _ZstdReader(io.RawIOBase):
    """A zstd stream that, unlike zstandard's stream_reader, raises EOFError when the file is cut short
    instead of ending quietly with the data so far. Concatenated frames are read in turn."""

    def __init__(self, path: str) -> None:
        import zstandard

        self._zstd = zstandard.ZstdDecompressor()
        self._raw = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._obj = self._zstd.decompressobj()
        self._pending = b""
        self._fed = False  # whether the current frame has had any input

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._fed and not self._obj.eof:
                    raise EOFError("zstd stream ends in the middle of a frame")
                return 0
            while chunk:
                self._fed = True
                self._pending += self._obj.decompress(chunk)
                chunk = b""
                if self._obj.eof:
                    chunk = self._obj.unused_data
                    self._obj = self._zstd.decompressobj()
                    self._fed = False
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


# --- id remapping -----------------------------------------------------------------------------------


def permute_ids(ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random permutation of the 32-bit ids (a four-round Feistel network).

    Works chunk by chunk without knowing the id range, and is a bijection, so distinct keys stay
    distinct; unlike an affine map it leaves no arithmetic trace of first-appearance numbering.
    """
    x = ids.astype(np.int64).astype(np.uint32).astype(np.uint64)
    left, right = x >> np.uint64(16), x & np.uint64(0xFFFF)
    keys = np.random.default_rng(seed).integers(1, 2**32, size=4, dtype=np.uint64)
    for k in keys:
        h = (right * np.uint64(0x9E3779B1) + k) & np.uint64(0xFFFFFFFF)
        h ^= h >> np.uint64(15)
        h = (h * np.uint64(0x85EBCA77)) & np.uint64(0xFFFFFFFF)
        h ^= h >> np.uint64(13)
        left, right = right, left ^ (h & np.uint64(0xFFFF))
    return ((left << np.uint64(16)) | right).astype(np.int64)


def _int_keys(ids: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(ids, pa.int64()), pa.string())


# --- readers --------------------------------------------------------------------------------------


class _EndOnError(io.RawIOBase):
    """A file that pyarrow's CSV reader reads from its own I/O thread: a read that fails (a gzip
    stream cut short, say) ends the stream there instead, and the error is kept for the main
    thread to raise once the reader has seen the end (``_CsvBatches``). Raised in the I/O thread,
    the error left that thread reading on while the command printed its one line and exited, and
    a process that exited during such a read was aborted ("terminate called without an active
    exception", exit -6 instead of 2: seen once in CI)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.error: BaseException | None = None
        self.stopped = False  # (the main thread gave up: every later read ends at once)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.stopped or self.error is not None:
            return 0
        try:
            data = self._fh.read(len(buffer))
        except _READ_ERRORS as exc:
            self.error = exc
            return 0
        buffer[: len(data)] = data
        return len(data)


class _CsvBatches:
    """pyarrow's streaming CSV reader over ``_EndOnError``: its schema, its batches, then the read
    error the file met, if any."""

    def __init__(self, fh: IO[bytes], **options: Any) -> None:
        self._source = _EndOnError(fh)
        try:
            self._reader = pacsv.open_csv(io.BufferedReader(self._source, buffer_size=1 << 20), **options)
        except BaseException:
            self._source.stopped = True
            self._raise_read_error()
            raise
        self.schema = self._reader.schema

    def _raise_read_error(self) -> None:
        if self._source.error is not None:
            raise self._source.error

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._reader
        except BaseException:
            self._source.stopped = True
            self._raise_read_error()  # (the cause: a cut stream parses as a bad last line)
            raise
        self._raise_read_error()


def _csv_reader(
    fh: IO[bytes],
    *,
    names: list[str] | None,
    delimiter: str = ",",
    types: dict[str, pa.DataType] | None = None,
) -> _CsvBatches:
    return _CsvBatches(
        fh,
        read_options=pacsv.ReadOptions(
            column_names=names, autogenerate_column_names=False, block_size=8 << 20
        ),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(column_types=types or {}),
    )


_TIME_NAMES = ("time", "timestamp", "clock_time", "ts", "real_time")
_KEY_NAMES = ("obj_id", "lbn", "key", "id", "obj", "block", "addr", "lba")
_SIZE_NAMES = ("obj_size", "size", "value_size", "req_size")
_OP_NAMES = ("op", "operation", "req_type")

# SCSI opcodes as they appear in block traces (hex), and the usual spellings.
_READS = {"r", "read", "get", "gets", "28", "08", "88", "a8"}
_WRITES = {"w", "write", "set", "add", "replace", "cas", "2a", "0a", "8a", "aa"}
_OTHER = {
    "delete": "DEL",
    "del": "DEL",
    "incr": "INCR",
    "decr": "DECR",
    "append": "APPEND",
    "prepend": "PREPEND",
}


def normalise_ops(ops: pa.Array) -> pa.Array:
    """Map trace operation names to Redis-style ones: reads to GET, writes to SET, others upper-cased."""
    encoded = pc.dictionary_encode(ops)
    names = []
    for name in encoded.dictionary.to_pylist():
        low = str(name).strip().lower()
        names.append("GET" if low in _READS else "SET" if low in _WRITES else _OTHER.get(low, low.upper()))
    return pa.DictionaryArray.from_arrays(encoded.indices, pa.array(names)).cast(pa.string())


def _pick(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    return next((lower[w] for w in wanted if w in lower), None)


def read_libcachesim_csv(fh: IO[bytes], opts: ImportOptions, clock: _Clock) -> Iterator[pa.Table]:
    reader = _csv_reader(fh, names=None, types={c: pa.string() for c in _KEY_NAMES + _OP_NAMES})
    cols = reader.schema.names
    key_col = _pick(cols, _KEY_NAMES)
    if key_col is None:
        raise DataError(f"no key column in the CSV header {cols}: expected one of {', '.join(_KEY_NAMES)}")
    time_col, size_col, op_col = _pick(cols, _TIME_NAMES), _pick(cols, _SIZE_NAMES), _pick(cols, _OP_NAMES)
    for col in (key_col, time_col, size_col, op_col):
        if col is not None and cols.count(col) > 1:  # (which of them is meant cannot be told)
            raise DataError(f"the CSV header names the column {col!r} {cols.count(col)} times: {cols}")
    scale = TIME_UNITS[opts.time_unit or "us"]
    for batch in reader:
        n = batch.num_rows
        if time_col is not None:
            ts = pc.divide(pc.cast(batch.column(time_col), pa.float64()), scale).to_numpy(
                zero_copy_only=False
            )
        else:
            ts = clock.take(n)
        size = pc.cast(batch.column(size_col), pa.int64()).to_numpy(zero_copy_only=False) if size_col else 0
        op = normalise_ops(batch.column(op_col)) if op_col else "GET"
        yield make_table(ts, batch.column(key_col), op, size, opts.source)


# An ARC line's block count above this is refused, not expanded (the shared ARC traces' longest run
# is 128 blocks).
MAX_ARC_RUN = 1 << 20


def read_arc(fh: IO[bytes], opts: ImportOptions, clock: _Clock) -> Iterator[pa.Table]:
    names = ["start", "nblocks", "ignore", "reqno"]
    reader = _csv_reader(fh, names=names, delimiter=" ", types=dict.fromkeys(names, pa.int64()))
    for batch in reader:
        start = batch.column("start").to_numpy(zero_copy_only=False)
        nblocks = batch.column("nblocks").to_numpy(zero_copy_only=False)
        if (nblocks < 1).any():
            raise DataError("ARC trace line with a block count below 1")
        if (nblocks > MAX_ARC_RUN).any():  # (fuzzing found one line asking for 248 GiB)
            raise DataError(
                f"ARC trace line with a run of {int(nblocks.max()):,} blocks: more than {MAX_ARC_RUN:,}"
            )
        total = int(nblocks.sum())
        first = np.repeat(np.cumsum(nblocks) - nblocks, nblocks)
        blocks = np.repeat(start, nblocks) + (np.arange(total) - first)
        yield make_table(clock.take(total), _int_keys(blocks), "GET", 0, opts.source)


def read_lines(fh: IO[bytes], opts: ImportOptions, clock: _Clock) -> Iterator[pa.Table]:
    reader = _csv_reader(fh, names=["key"], delimiter="\x1f", types={"key": pa.string()})
    for batch in reader:
        keys = pc.utf8_trim_whitespace(batch.column("key"))
        keys = keys.filter(pc.not_equal(pc.utf8_length(keys), 0))
        if opts.remap:
            ints = pc.cast(keys, pa.int64()).to_numpy(zero_copy_only=False)
            keys = _int_keys(permute_ids(ints, opts.seed))
        yield make_table(clock.take(len(keys)), keys, "GET", 0, opts.source)


def _fixed_records(fh: IO[bytes], record: int, what: str, chunk_rows: int) -> Iterator[bytes]:
    leftover = b""
    while True:
        data = fh.read(record * chunk_rows)
        if not data:
            break
        data = leftover + data
        cut = len(data) - len(data) % record
        leftover = data[cut:]
        if cut:
            yield data[:cut]
    if leftover:
        raise DataError(
            f"truncated {what}: ends with {len(leftover)} stray byte(s) of a {record}-byte record"
        )


def read_cache2k(fh: IO[bytes], opts: ImportOptions, clock: _Clock) -> Iterator[pa.Table]:
    for chunk in _fixed_records(fh, 4, "cache2k trace", opts.chunk_rows):
        ids = np.frombuffer(chunk, dtype=">i4").astype(np.int64)
        keys = _int_keys(permute_ids(ids, opts.seed) if opts.remap else ids)
        yield make_table(clock.take(ids.size), keys, "GET", 0, opts.source)


ORACLE_GENERAL = np.dtype([("time", "<u4"), ("obj_id", "<u8"), ("size", "<u4"), ("next", "<i8")])


def read_oracle_general(fh: IO[bytes], opts: ImportOptions, clock: _Clock) -> Iterator[pa.Table]:
    scale = TIME_UNITS[opts.time_unit or "s"]
    for chunk in _fixed_records(fh, ORACLE_GENERAL.itemsize, "oracleGeneral trace", opts.chunk_rows):
        rec = np.frombuffer(chunk, dtype=ORACLE_GENERAL)
        ids = rec["obj_id"]
        keys = _int_keys(permute_ids(ids, opts.seed)) if opts.remap else pc.cast(pa.array(ids), pa.string())
        yield make_table(
            rec["time"].astype(np.float64) / scale, keys, "GET", rec["size"].astype(np.int64), opts.source
        )


TWITTER_COLUMNS = ["timestamp", "anon_key", "key_size", "value_size", "client_id", "op", "ttl"]


def read_twitter(fh: IO[bytes], opts: ImportOptions, clock: _Clock) -> Iterator[pa.Table]:
    types = {
        "timestamp": pa.float64(),
        "anon_key": pa.string(),
        "key_size": pa.int64(),
        "value_size": pa.int64(),
        "client_id": pa.int64(),
        "op": pa.string(),
        "ttl": pa.float64(),
    }
    scale = TIME_UNITS[opts.time_unit or "s"]
    for batch in _csv_reader(fh, names=TWITTER_COLUMNS, types=types):
        ttl = batch.column("ttl").to_numpy(zero_copy_only=False)
        ttl = np.where(ttl > 0, ttl, np.nan)
        yield make_table(
            batch.column("timestamp").to_numpy(zero_copy_only=False) / scale,
            batch.column("anon_key"),
            normalise_ops(batch.column("op")),
            batch.column("value_size").to_numpy(zero_copy_only=False),
            opts.source,
            client=batch.column("client_id").to_numpy(zero_copy_only=False),
            ttl=ttl,
        )


FORMATS: dict[str, _Format] = {
    "libcachesim-csv": _Format(
        read_libcachesim_csv, True, False, "us", "libCacheSim CSV with a header (time, obj_id|lbn, size, op)"
    ),
    "arc": _Format(read_arc, False, False, "s", "ARC .lis: start_block nblocks ignore request_no"),
    "lines": _Format(read_lines, False, False, "s", "one key per line (LIRS traces and the like)"),
    "cache2k": _Format(
        read_cache2k, False, True, "s", "cache2k: big-endian int32 ids numbered by first appearance"
    ),
    "oracle-general": _Format(
        read_oracle_general,
        True,
        False,
        "s",
        "libCacheSim oracleGeneral binary (u32 time, u64 id, u32 size, i64 next)",
    ),
    "twitter": _Format(
        read_twitter,
        True,
        False,
        "s",
        "Twitter cache trace CSV: timestamp,anon_key,key_size,value_size,client_id,op,TTL",
    ),
}


def _read_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (
        EOFError,
        lzma.LZMAError,
        gzip.BadGzipFile,
        OSError,
        ValueError,
        pa.ArrowException,
        zstandard.ZstdError,
    )


_READ_ERRORS = _read_errors()


def import_trace(path: str, fmt: str, out: str, opts: ImportOptions | None = None) -> dict[str, Any]:
    """Convert the trace at ``path`` into a Parquet access log at ``out``; returns the log's metadata."""
    opts = opts or ImportOptions()
    spec = FORMATS.get(fmt)
    if spec is None:
        raise DataError(f"unknown trace format {fmt!r}; known: {', '.join(FORMATS)}")
    if opts.time_unit is not None and opts.time_unit not in TIME_UNITS:
        raise DataError(f"unknown time unit {opts.time_unit!r}; known: {', '.join(TIME_UNITS)}")
    if opts.clock_rate <= 0:
        raise DataError(f"clock rate must be positive, not {opts.clock_rate}")
    if opts.remap is None:
        opts.remap = spec.remap_default
    opts.source = opts.source or _stem(path)
    codec = codec_of(path)
    meta: dict[str, Any] = {
        "source": opts.source,
        "kind": "trace",
        "format": fmt,
        "input": os.path.basename(path),
        "compression": codec,
        "remapped": bool(opts.remap),
        "remap_seed": opts.seed if opts.remap else None,
        "synthetic_clock": not spec.timed,
        "clock_rate": None if spec.timed else opts.clock_rate,
    }
    clock = _Clock(opts.clock_rate)
    writer = LogWriter(out, meta)
    try:
        with open_input(path) as fh:
            for table in spec.reader(fh, opts, clock):
                writer.write(table)
    except DataError as exc:
        writer.close()
        os.unlink(out)
        raise DataError(f"{path}: {exc}") from None
    except _READ_ERRORS as exc:
        writer.close()
        os.unlink(out)
        if "Empty CSV file" in str(exc):
            raise DataError(f"{path}: the trace holds no requests") from None
        raise DataError(
            f"{path}: truncated, corrupt or not a {fmt} trace ({codec}): {_first_line(exc)}"
        ) from None
    if writer.rows == 0:
        writer.close()
        os.unlink(out)
        raise DataError(f"{path}: the trace holds no requests")
    writer.close({"requests": writer.rows})
    meta["requests"] = writer.rows
    return meta


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".gz", ".xz", ".zst", ".bz2", ".trace", ".lis", ".csv", ".bin", ".txt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def read_trace(path: str, fmt: str, opts: ImportOptions | None = None) -> Any:
    """Import into memory (for tests and small traces): returns an :class:`AccessLog`."""
    import tempfile

    from accesslog.log import read_log

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "log.parquet")
        import_trace(path, fmt, out, opts)
        return read_log(out)


__all__ = ["FORMATS", "ImportOptions", "import_trace", "open_input", "permute_ids", "read_trace"]
