"""What watching the proxy costs its clients: recording reads and serving metrics, on against off.

    python -m bench.observebench [--requests N] [--repeats R] [--clients C] [--pipelines 1,16]
                                 [--scrape-every S] [--prefetch SPEC]

Starts one redis-server and three `predis serve` processes, each with the hot tier and the same
live prefetcher (``--prefetch``, default markov: its engine already sees every read):

* ``engine``: no recording, no admin listener (the baseline);
* ``record``: the same, recording every read (``--access-log-dir``, a temporary directory);
* ``record+metrics``: recording, and its admin listener scraped every ``--scrape-every`` seconds
  (1 s: fifteen times Prometheus's default rate) by a thread of this process.

redis-benchmark runs against each in turn, repeat after repeat (bench.loadtest.compare), so they
share the machine's noise; the table gives medians of throughput and each target's median ratio
to the baseline within a repeat. The goal (issue 22): recording and metrics cost at most 2% of
throughput.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import urllib.request
from typing import Any

from bench.loadtest import ProxyProcess, compare
from proxy.embedded import EmbeddedRedis, free_port


class Scraper(threading.Thread):
    def __init__(self, port: int, every: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.every = every
        self.stopped = threading.Event()
        self.scrapes = 0
        self.bytes = 0

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            with urllib.request.urlopen(self.url, timeout=10) as response:
                self.bytes = len(response.read())
            self.scrapes += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observebench", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="requests per run (times -P)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pipelines", default="1,16")
    parser.add_argument("--tests", default="get,set")
    parser.add_argument("--keyspace", type=int, default=10_000)
    parser.add_argument("--scrape-every", type=float, default=1.0)
    parser.add_argument("--prefetch", default="markov")
    args = parser.parse_args(argv)
    args.resp3 = False
    if shutil.which("redis-benchmark") is None:
        print("bench: redis-benchmark not found (apt-get install redis-tools)", file=sys.stderr)
        return 2
    logs = tempfile.mkdtemp(prefix="predis-observe-")
    common = ["--hot-tier", "cpu", "--prefetch", args.prefetch]
    admin = free_port()
    with EmbeddedRedis() as upstream:
        procs = {
            "engine": ProxyProcess(upstream.url, common),
            "record": ProxyProcess(upstream.url, [*common, "--access-log-dir", f"{logs}/a"]),
            "record+metrics": ProxyProcess(
                upstream.url, [*common, "--access-log-dir", f"{logs}/b", "--admin", f"127.0.0.1:{admin}"]
            ),
        }
        scraper = Scraper(admin, args.scrape_every)
        scraper.start()
        targets = {name: p.port for name, p in procs.items()}
        try:
            rows: list[dict[str, Any]] = []
            for pipeline in (int(p) for p in args.pipelines.split(",")):
                rows += compare(targets, args, pipeline, baseline="engine")
            stats = {name: p.stats() for name, p in procs.items()}
        finally:
            scraper.stopped.set()
            for p in procs.values():
                p.close()
            shutil.rmtree(logs, ignore_errors=True)
    print(
        f"{'test':<5} {'-P':>3} {'engine rps':>11} {'record':>8} {'record+metrics':>15}   (ratios to engine: medians within a repeat)"
    )
    for row in rows:
        print(
            f"{row['test']:<5} {row['pipeline']:>3} {row['engine_rps']:>11,} {row['record_ratio']:>8.3f} "
            f"{row['record+metrics_ratio']:>15.3f}"
        )
    for name in ("record", "record+metrics"):
        s = stats[name]
        print(
            f"{name}: recorded {s.get('prefetch_access_log_recorded')}, dropped {s.get('prefetch_access_log_dropped')}, "
            f"files {s.get('prefetch_access_log_files')}, shed {s.get('prefetch_predict_shed')}"
        )
    print(f"metrics: {scraper.scrapes} scrapes of {scraper.bytes:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
