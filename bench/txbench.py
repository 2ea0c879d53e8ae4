"""Transactions through the shared upstream connections: redis-py pipelines (MULTI ... EXEC, its
default) against Redis directly, Predis with a connection per client, and Predis with the pool,
where every transaction pins the client and unpins it after EXEC.

    python -m bench.txbench [--pipelines 500] [--repeats 5]

One client, unpipelined transactions of 5 SETs each; microseconds per transaction, the best of
each target's runs, the targets interleaved in every repeat.
"""

from __future__ import annotations

import argparse
import sys
import time

import redis

from bench.loadtest import ProxyProcess
from proxy.embedded import EmbeddedRedis


def per_transaction_us(port: int, count: int) -> float:
    client = redis.Redis(port=port, protocol=2)
    started = time.perf_counter()
    for i in range(count):
        pipe = client.pipeline()  # (transaction=True: MULTI ... EXEC)
        for j in range(5):
            pipe.set(f"tx:{j}", i)
        pipe.execute()
    return (time.perf_counter() - started) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.txbench", description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=500, help="transactions per run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with EmbeddedRedis() as upstream:
        per_client = ProxyProcess(upstream.url, ["--hot-tier", "off", "--upstream-pool", "0"])
        pooled = ProxyProcess(upstream.url, ["--hot-tier", "off", "--upstream-pool", "1"])
        targets = {"direct": upstream.port, "per-client": per_client.port, "pool1": pooled.port}
        best = {name: float("inf") for name in targets}
        try:
            for _ in range(args.repeats):
                for name, port in targets.items():
                    best[name] = min(best[name], per_transaction_us(port, args.pipelines))
        finally:
            per_client.close()
            pooled.close()
    for name, us in best.items():
        print(f"{name:<11} {us:8.1f} us per transaction ({us / best['direct']:.2f}x direct)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
