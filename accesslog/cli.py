"""`predis gen` and `predis trace`: make, import, export and validate access logs."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from common.cli import OneLineParser
from common.errors import DataError


def _count(text: str) -> int:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of accesses: {text!r}") from None
    if not value.is_integer() or value <= 0:
        raise argparse.ArgumentTypeError(
            f"the number of accesses must be a positive whole number, not {text}"
        )
    return int(value)


# --- predis gen -------------------------------------------------------------------------------------


def gen_main(argv: list[str]) -> int:
    from accesslog import generators

    p = OneLineParser(
        prog="predis gen",
        description="Generate a synthetic workload as an access log, list the workloads, or validate a log.",
    )
    p.add_argument("workload", nargs="?", help="workload name (see --list)")
    p.add_argument("-n", type=_count, default=1_000_000, help="number of accesses (default 1,000,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", help="output file: .parquet (default) or .csv")
    p.add_argument(
        "--param", action="append", default=[], metavar="K=V", help="a workload parameter; repeatable"
    )
    p.add_argument("--list", action="store_true", help="list the workloads and their parameters")
    p.add_argument("--validate", metavar="FILE", help="report the measured characteristics of an access log")
    p.add_argument("--plot", metavar="PNG", help="with --validate: also draw the characteristics")
    p.add_argument("--json", action="store_true", help="with --validate: one JSON object")
    p.add_argument("--fast", action="store_true", help="with --validate: skip the predictability measures")
    args = p.parse_args(argv)
    if args.list:
        for name, gen in generators.GENERATORS.items():
            print(f"{name}: {gen.doc}")
            for pname, default, doc in generators.describe(name):
                print(f"    {pname:<16} {default:<14} {doc}")
        return 0
    if args.validate:
        return _validate(args.validate, args.plot, args.json, not args.fast)
    if not args.workload:
        p.error("name a workload (see --list), or use --list or --validate FILE")
    if not args.output:
        p.error("-o FILE is required to generate")
    from accesslog.log import write_log

    params = generators.parse_params(args.workload, args.param)
    started = time.perf_counter()
    log = generators.generate(args.workload, args.n, args.seed, params)
    took = time.perf_counter() - started
    write_log(log, args.output)
    print(
        f"wrote {len(log):,} accesses of {args.workload} (seed {args.seed}) to {args.output} in {took:.2f} s",
        file=sys.stderr,
    )
    return 0


def _validate(path: str, plot: str | None, as_json: bool, predictability: bool) -> int:
    from accesslog.log import read_log
    from accesslog.validation import characterize, check_claims, format_report, plot_report

    log = read_log(path)
    if len(log) == 0:
        raise DataError(f"{path}: the access log is empty")
    report = characterize(log, predictability=predictability)
    claims = check_claims(log, report) if predictability else []
    if plot:
        plot_report(log, report, plot)
    if as_json:
        out: dict[str, Any] = {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()
        }
        out["claims"] = [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in claims]
        print(json.dumps(out, sort_keys=True))
    else:
        print(format_report(report, claims))
    failed = [c.name for c in claims if not c.ok]
    if failed:
        print(f"predis gen: {path} fails its generator's claim(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# --- predis trace -----------------------------------------------------------------------------------


def trace_main(argv: list[str]) -> int:
    from accesslog.traces import FORMATS, TIME_UNITS

    p = OneLineParser(
        prog="predis trace",
        description="Import real cache traces into the access-log format, or export a log.",
    )
    sub = p.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    imp = sub.add_parser("import", help="convert a trace into a Parquet access log")
    imp.add_argument("file")
    imp.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="; ".join(f"{k}: {v.doc}" for k, v in FORMATS.items()),
    )
    imp.add_argument("-o", "--output", required=True, help="the access log to write (Parquet)")
    imp.add_argument(
        "--remap",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replace integer ids by a seeded random permutation (default: on for cache2k only)",
    )
    imp.add_argument("--seed", type=int, default=0, help="seed of the remapping permutation")
    imp.add_argument("--time-unit", choices=list(TIME_UNITS), help="unit of the trace's timestamps")
    imp.add_argument(
        "--clock-rate",
        type=float,
        default=1000.0,
        help="requests/s of the synthetic clock for untimed traces",
    )
    imp.add_argument("--source", help="source name recorded in the log (default: the file's name)")
    exp = sub.add_parser("export", help="write an access log as CSV (or Parquet)")
    exp.add_argument("file")
    exp.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    if args.action == "export":
        from accesslog.log import read_log, write_log

        log = read_log(args.file)
        write_log(log, args.output)
        print(f"wrote {len(log):,} accesses to {args.output}", file=sys.stderr)
        return 0
    from accesslog.traces import ImportOptions, import_trace

    opts = ImportOptions(
        source=args.source or "",
        remap=args.remap,
        seed=args.seed,
        time_unit=args.time_unit,
        clock_rate=args.clock_rate,
    )
    started = time.perf_counter()
    meta = import_trace(args.file, args.format, args.output, opts)
    took = time.perf_counter() - started
    note = ""
    if meta["synthetic_clock"]:
        note = f"; the trace has no timestamps, so it was given a synthetic clock of {args.clock_rate:g} requests/s"
    if meta["remapped"]:
        note += f"; integer ids remapped through a random permutation (seed {args.seed})"
    print(
        f"imported {meta['requests']:,} requests from {args.file} into {args.output} in {took:.2f} s{note}",
        file=sys.stderr,
    )
    return 0
