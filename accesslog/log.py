"""The access-log format: one schema for training, simulation and replay.

A log is an Arrow table with the columns of :data:`SCHEMA` plus a small JSON metadata object (where it
came from, the generator and its parameters, whether the clock is synthetic). On disk it is Parquet
(the metadata in the schema's key-value metadata) or, for export, CSV whose first line is
``# predis {json}``. Readers stream either in record batches, so a log larger than memory can still be
scanned.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common.errors import DataError

SCHEMA = pa.schema(
    [
        pa.field("ts", pa.float64(), nullable=False),  # seconds since the Unix epoch (or a synthetic clock)
        pa.field("key", pa.string(), nullable=False),  # the Redis key, as the application names it
        pa.field("op", pa.string(), nullable=False),  # GET, SET, DEL, ... (upper case)
        pa.field("size", pa.int64(), nullable=False),  # value size in bytes; 0 where the source has none
        pa.field("source", pa.string(), nullable=False),  # workload or trace name
        pa.field("client", pa.int64()),  # client or session id, where known
        pa.field("ttl", pa.float64()),  # seconds; null: no expiry, or unknown
    ]
)
REQUIRED = ("ts", "key", "op", "size", "source")
META_KEY = b"predis"
CSV_PREFIX = "# predis "
# Batches of about a million rows keep a stream's memory near 50 MB whatever the file's size.
DEFAULT_BATCH_ROWS = 1 << 20

READ_OPS = frozenset({"GET", "MGET", "GETEX", "HGET", "HGETALL"})


@dataclass
class AccessLog:
    """An access log in memory: an Arrow table with :data:`SCHEMA` and its metadata."""

    table: pa.Table
    meta: dict[str, Any] = field(default_factory=dict)
    _codes: tuple[np.ndarray, pa.Array] | None = field(default=None, repr=False)
    # What readers computed from this log, kept as long as it is (the ML arm's predictions for its
    # trace, shared by its arms at several cache sizes): key -> value, the key naming its maker.
    derived: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.table = conform(self.table)

    def __len__(self) -> int:
        return int(self.table.num_rows)

    @property
    def source(self) -> str:
        return str(self.meta.get("source", ""))

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.table.column(name).to_numpy(zero_copy_only=False))

    def timestamps(self) -> np.ndarray:
        return self.column("ts")

    def key_codes(self) -> tuple[np.ndarray, pa.Array]:
        """Keys as int32 codes in order of first appearance, and the key strings they stand for."""
        if self._codes is None:
            encoded = pc.dictionary_encode(self.table.column("key")).combine_chunks()
            codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
            self._codes = (codes, encoded.dictionary)
        return self._codes

    def keys(self) -> list[str]:
        """The key of every access, one shared str object per distinct key (so a replay's dict
        lookups hash each key once)."""
        codes, names = self.key_codes()
        return np.array(names.to_pylist(), dtype=object)[codes].tolist()  # type: ignore[no-any-return]

    def clients(self) -> np.ndarray:
        """The client id of every access as int64; all 0 (one stream) unless every access has one."""
        col = self.column("client")
        if col.dtype.kind != "i":  # nulls come back as float NaN
            return np.zeros(len(self), np.int64)
        return col.astype(np.int64, copy=False)


def conform(table: pa.Table) -> pa.Table:
    """Cast ``table`` to :data:`SCHEMA`, adding the optional columns as nulls; DataError if it cannot."""
    missing = [name for name in REQUIRED if name not in table.column_names]
    if missing:
        raise DataError(f"access log lacks the column(s) {', '.join(missing)}")
    twice = sorted({f.name for f in SCHEMA if table.column_names.count(f.name) > 1})
    if twice:  # (which of them is meant cannot be told)
        raise DataError(f"access log has the column(s) {', '.join(twice)} more than once")
    columns = []
    for f in SCHEMA:
        if f.name in table.column_names:
            col = table.column(f.name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise DataError(
                        f"access log column {f.name!r} is not {f.type}: {_first_line(exc)}"
                    ) from None
            if not f.nullable and col.null_count:
                raise DataError(f"access log column {f.name!r} has {col.null_count} empty value(s)")
        else:
            col = pa.nulls(table.num_rows, f.type)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def make_table(
    ts: np.ndarray,
    keys: pa.Array | list[str],
    op: pa.Array | list[str] | str,
    size: np.ndarray | int,
    source: str,
    client: np.ndarray | None = None,
    ttl: np.ndarray | None = None,
) -> pa.Table:
    """Build a log table from columns; scalars are broadcast."""
    n = len(ts)
    if isinstance(op, str):
        op = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([op])).cast(pa.string())
    if isinstance(size, int):
        size = np.full(n, size, np.int64)
    src = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([source]))
    arrays = [
        pa.array(ts, pa.float64()),
        keys if isinstance(keys, pa.Array) else pa.array(keys, pa.string()),
        op if isinstance(op, pa.Array) else pa.array(op, pa.string()),
        pa.array(size, pa.int64()),
        src.cast(pa.string()),
        pa.nulls(n, pa.int64()) if client is None else pa.array(client, pa.int64()),
        pa.nulls(n, pa.float64())
        if ttl is None
        else pa.array(ttl, pa.float64(), from_pandas=True),  # NaN: none
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def keys_from_codes(codes: np.ndarray, names: list[str]) -> pa.Array:
    """A string column from int codes into ``names``, without building a Python string per row."""
    dictionary = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32, copy=False)), pa.array(names))
    return dictionary.cast(pa.string())


# --- files ----------------------------------------------------------------------------------------


def write_log(log: AccessLog, path: str | os.PathLike[str], *, fmt: str | None = None) -> None:
    """Write ``log`` as Parquet, or as CSV when ``fmt`` is "csv" or the path ends in .csv."""
    path = os.fspath(path)
    fmt = fmt or ("csv" if path.endswith(".csv") else "parquet")
    try:
        if fmt == "parquet":
            with pq.ParquetWriter(path, SCHEMA.with_metadata(_meta_bytes(log.meta)), compression="zstd") as w:
                w.write_table(log.table, row_group_size=DEFAULT_BATCH_ROWS)
        elif fmt == "csv":
            with open(path, "wb") as fh:
                fh.write(f"{CSV_PREFIX}{json.dumps(log.meta, sort_keys=True)}\n".encode())
                pacsv.write_csv(log.table, fh)
        else:
            raise DataError(f"unknown access-log format {fmt!r}: use parquet or csv")
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None


class LogWriter:
    """Write a log batch by batch (for imports larger than memory); Parquet only."""

    def __init__(self, path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
        self.path = os.fspath(path)
        self.meta = meta
        self.rows = 0
        try:
            self._writer = pq.ParquetWriter(
                self.path, SCHEMA.with_metadata(_meta_bytes(meta)), compression="zstd"
            )
        except OSError as exc:
            raise DataError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(conform(table), row_group_size=DEFAULT_BATCH_ROWS)
        self.rows += table.num_rows

    def close(self, meta_update: dict[str, Any] | None = None) -> None:
        if meta_update:
            self.meta.update(meta_update)
            self._writer.add_key_value_metadata({META_KEY: _meta_bytes(self.meta)[META_KEY]})
        self._writer.close()


def read_log(path: str | os.PathLike[str]) -> AccessLog:
    """Read a whole access log (Parquet or Predis CSV)."""
    meta = read_meta(path)
    batches = list(iter_batches(path))
    table = pa.Table.from_batches(batches, schema=SCHEMA) if batches else SCHEMA.empty_table()
    return AccessLog(table, meta)


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = os.fspath(path)
    kind = _kind(path)
    try:
        if kind == "parquet":
            raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
            return dict(json.loads(raw)) if raw else {}
        with open(path, "rb") as fh:
            first = fh.readline().decode("utf-8", "replace")
        return dict(json.loads(first[len(CSV_PREFIX) :])) if first.startswith(CSV_PREFIX) else {}
    except (pa.ArrowException, json.JSONDecodeError, OSError) as exc:
        raise DataError(f"{path}: unreadable access log: {_first_line(exc)}") from None


def iter_batches(path: str | os.PathLike[str], rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Stream an access log in record batches of about ``rows`` rows, each conforming to SCHEMA."""
    path = os.fspath(path)
    kind = _kind(path)
    try:
        if kind == "parquet":
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=rows):
                yield from conform(pa.Table.from_batches([batch])).to_batches()
        else:
            yield from _iter_csv(path, rows)
    except DataError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: unreadable access log: {_first_line(exc)}") from None


def _iter_csv(path: str, rows: int) -> Iterator[pa.RecordBatch]:
    with open(path, "rb") as fh:
        skip = 1 if fh.readline().startswith(CSV_PREFIX.encode()) else 0
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(skip_rows=skip, block_size=max(1 << 20, rows * 64)),
        convert_options=pacsv.ConvertOptions(
            column_types={f.name: f.type for f in SCHEMA}, strings_can_be_null=False
        ),
    )
    for batch in reader:
        yield from conform(pa.Table.from_batches([batch])).to_batches()


def _kind(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(CSV_PREFIX))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(CSV_PREFIX.encode()) or head.startswith(b'"ts"') or head.startswith(b"ts,"):
        return "csv"
    raise DataError(
        f"{path}: not an access log (Parquet or Predis CSV); import traces with `predis trace import`"
    )


def _meta_bytes(meta: dict[str, Any]) -> dict[bytes, bytes]:
    return {META_KEY: json.dumps(meta, sort_keys=True).encode()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
