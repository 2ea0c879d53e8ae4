"""Jepsen-style histories under faults (bench.history checks them): writers through the proxy and
straight to Redis, readers through the proxy with its tier and live prefetching on, while Redis is
killed and restarted (appendfsync always), paused past the command timeout, loses the proxy's
tracking connection, or the prediction engine is killed. Every run: no read through the proxy older
than a write through it acknowledged before the read began, no acknowledged write lost, errors only
while the fault lasts, recovery by itself. The pure check is tested first, on hand-made histories.

``pytest tests/e2e/test_history.py -s`` prints each run's figures (bench/RESULTS.md)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.history import DIRECT, PROXIED, Op, Workload, check
from proxy.embedded import EmbeddedRedis, free_port
from tests.helpers import wait_for

DURABLE = ["--appendonly", "yes", "--appendfsync", "always"]


def test_the_check_finds_stale_reads_lost_writes_and_the_direct_delay() -> None:
    ops = [
        Op("write", "a", 1, 0.0, 1.0, True),
        Op("read", "a", 1, 2.0, 2.1, True),  # fine
        Op("write", "a", 2, 3.0, 4.0, True),
        Op("read", "a", 1, 3.5, 4.5, True),  # fine: began before the write was acknowledged
        Op("read", "a", 1, 5.0, 5.1, True),  # stale: 2 was acknowledged at 4.0
        Op("write", "a", 3, 6.0, 7.0, False),  # not acknowledged: may or may not have happened
        Op("read", "a", 2, 8.0, 8.1, True),  # fine
        Op("write", "b", 5, 0.0, 1.0, True, proxied=False),
        Op("read", "b", None, 1.5, 1.6, True),  # behind the direct write by 0.5 s
        Op("read", "b", 5, 2.0, 2.1, True),
    ]
    v = check(ops, {"a": 2, "b": 4})
    assert [(op.invoke, newest) for op, newest in v.stale] == [(5.0, 2)]
    assert v.lost == [("b", 5, 4)]  # (b holds 4 at the end: the acknowledged 5 was lost)
    assert v.direct_lagging_reads == 1 and v.direct_delay_max == pytest.approx(0.5)
    assert v.errors == 1 and v.reads == 6 and v.writes_acked == 3
    assert check(ops[:4], {"a": 2}).stale == [] and check(ops[:4], {"a": 2}).lost == []


def until(condition: Any, timeout: float = 90) -> None:
    """Waits for an event (a hang guard, not a duration the test depends on)."""
    wait_for(condition, timeout=timeout)


@pytest.mark.parametrize("fault", ["kill", "pause", "tracking", "engine"])
def test_history_under_a_fault(make_proxy: Any, tmp_path: Path, fault: str) -> None:
    port = free_port()
    server = EmbeddedRedis(port=port, extra_args=DURABLE, workdir=tmp_path).start()
    proxy = make_proxy(
        server.url,
        connect_timeout=0.5,
        command_timeout=1.0,
        health_interval=0.1,
        prefetch="markov",
        prefetch_engine_priority="normal",
    )
    until(lambda: proxy.server.tier.active and proxy.server.prediction.ready)
    try:
        with Workload(proxy.port, port) as load:
            until(lambda: load.acked() >= 5_000 and proxy.server.stats.snapshot()["hot_tier_hits"] > 0)
            errors_before = load.errors()
            acked_before = load.acked()
            if fault == "kill":
                server.kill()  # SIGKILL: a crash
                until(lambda: load.errors() > errors_before + 10)
                server = EmbeddedRedis(port=port, extra_args=DURABLE, workdir=tmp_path).start()
            elif fault == "pause":
                os.kill(server.process.pid, signal.SIGSTOP)
                try:
                    until(lambda: load.errors() > errors_before + 4)  # (past command_timeout)
                finally:
                    os.kill(server.process.pid, signal.SIGCONT)
            elif fault == "tracking":
                admin = redis.Redis(port=port)
                tracking = [c for c in admin.client_list() if c.get("name") == "predis-tracking"]
                assert tracking, "the proxy's tracking connection"
                connected = proxy.server.channel.connected_at
                admin.client_kill_filter(_id=tracking[0]["id"])
                until(lambda: proxy.server.channel.connected_at > connected)  # (back, by itself)
            else:  # the prediction engine
                starts = proxy.server.stats.snapshot()["prefetch_engine_starts"]
                proxy.server.prediction.proc.kill()
                until(lambda: proxy.server.stats.snapshot()["prefetch_engine_starts"] > starts)
                until(lambda: proxy.server.prediction.ready)
            healed = load.acked()
            # Recovery by itself: operations are acknowledged again, the tier serves again.
            hits = proxy.server.stats.snapshot()["hot_tier_hits"]
            until(lambda: load.acked() >= healed + 5_000)
            until(lambda: proxy.server.stats.snapshot()["hot_tier_hits"] > hits)
        ops = load.history.ops
        last = ops[-1_000:]  # (recovered: the last thousand operations all succeeded)
        values = redis.Redis(port=port).mget(PROXIED + DIRECT)
        final = {k: (None if v is None else int(v)) for k, v in zip(PROXIED + DIRECT, values, strict=True)}
        verdict = check(ops, final)
        print(f"\nfault {fault}: " + json.dumps({**verdict.summary(), "acked_before_fault": acked_before}))
        assert verdict.stale == [], verdict.stale[:3]
        assert verdict.lost == [], verdict.lost[:3]
        assert verdict.reads > 0 and verdict.writes_acked > 0
        if fault in ("kill", "pause"):
            assert verdict.errors > 0  # (the outage was visible, as errors)
        assert all(op.ok for op in last), [op for op in last if not op.ok][:3]
    finally:
        server.close()
