"""Data-layer benchmark: generation speed per workload, import speed per shared trace, and the
validation report (`predis gen --validate`) of every workload and trace, as Markdown tables.

    python -m bench.databench [--n 1000000] [--repeats 3] [--traces ../shared/traces]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from accesslog.generators import GENERATORS, generate
from accesslog.log import read_log, write_log
from accesslog.traces import import_trace
from accesslog.validation import characterize, check_claims

TRACES = [
    ("cloudPhysicsIO.csv", "libcachesim-csv"),
    ("OLTP.lis.zst", "arc"),
    ("multi1.trace.gz", "lines"),
    ("web07.trace.xz", "cache2k"),
    ("orm-busy.trace.xz", "cache2k"),
]
COLUMNS = [
    ("requests", "{:,}"),
    ("unique_keys", "{:,}"),
    ("top20_share", "{:.1%}"),
    ("zipf_alpha", "{:.2f}"),
    ("peak_offpeak", "{:.2f}"),
    ("interarrival_cv", "{:.2f}"),
    ("new_key_share", "{:.1%}"),
    ("markov_top1", "{:.1%}"),
    ("markov_oracle_top1", "{:.1%}"),
    ("closed_vocab_bound", "{:.1%}"),
]


def cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    default_traces = Path(__file__).resolve().parents[2] / "shared" / "traces"
    ap.add_argument("--traces", default=os.environ.get("PREDIS_TRACES", str(default_traces)))
    args = ap.parse_args()
    reports: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"## Generation speed ({args.n:,} accesses, median of {args.repeats})\n")
        print("| workload | seconds | accesses/s | seconds incl. Parquet write |")
        print("|---|---|---|---|")
        for name in GENERATORS:
            gen_times, write_times = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                log = generate(name, args.n, seed=1)
                t1 = time.perf_counter()
                write_log(log, os.path.join(tmp, f"{name}.parquet"))
                t2 = time.perf_counter()
                gen_times.append(t1 - t0)
                write_times.append(t2 - t0)
            g = statistics.median(gen_times)
            print(f"| {name} | {g:.2f} | {args.n / g:,.0f} | {statistics.median(write_times):.2f} |")
            report = characterize(log)
            report["claims"] = check_claims(log, report)
            reports.append(report)
        print(f"\n## Trace import speed (median of {args.repeats})\n")
        print("| trace | format | requests | seconds | requests/s |")
        print("|---|---|---|---|---|")
        for file, fmt in TRACES:
            path = os.path.join(args.traces, file)
            if not os.path.exists(path):
                print(f"| {file} | {fmt} | missing | | |")
                continue
            out = os.path.join(tmp, file + ".parquet")
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                meta = import_trace(path, fmt, out)
                times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            print(f"| {file} | {fmt} | {meta['requests']:,} | {t:.2f} | {meta['requests'] / t:,.0f} |")
            log = read_log(out)
            report = characterize(log)
            report["claims"] = []
            reports.append(report)
    print("\n## Characteristics (`predis gen --validate`)\n")
    print("| source | " + " | ".join(c for c, _ in COLUMNS) + " | claims |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for r in reports:
        claims = r["claims"]
        verdict = "n/a (real trace)" if not claims else f"{sum(c.ok for c in claims)}/{len(claims)} ok"
        clock = " (synthetic clock)" if r["synthetic_clock"] else ""
        cells = " | ".join(cell(r.get(c), f) for c, f in COLUMNS)
        print(f"| {r['source']}{clock} | {cells} | {verdict} |")


if __name__ == "__main__":
    main()
