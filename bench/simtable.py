"""Hit ratios of every arm on every shared trace at 1%, 5% and 10% of the unique keys, beside
libCacheSim's reference figures (issue 5), as a Markdown table.

    python -m bench.simtable [--traces ../shared/traces] [--budget 1] [--writes drop|read] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from accesslog.traces import read_trace
from prefetch.sim import add_plain_arm, simulate

TRACES = [
    ("cloudPhysicsIO", "cloudPhysicsIO.csv", "libcachesim-csv"),
    ("OLTP", "OLTP.lis.zst", "arc"),
    ("multi1", "multi1.trace.gz", "lines"),
    ("web07", "web07.trace.xz", "cache2k"),
    ("orm-busy", "orm-busy.trace.xz", "cache2k"),
]
ARMS = ["frequency", "obl", "markov", "pg", "mithril", "oracle"]
# libCacheSim's figures as given in issue 5: LRU, S3-FIFO, LRU+OBL, LRU+PG, LRU+Mithril, Belady.
REFERENCE = {
    ("cloudPhysicsIO", "5%"): (17.5, 19.7, 18.6, 17.6, 26.8, 29.7),
    ("cloudPhysicsIO", "10%"): (19.5, 24.8, 20.6, 19.5, 30.3, 37.1),
    ("multi1", "5%"): (23.8, 45.5, 33.1, 25.4, 23.8, 49.3),
    ("orm-busy", "1%"): (77.0, 75.7, 77.0, 77.2, 81.6, 82.8),
    ("orm-busy", "5%"): (84.1, 85.2, 84.1, 84.4, 92.5, 90.2),
    ("web07", "5%"): (50.6, 54.2, 50.6, 50.7, 50.1, 63.7),
}
COLUMNS = ["none", "none@s3fifo", "frequency", "obl", "markov", "pg", "mithril", "oracle", "belady"]


def run(traces: str, budget: float, writes: str = "drop") -> list[dict[str, Any]]:
    rows = []
    for name, file, fmt in TRACES:
        path = os.path.join(traces, file)
        if not os.path.exists(path):
            continue
        log = read_trace(path, fmt)
        for size in ("1%", "5%", "10%"):
            report = simulate(log, size, ARMS, budget=budget, writes=writes)
            add_plain_arm(report, log, "s3fifo")
            arms = {a.arm: a for a in report.arms}
            rows.append(
                {
                    "trace": name,
                    "cache": size,
                    "capacity": report.capacity,
                    "best": report.best_heuristic,
                    "hit": {k: 100 * arms[k].hit_ratio for k in COLUMNS},
                    "precision": {k: arms[k].precision for k in COLUMNS},
                    "req_per_s": {k: arms[k].requests_per_s for k in COLUMNS},
                    "reference": REFERENCE.get((name, size)),
                }
            )
            print(f"done {name} {size}", flush=True, file=__import__("sys").stderr)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| trace | cache | LRU | S3-FIFO | LRU+freq | LRU+OBL | LRU+Markov | LRU+PG | LRU+Mithril | oracle (w=8) | Belady | best heuristic |"
    out = [head, "|" + "---|" * 12]
    for r in rows:
        h = r["hit"]
        cells = " | ".join(f"{h[k]:.1f}" for k in COLUMNS)
        out.append(f"| {r['trace']} | {r['cache']} ({r['capacity']:,}) | {cells} | {r['best']} |")
        ref = r["reference"]
        if ref:
            lru, s3, obl, pg, mith, bel = ref
            out.append(f"| ↳ libCacheSim | | {lru} | {s3} | | {obl} | | {pg} | {mith} | | {bel} | |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "traces"
    ap.add_argument("--traces", default=os.environ.get("PREDIS_TRACES", str(default)))
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--json", help="also write the figures as JSON here")
    ap.add_argument("--writes", choices=["drop", "read"], default="drop", help="as predis sim --writes")
    args = ap.parse_args()
    rows = run(args.traces, args.budget, args.writes)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(markdown(rows))


if __name__ == "__main__":
    main()
