"""Predis in front of a local 3-master Redis Cluster against a cluster-aware client going straight
to the nodes, side by side, interleaved.

    python -m bench.clusterbench [--requests N] [--repeats R] [--clients C] [--pipelines 1,16]
                                 [--replicas 0] [--driver redis-benchmark|redis-py]

Targets: ``direct`` (the cluster-aware client: it reads the slot map and sends each key to its
master itself), ``predis`` (the forward path: --hot-tier off) and ``predis-tier`` (the hot tier on,
64 MiB). ``--driver redis-benchmark`` (default): redis-benchmark, with ``--cluster`` for direct;
``--driver redis-py``: one process per client, redis-py's ``RedisCluster`` for direct and a plain
``redis.Redis`` for the proxies (``bench.pyclients``; fewer clients and requests suit it, say
``--clients 8 --requests 20000``). Each repeat runs every target in turn (bench.loadtest's ``compare``), so each ratio to
direct is taken in the same stretch of machine noise; the medians of the repeats are reported.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench.loadtest import ProxyProcess, benchmark_flags, compare_all, show
from proxy.embedded import EmbeddedCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clusterbench", description=__doc__.splitlines()[0])
    benchmark_flags(parser)
    parser.add_argument("--replicas", type=int, default=0, help="replicas per master (default 0)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--driver", choices=["redis-benchmark", "redis-py"], default="redis-benchmark")
    args = parser.parse_args(argv)
    args.resp3 = False
    for tool in ("redis-benchmark", "redis-cli"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found (apt-get install redis-tools)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as work:
        cluster = EmbeddedCluster(Path(work), masters=3, replicas=args.replicas)
        servers = []
        try:
            targets = {"direct": cluster.nodes[0].port}
            servers.append(ProxyProcess(cluster.url, ["--hot-tier", "off"]))
            targets["predis"] = servers[-1].port
            servers.append(
                ProxyProcess(cluster.url, ["--hot-tier", "cpu", "--hot-tier-bytes", str(64 << 20)])
            )
            targets["predis-tier"] = servers[-1].port
            if args.driver == "redis-py":
                from bench import pyclients

                kinds = {
                    name: ("cluster" if name == "direct" else "plain", port) for name, port in targets.items()
                }
                rows = [r for p in args.pipelines.split(",") for r in pyclients.compare(kinds, args, int(p))]
            else:
                rows = compare_all(targets, args, extras={"direct": ["--cluster"]})
        finally:
            for server in servers:
                server.close()
            cluster.close()
    show(rows, list(targets), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
