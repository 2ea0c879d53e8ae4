"""The unpipelined tier hit in-process: what ``data_received`` costs per hit without the sockets.

    python -m bench.hitpath [--tree DIR] [--keys 10000] [--reads 200000] [--repeats 12]
        [--prefetch SPEC] [--yield-every 64]

Starts a Redis and a Predis server in this process, fills the tier through a real connection,
then swaps that connection's transport for a sink and feeds it canonical ``GET`` reads of random
held keys. Prints the interpreted opcodes of one hit (deterministic: a count of what the hit path
executes, from ``sys.settrace``) and the best per-hit wall times of the repeats (noisy: the
machine is shared). ``--tree`` imports the proxy from another checkout, to compare versions.

``--prefetch SPEC`` runs the proxy with live prefetching (the access sink records every hit for
the prediction engine): the difference from a run without it is what mirroring a GET costs the
event loop. Every ``--yield-every`` reads the loop gets a turn (both runs alike), which is when
the batched records go to the engine process and its answers are handled.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any


class Sink:
    """A transport that takes the replies and counts them."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def opcodes(fn: Callable[[bytes], Any], data: bytes) -> Counter[str]:
    """Interpreted opcodes per function for one call of ``fn(data)`` (the sink's not counted)."""
    counts: Counter[str] = Counter()

    def trace(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode" and frame.f_code is not Sink.write.__code__:
            counts[frame.f_code.co_name] += 1
        return trace

    sys.settrace(trace)
    try:
        fn(data)
    finally:
        sys.settrace(None)
    return counts


def request(key: bytes) -> bytes:
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)


async def measure(port: int, args: argparse.Namespace) -> None:
    from proxy.config import Settings
    from proxy.server import ProxyServer

    # (A staleness bound of an hour: no entry comes due for a refresh or goes stale mid-run.)
    extra = {"prefetch": args.prefetch} if args.prefetch else {}
    server = ProxyServer(
        Settings(upstream=f"redis://127.0.0.1:{port}", port=0, hot_tier_max_staleness=3600.0, **extra)
    )
    host, proxy_port = await server.start()
    try:
        deadline = time.monotonic() + 10
        engine = getattr(server, "prediction", None)
        while (
            server.tier is None
            or not server.tier.active
            or server.command_table is None
            or (engine is not None and not engine.ready)
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the tier did not become active in 10 s")
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection(host, proxy_port)
        keys = [b"key:%012d" % i for i in range(args.keys)]
        for key in keys:  # one at a time: each a miss that asks for a fill
            writer.write(request(key))
            await writer.drain()
            await reader.readuntil(b"\r\n")
            await reader.readuntil(b"\r\n")
        while len(server.tier.entries) < len(keys):
            if time.monotonic() > deadline + 30:
                raise SystemExit(f"only {len(server.tier.entries)} of {len(keys)} keys were filled")
            await asyncio.sleep(0.05)
        (conn,) = server.clients
        transport, sink = conn.transport, Sink()
        conn.transport = sink  # type: ignore[assignment]
        try:
            rng = random.Random(1)
            reads = [request(keys[rng.randrange(len(keys))]) for _ in range(args.reads)]
            hits = server.tier.hits
            ops = opcodes(conn.data_received, reads[0])
            print(f"opcodes per hit: {sum(ops.values())} {dict(ops)}")
            times = []
            every = args.yield_every
            for _ in range(args.repeats):
                start = time.perf_counter()
                for i in range(0, len(reads), every):
                    for data in reads[i : i + every]:
                        conn.data_received(data)
                    await asyncio.sleep(0)
                times.append((time.perf_counter() - start) / len(reads) * 1e9)
            prediction = getattr(server, "prediction", None)
            if prediction is not None:
                print(f"prefetch figures: {prediction.figures()}")
            served = server.tier.hits - hits
            if served != sink.writes or served != 1 + args.repeats * args.reads:
                raise SystemExit(f"not every read was a tier hit: {served} hits, {sink.writes} replies")
            print(f"ns per hit, best three of {args.repeats}: {[round(t) for t in sorted(times)[:3]]}")
        finally:
            conn.transport = transport
        writer.close()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hitpath", description=__doc__.splitlines()[0])
    parser.add_argument("--tree", help="import the proxy from this checkout")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--reads", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--prefetch", help="live prefetching on, with this predictor (e.g. obl)")
    parser.add_argument("--yield-every", type=int, default=64, help="reads between turns of the loop")
    args = parser.parse_args(argv)
    if args.tree:
        sys.path.insert(0, args.tree)
    import redis
    import uvloop

    from proxy.embedded import EmbeddedRedis

    with EmbeddedRedis() as upstream:
        client = redis.Redis(port=upstream.port)
        with client.pipeline(transaction=False) as pipe:
            for i in range(args.keys):
                pipe.set(b"key:%012d" % i, b"v" * 64)
            pipe.execute()
        uvloop.run(measure(upstream.port, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
