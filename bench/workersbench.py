"""``predis serve --workers N`` against one worker and Redis directly, side by side, interleaved.

    python -m bench.workersbench [--workers 1,2] [--requests N] [--repeats R] [--pipelines 1,16]
                                 [--hot-tier cpu|off]

redis-benchmark (SET then GET, 50 clients, 10,000 keys) drives each target in turn within each
repeat (bench.loadtest's ``compare``); ratios to direct Redis, medians of the repeats. With the
hot tier on (the default here) most GETs are answered by the workers themselves, so what scales
is the proxy's own work.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.loadtest import ProxyProcess, benchmark_flags, compare_all, print_table
from proxy.embedded import EmbeddedRedis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workersbench", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2,4")
    benchmark_flags(parser, tests="set,get")
    parser.add_argument("--hot-tier", default="cpu", choices=["cpu", "off"])
    args = parser.parse_args(argv)
    args.resp3 = False
    counts = [int(n) for n in args.workers.split(",") if n]
    with EmbeddedRedis() as upstream:
        servers: list[Any] = []
        targets = {"direct": upstream.port}
        try:
            for n in counts:
                servers.append(ProxyProcess(upstream.url, ["--hot-tier", args.hot_tier, "--workers", str(n)]))
                targets[f"workers{n}"] = servers[-1].port
            rows = compare_all(targets, args)
        finally:
            for server in servers:
                server.close()
    print_table(rows, list(targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
