"""Recording live reads as rotating access logs, for retraining (issue 22).

``AccessRecorder`` takes the reads the prediction engine receives (in the engine's process, never
on the proxy's event loop) and writes them as access-log Parquet files (``accesslog.log.SCHEMA``) in
one directory:

* **Sampled by client stream**, not by read: a sampled client's reads are all kept, in order, so a
  model can learn what follows what; ``sample`` is the share of streams kept.
* **Bounded in memory**: at most ``buffer_rows`` rows wait for the next write; past it reads are
  dropped and counted.
* **Bounded on disk**: a file is closed and a new one started after ``rotate_rows`` rows or
  ``rotate_seconds``; the oldest closed files are deleted while the directory's files exceed
  ``max_bytes``. A file being written is named ``*.parquet.partial`` and renamed when closed, so a
  reader (``predis train``, retraining) only ever sees whole files.
* **Write errors** (a full disk) lose the rows of that write, are counted with their last message,
  and never stop the engine: the next write tries again.
* **Pseudonymized keys** (``salt``): each run of non-digits becomes a keyed hash of it and each run of
  digits a keyed permutation of the numbers of its length, so the same key always maps to the same
  pseudonym, keys of one template still share one (``user:#:cart`` stays one template), and a number
  shared by two keys stays shared (the model's "the next key takes this read's number" still holds).
  Without the salt the names cannot be recovered; with it, short numbers can be enumerated, so the
  salt is a secret like a password.

Keys of database N > 0 are recorded as ``db{N}:KEY`` (the format has no database column); keys that
are not UTF-8 are recorded with backslash escapes.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from accesslog.log import SCHEMA, _meta_bytes, make_table

SUFFIX = ".parquet"
PARTIAL = ".partial"
_RUNS = re.compile(r"\d+|\D+")
_STREAM, _DB, _KEYS = itemgetter(0), itemgetter(1), itemgetter(2)
_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


class Pseudonymizer:
    """Keys to pseudonyms of the same shape under a secret salt (see the module's docstring)."""

    MAX_DIGITS = 18  # longer digit runs are permuted in chunks of this many digits
    ROUNDS = 4

    def __init__(self, salt: bytes, cache: int = 200_000) -> None:
        if not salt:
            raise ValueError("a pseudonymizer needs a salt")
        self.salt = hashlib.blake2b(salt, digest_size=32).digest()
        self.cache: dict[str, str] = {}
        self.cache_limit = cache

    def _prf(self, tag: bytes, value: int, bits: int) -> int:
        h = hashlib.blake2b(tag + value.to_bytes(16, "big"), key=self.salt, digest_size=16)
        return int.from_bytes(h.digest(), "big") & ((1 << bits) - 1)

    def _permute(self, x: int, n: int) -> int:
        """A keyed permutation of [0, n): a balanced Feistel network over the smallest even number
        of bits holding n, walked until it lands in range (on average under 4 times)."""
        half = max(1, ((n - 1).bit_length() + 1) // 2)
        mask = (1 << half) - 1
        tag = n.to_bytes(8, "big")
        while True:
            left, right = x >> half, x & mask
            for r in range(self.ROUNDS):
                left, right = right, left ^ self._prf(tag + bytes([r]), right, half)
            x = (left << half) | right
            if x < n:
                return x

    def digits(self, run: str) -> str:
        out = []
        for at in range(0, len(run), self.MAX_DIGITS):
            chunk = run[at : at + self.MAX_DIGITS]
            out.append(str(self._permute(int(chunk), 10 ** len(chunk))).zfill(len(chunk)))
        return "".join(out)

    def text(self, run: str) -> str:
        """A run of non-digits as 10 lower-case letters of its keyed hash (no digits: a hash's
        digits would read as numbers and split the template)."""
        h = hashlib.blake2b(run.encode("utf-8", "surrogatepass"), key=self.salt, digest_size=6)
        value = int.from_bytes(h.digest(), "big")
        letters = []
        for _ in range(10):
            value, at = divmod(value, 26)
            letters.append(chr(97 + at))
        return "".join(letters)

    def __call__(self, key: str) -> str:
        got = self.cache.get(key)
        if got is None:
            got = "".join(self.digits(r) if r[0].isdigit() else self.text(r) for r in _RUNS.findall(key))
            if len(self.cache) >= self.cache_limit:
                self.cache.clear()
            self.cache[key] = got
        return got


def _as_text(raw: list[bytes] | list[str]) -> pa.Array:
    """Keys as a string column: UTF-8 checked in C, and where a key is not UTF-8 (or not bytes),
    each key decoded with backslash escapes."""
    try:
        return pa.array(raw, pa.binary()).cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array(
            [k.decode("utf-8", "backslashreplace") if isinstance(k, bytes) else str(k) for k in raw],
            pa.string(),
        )


class AccessRecorder:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        sample: float = 1.0,
        seed: int = 0,
        rotate_rows: int = 1_000_000,
        rotate_seconds: float = 3600.0,
        max_bytes: int = 1 << 30,
        buffer_rows: int = 100_000,
        salt: str = "",
        source: str = "predis",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"access log sample must be in [0, 1], not {sample}")
        if min(rotate_rows, buffer_rows, max_bytes) < 1 or rotate_seconds <= 0:
            raise ValueError(
                "access log rotate_rows, rotate_seconds, max_bytes and buffer_rows must be positive"
            )
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sample, self.seed = sample, seed
        self.rotate_rows, self.rotate_seconds = rotate_rows, rotate_seconds
        self.max_bytes, self.buffer_rows = max_bytes, buffer_rows
        self.pseudonym = Pseudonymizer(salt.encode()) if salt else None
        self.source = source
        self.clock = clock
        self.kept: dict[int, bool] = {}  # stream -> sampled
        # The batches that wait for the next write, as they came: (time, their reads, their rows).
        # Columns are built once a write (``flush``), mostly in C; the engine's loop, which calls
        # ``add`` for every batch, pays a few list operations a batch.
        self.batches: list[tuple[float, Sequence[tuple[int, int, Sequence[bytes], bool]], int]] = []
        self.waiting = 0  # rows in ``batches``
        self.writer: pq.ParquetWriter | None = None
        self.path: Path | None = None
        self.file_rows = 0
        self.file_started = 0.0
        self.serial = 0
        # Figures.
        self.recorded = 0  # rows written
        self.sampled_out = 0  # reads of streams not sampled
        self.dropped = 0  # reads lost: the buffer full, or a write that failed
        self.write_errors = 0
        self.last_error = ""
        self.files_deleted = 0
        self.files_closed = 0
        self.orphans_removed = self._remove_orphans()

    def _remove_orphans(self) -> int:
        """Unfinished files of recorders that died (their process gone): a Parquet file without its
        footer cannot be read, so they go."""
        removed = 0
        for path in self.dir.glob(f"access-*{SUFFIX}{PARTIAL}"):
            try:
                pid = int(path.name.split("-")[3])
                os.kill(pid, 0)  # (alive: another recorder's file, left alone)
                continue
            except (ValueError, IndexError, ProcessLookupError):
                pass
            except PermissionError:
                continue
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def keeps(self, stream: int) -> bool:
        kept = self.kept.get(stream)
        if kept is None:
            if len(self.kept) >= 1_000_000:
                self.kept.clear()
            draw = ((stream * _GOLDEN + self.seed * 0xBF58476D1CE4E5B9) & _MASK) / 2.0**64
            kept = self.kept[stream] = draw < self.sample
        return kept

    def add(self, t: float, reads: Sequence[tuple[int, int, Sequence[bytes], bool]]) -> None:
        """A batch of reads (stream, db, keys, hit) that came at ``t`` (seconds since the epoch).
        Its reads are kept (the list copied, their key lists not) until the next write: the
        caller must not change a read's keys meanwhile."""
        if self.sample < 1.0:
            keep, kept = self.keeps, []
            for read in reads:
                if keep(read[0]):
                    kept.append(read)
                else:
                    self.sampled_out += len(read[2])
            reads = kept
        rows = sum(map(len, map(_KEYS, reads)))
        room = self.buffer_rows - self.waiting
        if rows > room:
            cut = []
            for stream, db, keys, hit in reads:  # (as many keys as fit, in order)
                take = max(0, min(len(keys), room))
                self.dropped += len(keys) - take
                room -= take
                if take:
                    cut.append((stream, db, keys[:take], hit))
            reads, rows = cut, sum(map(len, map(_KEYS, cut)))
        if rows:
            self.batches.append((t, tuple(reads), rows))
            self.waiting += rows

    def _columns(self) -> tuple[np.ndarray, pa.Array | list[str], np.ndarray]:
        """The waiting batches as the log's time, key and client columns (one row per key)."""
        batches = self.batches
        reads = [read for _, batch, _ in batches for read in batch]
        n = len(reads)
        raw = list(chain.from_iterable(map(_KEYS, reads)))
        ts = np.repeat(np.array([t for t, _, _ in batches], np.float64), [rows for _, _, rows in batches])
        clients = np.fromiter(map(_STREAM, reads), np.int64, n)
        counts = np.fromiter(map(len, map(_KEYS, reads)), np.int64, n)
        per_read = None if bool(np.all(counts == 1)) else counts  # (None: a key a read, as GETs are)
        if per_read is not None:  # (an MGET's several keys, or none)
            clients = np.repeat(clients, per_read)
        dbs = list(map(_DB, reads)) if any(map(_DB, reads)) else []
        if not dbs and self.pseudonym is None:
            return ts, _as_text(raw), clients
        keys = _as_text(raw).to_pylist()
        if dbs:
            prefixes = np.repeat(np.array(dbs, np.int64), per_read).tolist() if per_read is not None else dbs
            keys = [f"db{db}:{key}" if db else key for db, key in zip(prefixes, keys, strict=True)]
        if self.pseudonym is not None:
            keys = list(map(self.pseudonym, keys))
        return ts, keys, clients

    def flush(self) -> None:
        """Write what waits and rotate or trim as the bounds say."""
        now = self.clock()
        if self.writer is not None and (
            self.file_rows >= self.rotate_rows or now - self.file_started >= self.rotate_seconds
        ):
            self._close_file()
        if not self.waiting:
            return
        ts, keys, clients = self._columns()
        self.batches, self.waiting = [], 0
        table = make_table(ts, keys, "GET", 0, self.source, client=clients)
        at = 0
        while at < table.num_rows:  # (no file holds more than rotate_rows rows)
            if self.writer is None:
                try:
                    self._open_file(now)
                except OSError as exc:
                    self._failed(exc, table.num_rows - at)
                    return
            part = table.slice(at, self.rotate_rows - self.file_rows)
            at += part.num_rows
            try:
                assert self.writer is not None
                self.writer.write_table(part)
                self.file_rows += part.num_rows
                self.recorded += part.num_rows
            except OSError as exc:  # (a full disk: these rows and the file's are lost)
                self._failed(exc, part.num_rows)
                self._abandon_file()  # (the next write tries again, in a new file)
                continue
            if self.file_rows >= self.rotate_rows:
                self._close_file()

    def _failed(self, exc: OSError, rows: int) -> None:
        self.write_errors += 1
        self.dropped += rows
        self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    def _open_file(self, now: float) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        while True:  # (another recorder of this process may have used the name this second)
            self.serial += 1
            name = f"access-{stamp}-{os.getpid()}-{self.serial:04d}{SUFFIX}"
            if not (self.dir / name).exists() and not (self.dir / (name + PARTIAL)).exists():
                break
        self.path = self.dir / (name + PARTIAL)
        meta = {"source": self.source, "recorded_by": "predis", "pseudonymized": self.pseudonym is not None}
        self.writer = pq.ParquetWriter(
            str(self.path), SCHEMA.with_metadata(_meta_bytes(meta)), compression="zstd"
        )
        self.file_rows = 0
        self.file_started = now

    def _close_file(self) -> None:
        writer, path = self.writer, self.path
        self.writer, self.path = None, None
        if writer is None or path is None:
            return
        try:
            writer.close()
            path.rename(path.with_name(path.name[: -len(PARTIAL)]))
            self.files_closed += 1
        except OSError as exc:
            self.write_errors += 1
            self.last_error = str(exc).splitlines()[0]
            path.unlink(missing_ok=True)
        self._trim()

    def _abandon_file(self) -> None:
        """After a failed write the file may be unreadable: it goes, and its rows count as lost."""
        writer, path = self.writer, self.path
        self.writer, self.path = None, None
        self.recorded -= self.file_rows
        self.dropped += self.file_rows
        self.file_rows = 0
        try:
            if writer is not None:
                writer.close()
        except OSError:
            pass
        if path is not None:
            path.unlink(missing_ok=True)

    def files(self) -> list[Path]:
        """The closed files, oldest first."""
        return closed_files(self.dir)

    def _trim(self) -> None:
        files = self.files()
        sizes = [p.stat().st_size for p in files]
        total = sum(sizes) + (self.path.stat().st_size if self.path is not None and self.path.exists() else 0)
        for path, size in zip(files, sizes, strict=True):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            self.files_deleted += 1

    def close(self) -> None:
        self.flush()
        self._close_file()

    def figures(self) -> dict[str, Any]:
        files = self.files()
        return {
            "recorded": self.recorded,
            "sampled_out": self.sampled_out,
            "dropped": self.dropped,
            "waiting": self.waiting,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
            "files": len(files),
            "bytes": sum(p.stat().st_size for p in files),
            "files_deleted": self.files_deleted,
            "orphans_removed": self.orphans_removed,
        }


def closed_files(directory: str | os.PathLike[str]) -> list[Path]:
    """A recording directory's closed (whole) files, oldest first."""
    return sorted(Path(directory).glob(f"access-*{SUFFIX}"), key=lambda p: (p.stat().st_mtime, p.name))


def read_recorded(directory: str | os.PathLike[str]) -> pa.Table:
    """Every closed file of a recording directory, oldest first, as one table."""
    from accesslog.log import read_log

    tables = [read_log(p).table for p in closed_files(directory)]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()
