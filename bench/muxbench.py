"""Many clients, few upstream connections: Redis directly, twemproxy (Debian's ``nutcracker``), and
Predis with a connection per client (``per-client``: --upstream-pool 0) and with shared pools
(``poolN``), side by side, interleaved.

    python -m bench.muxbench [--pools 1,2] [--requests N] [--repeats R] [--clients C]
                             [--pipelines 1,16] [--no-nutcracker]

redis-benchmark drives every target in turn within each repeat (bench.loadtest's ``compare``), so
each ratio to direct Redis is taken in the same stretch of machine noise; the medians of the
repeats are reported. Predis runs with its hot tier off: this measures the forward path.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.loadtest import ProxyProcess, benchmark_flags, compare_all, show
from proxy.embedded import EmbeddedRedis, free_port


class Nutcracker:
    """twemproxy in front of one Redis: one server connection, the way it is usually run."""

    def __init__(self, redis_port: int, workdir: Path) -> None:
        self.port = free_port()
        conf = workdir / "nutcracker.yml"
        conf.write_text(
            "predis_bench:\n"
            f"  listen: 127.0.0.1:{self.port}\n"
            "  redis: true\n"
            "  hash: fnv1a_64\n"
            "  distribution: ketama\n"
            "  auto_eject_hosts: false\n"
            "  preconnect: true\n"
            "  server_connections: 1\n"
            "  servers:\n"
            f"   - 127.0.0.1:{redis_port}:1\n"
        )
        self.proc = subprocess.Popen(
            [
                "nutcracker",
                "-c",
                str(conf),
                "-s",
                str(free_port()),
                "-o",
                str(workdir / "nutcracker.log"),
                "-p",
                str(workdir / "nutcracker.pid"),
            ]
        )
        deadline = time.monotonic() + 20
        while True:  # (a raw GET: twemproxy closes a connection that sends CLIENT SETINFO, as redis-py does)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as probe:
                    probe.sendall(b"*2\r\n$3\r\nGET\r\n$5\r\nprobe\r\n")
                    if probe.recv(64).startswith(b"$-1"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("nutcracker did not start")
            time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.muxbench", description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="1", help="Predis upstream_pool sizes to run, e.g. 1,2")
    benchmark_flags(parser)
    parser.add_argument("--no-nutcracker", dest="nutcracker", action="store_false")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.resp3 = False
    if shutil.which("redis-benchmark") is None:
        print("bench: redis-benchmark not found (apt-get install redis-tools)", file=sys.stderr)
        return 2
    if args.nutcracker and shutil.which("nutcracker") is None:
        print("bench: nutcracker not found (apt-get install nutcracker, or --no-nutcracker)", file=sys.stderr)
        return 2
    pools = [int(p) for p in args.pools.split(",") if p]
    with EmbeddedRedis() as upstream, tempfile.TemporaryDirectory() as work:
        servers: list[Any] = []
        targets = {"direct": upstream.port}
        try:
            if args.nutcracker:
                servers.append(Nutcracker(upstream.port, Path(work)))
                targets["twemproxy"] = servers[-1].port
            servers.append(ProxyProcess(upstream.url, ["--hot-tier", "off", "--upstream-pool", "0"]))
            targets["per-client"] = servers[-1].port
            for size in pools:
                servers.append(
                    ProxyProcess(upstream.url, ["--hot-tier", "off", "--upstream-pool", str(size)])
                )
                targets[f"pool{size}"] = servers[-1].port
            rows = compare_all(targets, args)
        finally:
            for server in servers:
                server.close()
    show(rows, list(targets), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
