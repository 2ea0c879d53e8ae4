"""Recording live reads for retraining through a real proxy, engine process and Redis: every read of
every client, in each client's order, lands in rotating access-log files written by the engine's
process, pseudonymized when a salt is set; the figures say so in PREDIS STATS."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from accesslog.log import read_log
from accesslog.recorder import read_recorded
from ml.vocab import template_of
from proxy.config import Settings
from tests.conftest import RunningProxy
from tests.helpers import wait_for

UNHURRIED = {"prefetch_engine_priority": "normal", "prefetch_max_age": 60.0}


def record(
    redis_server: Any, directory: Path, **settings: Any
) -> tuple[dict[int, list[str]], dict[str, Any]]:
    """Three clients read their own keys (and some of each other's) through a recording proxy; the
    proxy is closed (its engine writes what waits); returns each client's recorded keys and the last
    figures."""
    proxy = RunningProxy(
        Settings(
            upstream=redis_server.url, port=0, access_log_dir=str(directory), **UNHURRIED, **settings
        ).validate()
    )
    try:
        wait_for(lambda: proxy.server.tier.active and proxy.server.prediction.ready, timeout=30)
        clients = [proxy.client() for _ in range(3)]
        ids = [int(c.client_id()) for c in clients]
        assert len(set(ids)) == 3
        for i in range(60):
            for n, client in enumerate(clients):
                client.get(f"user:{100 + n}:item:{i}")
            clients[0].mget([f"shared:{i}", f"shared:{i + 1}"])
        stats = proxy.server.stats
        wait_for(lambda: stats.snapshot()["prefetch_access_log_recorded"] >= 60 * 5, timeout=20)
        figures = stats.snapshot()
    finally:
        proxy.close()
    table = read_recorded(directory)
    by_client: dict[int, list[str]] = defaultdict(list)
    for key, client in zip(table.column("key").to_pylist(), table.column("client").to_pylist(), strict=True):
        by_client[client].append(key)
    return by_client, figures


def test_every_read_is_recorded_in_each_clients_order(redis_server: Any, direct: Any, tmp_path: Path) -> None:
    by_client, figures = record(redis_server, tmp_path, access_log_rotate_rows=100)
    assert len(by_client) == 3
    streams = sorted(by_client, key=lambda c: len(by_client[c]))
    first = by_client[streams[-1]]  # the client that read its keys and the shared ones
    assert first == [k for i in range(60) for k in (f"user:100:item:{i}", f"shared:{i}", f"shared:{i + 1}")]
    others = [by_client[c] for c in streams[:2]]
    assert sorted(o[0] for o in others) == ["user:101:item:0", "user:102:item:0"]
    assert all(len(o) == 60 for o in others)
    # Rotated at 100 rows: several whole files, no unfinished one left by a clean stop.
    files = sorted(tmp_path.iterdir())
    assert all(f.name.endswith(".parquet") for f in files)
    assert [len(read_log(f)) for f in files] == [100, 100, 100]
    assert figures["prefetch_access_log_write_errors"] == 0 and figures["prefetch_access_log_dropped"] == 0


def test_a_salt_records_pseudonyms_of_the_same_shape(redis_server: Any, direct: Any, tmp_path: Path) -> None:
    by_client, _ = record(redis_server, tmp_path, access_log_salt="s3cret")
    keys = [k for seen in by_client.values() for k in seen]
    assert len(keys) == 60 * 5 and not any("user" in k or "shared" in k for k in keys)
    # user:#:item:# and shared:# stay two templates.
    assert len({template_of(k) for k in keys}) == 2
