"""The access recorder (accesslog.recorder) without sockets: whole client streams sampled, files
rotated and trimmed to the byte bound, only whole files visible, the buffer bounded, a full disk
survived and counted, and pseudonyms that keep keys' shapes and shared numbers."""

from __future__ import annotations

import os
import resource
import signal
from collections import defaultdict
from pathlib import Path

import pytest

from accesslog.log import read_log
from accesslog.recorder import PARTIAL, AccessRecorder, Pseudonymizer, read_recorded
from ml.vocab import template_of


def batch(streams: range, start: int, n: int = 3) -> list[tuple[int, int, list[bytes], bool]]:
    return [(s, 0, [f"user:{s}:item:{start + i}".encode() for i in range(n)], False) for s in streams]


def test_streams_are_sampled_whole_and_in_order(tmp_path: Path) -> None:
    rec = AccessRecorder(tmp_path, sample=0.3, seed=7)
    for b in range(10):
        rec.add(1000.0 + b, batch(range(200), 3 * b))
        rec.flush()
    rec.close()
    table = read_recorded(tmp_path)
    keys, clients = table.column("key").to_pylist(), table.column("client").to_pylist()
    by_client: dict[int, list[str]] = defaultdict(list)
    for key, client in zip(keys, clients, strict=True):
        by_client[client].append(key)
    assert 30 < len(by_client) < 90  # (about 60 of 200 streams)
    for client, seen in by_client.items():  # every read of a kept stream, in its order
        assert seen == [f"user:{client}:item:{i}" for i in range(30)]
    assert rec.sampled_out == (200 - len(by_client)) * 30 and rec.recorded == len(keys)
    assert set(table.column("op").to_pylist()) == {"GET"}
    assert table.column("ts").to_pylist()[0] == 1000.0


def test_rotation_trim_and_whole_files_only(tmp_path: Path) -> None:
    rec = AccessRecorder(tmp_path, rotate_rows=300, max_bytes=6_000)
    rec.add(1.0, batch(range(100), 0))  # 300 rows: a full file
    rec.flush()
    rec.flush()  # (rotates: the file is closed)
    assert len(rec.files()) == 1 and not list(tmp_path.glob(f"*{PARTIAL}"))
    rec.add(2.0, batch(range(50), 3))
    rec.flush()  # a second file, open
    assert len(list(tmp_path.glob(f"*{PARTIAL}"))) == 1 and len(read_recorded(tmp_path)) == 300
    for b in range(30):
        rec.add(3.0 + b, batch(range(100), 10 + 3 * b))
        rec.flush()
    rec.close()
    files = rec.files()
    assert sum(p.stat().st_size for p in files) <= 6_000 and rec.files_deleted > 0
    for path in files:  # each a whole access log
        assert len(read_log(path)) >= 150


def test_buffer_bound_drops_and_counts(tmp_path: Path) -> None:
    rec = AccessRecorder(tmp_path, buffer_rows=100)
    rec.add(1.0, batch(range(50), 0))  # 150 reads: 100 fit
    assert rec.dropped == 50 and rec.waiting == 100
    rec.close()
    assert rec.recorded == 100


def test_a_full_disk_loses_rows_counts_them_and_recovers(tmp_path: Path) -> None:
    rec = AccessRecorder(tmp_path, rotate_rows=10**9)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, limits[1]))  # (a file may not grow past this)
    try:
        for _ in range(30):
            rec.add(
                1.0, [(s, 0, [os.urandom(24).hex().encode() for _ in range(20)], False) for s in range(10)]
            )
            rec.flush()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, old)
    assert rec.write_errors > 0 and "too large" in rec.last_error
    assert rec.recorded + rec.dropped == 30 * 200
    rec.add(2.0, batch(range(10), 0))
    rec.close()  # the disk has room again: the rows the open file holds are kept
    assert len(read_recorded(tmp_path)) == rec.recorded > 0


def test_orphaned_partial_files_of_dead_recorders_go(tmp_path: Path) -> None:
    dead = tmp_path / f"access-20260101-000000-{2**22 + 12345}-0001.parquet{PARTIAL}"
    dead.write_bytes(b"PAR1 unfinished")
    alive = tmp_path / f"access-20260101-000000-{os.getpid()}-0001.parquet{PARTIAL}"
    alive.write_bytes(b"PAR1 still being written")
    rec = AccessRecorder(tmp_path)
    assert rec.orphans_removed == 1 and not dead.exists() and alive.exists()


def test_pseudonyms_keep_shapes_and_shared_numbers() -> None:
    p = Pseudonymizer(b"secret")
    a, b, c = p("user:1234:cart"), p("user:1234:orders"), p("user:77:cart")
    assert p("user:1234:cart") == a and Pseudonymizer(b"other")("user:1234:cart") != a
    assert "user" not in a and "cart" not in a and "1234" not in a
    assert template_of(a) == template_of(c) != template_of(b)  # one template stays one
    number = lambda k: "".join(ch for ch in k if ch.isdigit())  # noqa: E731
    assert number(a) == number(b) and len(number(a)) == 4 and len(number(c)) == 2  # shared, same length
    # Digit runs are permuted: no two numbers of one length share a pseudonym.
    assert len({p.digits(f"{i:03d}") for i in range(1000)}) == 1000
    assert len(p.digits("1" * 40)) == 40
    with pytest.raises(ValueError):
        Pseudonymizer(b"")


def test_two_recorders_of_one_process_never_write_over_each_other(tmp_path: Path) -> None:
    for start in (0, 3):  # (the same second, the same process: names must still differ)
        rec = AccessRecorder(tmp_path, clock=lambda: 1_000_000.0)
        rec.add(1.0, batch(range(10), start))
        rec.close()
    assert len(list(tmp_path.iterdir())) == 2 and len(read_recorded(tmp_path)) == 60


def test_every_key_of_a_read_is_a_row_of_its_client_with_its_database_and_escapes(tmp_path: Path) -> None:
    """The columns are built for a whole write at once: an MGET's keys are rows of its client, in
    order, at its batch's time; a key of database 3 is recorded as db3:KEY; a key that is not
    UTF-8 is escaped (the whole write's keys are then decoded one by one, as before)."""
    rec = AccessRecorder(tmp_path)
    rec.add(10.0, [(1, 0, [b"a", b"b", b"c"], False), (2, 3, [b"k"], True), (3, 0, [], False)])
    rec.add(11.0, [(2, 0, [b"\xffbin"], False), (1, 0, ["text"], True)])
    assert rec.waiting == 6
    rec.close()
    table = read_recorded(tmp_path)
    assert table.column("key").to_pylist() == ["a", "b", "c", "db3:k", "\\xffbin", "text"]
    assert table.column("client").to_pylist() == [1, 1, 1, 2, 2, 1]
    assert table.column("ts").to_pylist() == [10.0, 10.0, 10.0, 10.0, 11.0, 11.0]
    rec = AccessRecorder(tmp_path / "utf8")
    rec.add(12.0, [(5, 0, ["é".encode(), b"x"], False), (6, 0, [], False)])  # (two reads, two keys)
    rec.close()
    assert read_recorded(tmp_path / "utf8").column("key").to_pylist() == ["é", "x"]
    assert read_recorded(tmp_path / "utf8").column("client").to_pylist() == [5, 5]
