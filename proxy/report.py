"""``predis report RUN_DIR -o report.html``: one self-contained page of a run's figures.

It reads what each part of Predis leaves behind, and draws what it finds:

* ``RUN_DIR/history.jsonl`` (a proxy run with ``--run-dir``, proxy.rundir): each arm's hit ratio
  over time, per window of reads, with a 95% Wilson interval as a band, and the A/B test's verdict;
* ``RUN_DIR/latency.json`` (the same): the latency histograms and their percentiles;
* ``RUN_DIR/sim*.json`` (``predis sim ... --json > RUN_DIR/sim.json``): hit ratio against cache
  size for each predictor;
* the model registry (``RUN_DIR/registry`` or ``--registry DIR``): its versions and every gate
  decision of retraining (``decisions.jsonl``), plotted and listed.

The page carries plotly's JavaScript inline (from the ``plotly`` package): it opens anywhere,
offline. A run directory with none of these is an error (one line), and so is a file that does not
parse (its name and line).
"""

from __future__ import annotations

import html
import json
import math
import sys
from pathlib import Path
from typing import Any

from common.cli import OneLineParser
from common.errors import ConfigError
from common.histogram import LatencyHistogram

Z95 = 1.959963984540054


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``hits / n`` (its low and high ends)."""
    if n <= 0:
        return (0.0, 1.0)
    p = hits / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if number > 1 and not line.endswith("\n"):
                    break  # (the last line of a file still being written)
                raise ConfigError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
    return rows


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None


def arm_windows(samples: list[dict[str, Any]], window: float) -> dict[str, list[dict[str, Any]]]:
    """Per arm, the reads of each ``window`` seconds: time (the window's end, seconds from the
    first sample), reads, hit ratio and its Wilson 95% interval. Counters that go back (the A/B
    figures were reset) start a new count."""
    if not samples:
        return {}
    t0 = samples[0]["t"]
    out: dict[str, list[dict[str, Any]]] = {}
    last: dict[str, tuple[float, int, int]] = {}
    for s in samples:
        for name, arm in (s.get("arms") or {}).items():
            gets, hits = int(arm.get("gets", 0)), int(arm.get("hits", 0))
            start = last.get(name)
            if start is None:
                last[name] = (s["t"], gets, hits)
                continue
            if gets < start[1]:  # (reset: the counts start again from zero)
                start = last[name] = (start[0], 0, 0)
            if s["t"] - start[0] >= window or s is samples[-1]:
                n, h = gets - start[1], hits - start[2]
                if n > 0:
                    low, high = wilson(h, n)
                    out.setdefault(name, []).append(
                        {"t": round(s["t"] - t0, 1), "reads": n, "hit_ratio": h / n, "low": low, "high": high}
                    )
                last[name] = (s["t"], gets, hits)
    return out


def percentiles(doc: dict[str, Any], ps: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict[str, float]:
    hist = LatencyHistogram()
    for i, c in doc.get("buckets", {}).items():
        hist.counts[int(i)] = int(c)
    hist.total = int(doc.get("total", 0))
    return {f"p{p:g}": hist.percentile(p) for p in ps}


class Page:
    """The page's sections, each a heading, a paragraph, plotly figures and tables."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self.figures = 0

    def section(self, heading: str, text: str = "") -> None:
        self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        if text:
            self.parts.append(f"<p>{html.escape(text)}</p>")

    def figure(self, fig: Any) -> None:
        import plotly.io as pio

        self.figures += 1
        self.parts.append(
            pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"figure-{self.figures}")
        )

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
            for row in rows
        )
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def render(self) -> str:
        from plotly.offline import get_plotlyjs

        style = (
            "body{font-family:sans-serif;margin:2em;max-width:1200px}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
            "font-size:13px;text-align:right}th{background:#f4f4f4}"
        )
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{style}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self.parts) + "</body></html>"
        )


def hit_ratio_section(page: Page, samples: list[dict[str, Any]], window: float) -> None:
    import plotly.graph_objects as go

    by_arm = arm_windows(samples, window)
    page.section(
        "Hit ratio over time, per arm",
        f"Each point is one window of {window:g} seconds of the arm's reads; the band is its 95% Wilson "
        f"interval. {len(samples)} samples, one a second, from history.jsonl.",
    )
    if not by_arm:
        page.parts.append("<p>No reads were recorded per arm (the run had no live prefetching).</p>")
        return
    fig = go.Figure()
    for name, points in sorted(by_arm.items()):
        xs = [p["t"] for p in points]
        fig.add_trace(
            go.Scatter(
                x=xs + xs[::-1],
                y=[p["high"] for p in points] + [p["low"] for p in points][::-1],
                fill="toself",
                opacity=0.25,
                line={"width": 0},
                name=f"{name}, 95% interval",
                hoverinfo="skip",
            )
        )
        fig.add_trace(go.Scatter(x=xs, y=[p["hit_ratio"] for p in points], mode="lines+markers", name=name))
    fig.update_layout(xaxis_title="seconds from the run's start", yaxis_title="hit ratio", height=420)
    page.figure(fig)
    last = samples[-1]
    rows = []
    for name, arm in sorted((last.get("arms") or {}).items()):
        gets, hits = int(arm.get("gets", 0)), int(arm.get("hits", 0))
        low, high = wilson(hits, gets)
        rows.append(
            [
                name,
                arm.get("spec", ""),
                gets,
                hits,
                f"{hits / gets:.4f}" if gets else "-",
                f"{low:.4f}-{high:.4f}",
                arm.get("model") or "",
            ]
        )
    page.table(["arm", "spec", "reads", "hits", "hit ratio", "95% interval", "model"], rows)
    ab = last.get("ab")
    if ab:
        winner = ab.get("winner") or "none yet"
        page.parts.append(
            f"<p>A/B test at the end: chi-squared p = {html.escape(str(ab.get('chi2_p')))}, "
            f"enough data: {html.escape(str(ab.get('enough_data')))}, winner: {html.escape(str(winner))}.</p>"
        )


def latency_section(page: Page, doc: dict[str, Any]) -> None:
    import plotly.graph_objects as go

    page.section(
        "Latency",
        "The proxy's latency histograms at the end of the run (log buckets of 9%; a percentile is "
        "its bucket's upper edge, never an understatement).",
    )
    named = [(name, h) for name, h in (doc.get("histograms") or {}).items()]
    named += [(f"arm {name}: read to prefetch sent", h) for name, h in (doc.get("arms") or {}).items()]
    fig = go.Figure()
    rows = []
    for name, h in named:
        total = int(h.get("total", 0))
        if not total:
            continue
        sub = int(h.get("sub", LatencyHistogram.SUB))
        buckets = sorted((int(i), int(c)) for i, c in h.get("buckets", {}).items())
        fig.add_trace(
            go.Scatter(
                x=[2 ** ((i + 1) / sub) for i, _ in buckets],
                y=[c / total for _, c in buckets],
                mode="lines+markers",
                name=name,
            )
        )
        p = percentiles(h)
        mean = 1e6 * float(h.get("sum_seconds", 0.0)) / total
        rows.append([name, total, f"{mean:.1f}", *(f"{v:.1f}" for v in p.values())])
    if not rows:
        page.parts.append("<p>No latency was recorded.</p>")
        return
    fig.update_layout(
        xaxis={"type": "log", "title": "microseconds (bucket's upper edge)"},
        yaxis_title="share of samples",
        height=420,
    )
    page.figure(fig)
    page.table(["histogram", "samples", "mean us", "p50 us", "p90 us", "p99 us", "p99.9 us"], rows)


def sim_section(page: Page, docs: list[tuple[Path, Any]]) -> None:
    import plotly.graph_objects as go

    page.section(
        "Hit ratio against cache size (simulator)",
        "From predis sim --json outputs in the run directory: each predictor's hit ratio at each "
        "cache size it was replayed at.",
    )
    for path, doc in docs:
        runs = doc.get("runs") if isinstance(doc, dict) else None
        if not isinstance(runs, list):
            raise ConfigError(f"{path}: not the output of predis sim --json (no 'runs' list)")
        points: dict[str, list[tuple[int, float]]] = {}
        for run in runs:
            for arm in run.get("arms", []):
                points.setdefault(str(arm["arm"]), []).append((int(arm["capacity"]), float(arm["hit_ratio"])))
        fig = go.Figure()
        for name, pts in sorted(points.items()):
            pts.sort()
            fig.add_trace(
                go.Scatter(x=[c for c, _ in pts], y=[h for _, h in pts], mode="lines+markers", name=name)
            )
        fig.update_layout(
            title=f"{doc.get('trace', path.name)}",
            xaxis={"type": "log", "title": "cache size (entries)"},
            yaxis_title="hit ratio",
            height=420,
        )
        page.figure(fig)
        caps = sorted({c for pts in points.values() for c, _ in pts})
        page.table(
            ["arm", *(f"{c} entries" for c in caps)],
            [
                [name, *(f"{dict(pts).get(c, float('nan')):.4f}" for c in caps)]
                for name, pts in sorted(points.items())
            ],
        )


def registry_section(page: Page, registry: Path) -> None:
    import plotly.graph_objects as go

    decisions_path = registry / "decisions.jsonl"
    decisions = read_jsonl(decisions_path) if decisions_path.exists() else []
    current = (registry / "current").read_text().strip() if (registry / "current").exists() else None
    page.section(
        "Model history and gate decisions",
        f"Registry {registry}: its versions (current: {current or 'none'}) and every retraining "
        "round's decision, from decisions.jsonl.",
    )
    rows = []
    for version in sorted(p for p in registry.iterdir() if p.is_dir() and p.name.startswith("v")):
        manifest_path = version / "manifest.json"
        if not manifest_path.exists():
            continue
        manifest = read_json(manifest_path)
        gate = manifest.get("gate") or {}
        top1 = (manifest.get("metrics") or {}).get("model", {}).get("top1")
        rows.append(
            [
                ("* " if version.name == current else "") + version.name,
                manifest.get("created", ""),
                f"{top1:.4f}" if isinstance(top1, float) else "",
                gate.get("mode", ""),
                gate.get("candidate_hit_ratio", ""),
                gate.get("current_hit_ratio", ""),
                gate.get("held_out_reads", ""),
            ]
        )
    page.table(
        [
            "version",
            "created",
            "top-1 at training",
            "made by",
            "gate: its hit ratio",
            "gate: the model before",
            "held-out reads",
        ],
        rows,
    )
    rounds = [d for d in decisions if "promote" in d and not d.get("rollback")]
    if rounds:
        fig = go.Figure()
        xs = [d.get("time", str(i)) for i, d in enumerate(rounds)]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[d.get("candidate_hit_ratio") for d in rounds],
                mode="markers",
                name="candidate",
                marker={
                    "size": 12,
                    "symbol": ["circle" if d["promote"] else "x" for d in rounds],
                    "color": ["green" if d["promote"] else "red" for d in rounds],
                },
                text=[d.get("reason", "") for d in rounds],
            )
        )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[d.get("current_hit_ratio") for d in rounds],
                mode="lines+markers",
                name="current model",
            )
        )
        fig.update_layout(yaxis_title="hit ratio on the held-out reads", height=380)
        page.figure(fig)
    page.table(
        ["time", "mode", "reads", "candidate", "current", "promoted", "version", "reason"],
        [
            [
                d.get("time"),
                d.get("mode", "rollback" if d.get("rollback") else ""),
                d.get("reads"),
                d.get("candidate_hit_ratio"),
                d.get("current_hit_ratio"),
                d.get("promote"),
                d.get("version"),
                d.get("reason"),
            ]
            for d in decisions
        ],
    )


def build(run_dir: Path, registry: Path | None = None, window: float = 0.0) -> tuple[str, list[str]]:
    """The page's HTML and the names of the sections it has."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such directory")
    page = Page(f"Predis run report: {run_dir.resolve().name}")
    sections: list[str] = []
    history = run_dir / "history.jsonl"
    if history.exists():
        samples = read_jsonl(history)
        if samples:
            span = samples[-1]["t"] - samples[0]["t"]
            hit_ratio_section(page, samples, window or max(1.0, round(span / 60)))
            sections.append("hit ratio")
    latency = run_dir / "latency.json"
    if latency.exists():
        latency_section(page, read_json(latency))
        sections.append("latency")
    sims = [(p, read_json(p)) for p in sorted(run_dir.glob("sim*.json"))]
    if sims:
        sim_section(page, sims)
        sections.append("simulator")
    registry = registry or (run_dir / "registry")
    if registry.is_dir():
        registry_section(page, registry)
        sections.append("models")
    if not sections:
        raise ConfigError(
            f"{run_dir}: nothing to report (no history.jsonl or latency.json from predis serve --run-dir, "
            "no sim*.json from predis sim --json, no registry)"
        )
    return page.render(), sections


def report_main(argv: list[str]) -> int:
    p = OneLineParser(
        prog="predis report", description="Write one self-contained HTML page of a run's figures."
    )
    p.add_argument(
        "run_dir", help="the run directory (predis serve --run-dir; predis sim --json > RUN_DIR/sim.json)"
    )
    p.add_argument("-o", "--output", default="report.html", help="the page to write")
    p.add_argument("--registry", help="the model registry (default: RUN_DIR/registry, if there)")
    p.add_argument(
        "--window",
        type=float,
        default=0.0,
        help="seconds of reads per hit-ratio point (default: 1/60 of the run)",
    )
    args = p.parse_args(argv)
    if args.window < 0:
        raise ConfigError("--window must be positive")
    registry = Path(args.registry) if args.registry else None
    if registry is not None and not registry.is_dir():
        raise ConfigError(f"--registry {registry}: no such directory")
    page, sections = build(Path(args.run_dir), registry, args.window)
    Path(args.output).write_text(page)
    print(f"{args.output}: {', '.join(sections)}", file=sys.stderr)
    return 0
