"""``predis replay --client hiredis`` (proxy.replayclient): against a real redis-server, replies in
order for streams sharing a connection, Redis's errors and a lost connection raised as redis-py's
exceptions, and a replay through an A/B proxy that adds up as redis-py's does."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from accesslog.log import read_log
from proxy.embedded import free_port
from proxy.replayclient import HiredisConnection
from tests.e2e.test_prefetch import UNHURRIED, predis
from tests.helpers import wait_for


def test_streams_sharing_a_connection_get_their_own_replies(redis_server: Any, direct: redis.Redis) -> None:
    async def main() -> None:
        conn = HiredisConnection("127.0.0.1", redis_server.port)
        await asyncio.gather(*(conn.set(f"k{i}", f"v{i}".encode()) for i in range(200)))
        got = await asyncio.gather(*(conn.get(f"k{i}") for i in range(200)))
        assert got == [f"v{i}".encode() for i in range(200)]
        assert await conn.delete("k0") == 1 and await conn.get("k0") is None
        await conn.aclose()

    asyncio.run(main())
    assert direct.get("k199") == b"v199"


def test_errors_and_a_lost_connection_are_redis_pys_exceptions(
    redis_server: Any, direct: redis.Redis
) -> None:
    async def main() -> None:
        conn = HiredisConnection("127.0.0.1", redis_server.port, timeout=10)
        direct.set("s", "text")
        with pytest.raises(ResponseError, match="not an integer"):
            await conn.execute("INCR", "s")
        assert await conn.get("s") == b"text"  # (the connection goes on after an error reply)
        waiting = asyncio.ensure_future(conn.execute("BLPOP", "nothing-here", "0"))
        while not direct.info("clients")["blocked_clients"]:  # (until Redis holds the BLPOP)
            await asyncio.sleep(0.01)
        direct.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        with pytest.raises(RedisConnectionError, match="connection lost"):
            await waiting
        assert await conn.get("s") == b"text"  # (a new connection at the next command)
        await conn.aclose()
        with pytest.raises(RedisConnectionError, match="cannot connect"):
            await HiredisConnection("127.0.0.1", free_port(), timeout=5).get("s")

    asyncio.run(main())


def test_a_replay_with_the_lean_client_adds_up(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, tmp_path: Any
) -> None:
    log = tmp_path / "web.parquet"
    predis("gen", "web", "-n", "3000", "--seed", "5", "-o", str(log))
    proxy = make_proxy(redis_server.url, ab="M=markov,N=none", ab_seed=1, **UNHURRIED)
    wait_for(lambda: proxy.server.tier.active and proxy.server.prediction.ready, timeout=30)
    result = json.loads(
        predis(
            "replay",
            str(log),
            "--port",
            str(proxy.port),
            "--max",
            "--load-values",
            "--json",
            "--client",
            "hiredis",
        )
    )
    assert result["requests"] == 3000 and result["errors"] == 0
    ops = [str(op) for op in read_log(log).column("op")]
    arms = {arm["name"]: arm for arm in result["ab"]["arms"]}
    assert arms["M"]["gets"] + arms["N"]["gets"] == ops.count("GET")
    assert all(0 < arm["get_p50_us"] <= arm["get_p99_us"] for arm in arms.values())
    # What the replay wrote is what redis-py's replay would have written: the value names its key.
    written = next(k for k, op in zip(read_log(log).keys(), ops, strict=True) if op not in ("GET", "DEL"))
    value = direct.get(written)
    assert value is not None and value.startswith(written.encode() + b"=")
