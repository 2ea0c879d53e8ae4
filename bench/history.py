"""A history of operations on keys, and its check (sans I/O): what a Jepsen-style test records and
judges while faults are injected.

Each key has one writer at a time and its values are increasing sequence numbers, so "newer" is a
number comparison. An operation is recorded with its invoke and completion times (one clock for
all threads), what it did, and whether it was acknowledged:

* a write through the proxy (``proxied=True``) or straight to Redis (``proxied=False``) of ``seq``;
* a read through the proxy, of ``seq`` (None: the key was absent).

``check`` finds:

* stale reads: a read through the proxy that returned a value older than a write through the proxy
  acknowledged before the read began (never allowed);
* the delay after direct writes: for a read that returned a value older than a direct write
  acknowledged before it began, how long before the read that newer value had been acknowledged
  (bounded by the tracking invalidation's trip; its maximum is reported);
* lost writes: an acknowledged write whose value (or a newer one) is not what the key holds at the
  end (``final``: each key's value read straight from Redis once the faults are over).
"""

from __future__ import annotations

import random
import threading
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import redis

PROXIED = [f"p{i}" for i in range(4)]  # the Workload's keys written through the proxy
DIRECT = [f"d{i}" for i in range(4)]  # ...and straight to Redis


@dataclass(frozen=True)
class Op:
    kind: str  # "write" or "read"
    key: str
    seq: int | None  # written, or read (None: absent)
    invoke: float
    complete: float
    ok: bool  # acknowledged (a write) or answered (a read)
    proxied: bool = True


@dataclass
class Verdict:
    operations: int = 0
    reads: int = 0
    writes_acked: int = 0
    errors: int = 0
    stale: list[tuple[Op, int]] = field(default_factory=list)  # (the read, the newest acked seq)
    lost: list[tuple[str, int, int | None]] = field(default_factory=list)  # (key, acked, final)
    direct_delay_max: float = 0.0  # seconds
    direct_lagging_reads: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "operations": self.operations,
            "reads": self.reads,
            "writes_acked": self.writes_acked,
            "errors": self.errors,
            "stale_reads": len(self.stale),
            "lost_writes": len(self.lost),
            "direct_lagging_reads": self.direct_lagging_reads,
            "direct_delay_max_ms": round(self.direct_delay_max * 1000, 2),
        }


class History:
    """Operations recorded from several threads."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.ops: list[Op] = []
        self._lock = threading.Lock()

    def record(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)


def check(ops: list[Op], final: dict[str, int | None]) -> Verdict:
    """The verdict on ``ops``; O(n log n): each key's acknowledged writes sorted by completion, with
    the newest value acknowledged so far beside each, searched by each read's start."""
    v = Verdict(operations=len(ops))
    writes: dict[tuple[str, bool], list[Op]] = {}
    for op in ops:
        if not op.ok:
            v.errors += 1
        elif op.kind == "write":
            v.writes_acked += 1
            writes.setdefault((op.key, op.proxied), []).append(op)
    done: dict[tuple[str, bool], list[float]] = {}  # completion times, ascending
    newest: dict[tuple[str, bool], list[int]] = {}  # the newest value acknowledged by then
    for name, acked in writes.items():
        acked.sort(key=lambda o: o.complete)
        done[name] = [w.complete for w in acked]
        newest[name] = list(accumulate((w.seq or 0 for w in acked), max))
    for op in ops:
        if op.kind != "read" or not op.ok:
            continue
        v.reads += 1
        got = -1 if op.seq is None else op.seq
        name = (op.key, True)
        before = bisect_left(done.get(name, []), op.invoke)  # (writes acknowledged before the read began)
        if before and newest[name][before - 1] > got:
            v.stale.append((op, newest[name][before - 1]))
        name = (op.key, False)
        before = bisect_left(done.get(name, []), op.invoke)
        if before and newest[name][before - 1] > got:
            # The first direct write newer than what was read (where the running maximum passes it).
            first = bisect_right(newest[name], got, 0, before)
            v.direct_lagging_reads += 1
            v.direct_delay_max = max(v.direct_delay_max, op.invoke - done[name][first])
    for (key, _), acked in writes.items():
        top = max(w.seq or 0 for w in acked)
        have = final.get(key)
        if have is None or have < top:
            v.lost.append((key, top, have))
    return v


class Workload:
    """Writers (one a key group: values are increasing numbers) and readers, recording a history."""

    def __init__(
        self,
        proxy_port: int,
        redis_port: int,
        readers: int = 2,
        pace: float = 0.0,
        redis_host: str = "127.0.0.1",
    ) -> None:
        """``pace``: seconds each thread waits between its operations (a long soak's history stays
        a size the check can hold); ``redis_host``: where the direct writer finds Redis."""
        self.proxy_port, self.redis_port, self.redis_host = proxy_port, redis_port, redis_host
        self.pace = pace
        self.history = History()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._writer, args=(PROXIED, proxy_port, True), daemon=True),
            threading.Thread(target=self._writer, args=(DIRECT, redis_port, False), daemon=True),
            *(threading.Thread(target=self._reader, args=(seed,), daemon=True) for seed in range(readers)),
        ]

    def _client(self, port: int) -> redis.Redis:
        host = self.redis_host if port == self.redis_port else "127.0.0.1"
        return redis.Redis(host=host, port=port, socket_timeout=5, socket_connect_timeout=2, protocol=2)

    def _writer(self, keys: list[str], port: int, proxied: bool) -> None:
        client, seq, clock = self._client(port), 0, self.history.clock
        while not self.stop.is_set():
            seq += 1
            key = keys[seq % len(keys)]
            started = clock()
            try:
                ok = bool(client.set(key, seq))
            except redis.RedisError:
                ok = False
                time.sleep(0.005)
            self.history.record(Op("write", key, seq, started, clock(), ok, proxied))
            if self.pace:
                time.sleep(self.pace)

    def _reader(self, seed: int) -> None:
        client, rng, clock = self._client(self.proxy_port), random.Random(seed), self.history.clock
        keys = PROXIED + DIRECT
        while not self.stop.is_set():
            key = rng.choice(keys)
            started = clock()
            try:
                got = client.get(key)
                ok, seq = True, None if got is None else int(got)
            except redis.RedisError:
                ok, seq = False, None
                time.sleep(0.005)
            self.history.record(Op("read", key, seq, started, clock(), ok))
            if self.pace:
                time.sleep(self.pace)

    def acked(self) -> int:
        return sum(1 for op in list(self.history.ops) if op.ok)

    def errors(self) -> int:
        return sum(1 for op in list(self.history.ops) if not op.ok)

    def __enter__(self) -> Workload:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)
