"""predis report: a proxy run with --run-dir and an A/B test, a simulator run's JSON and a model
registry make one self-contained page; opened from disk in headless Chromium (nothing else to
fetch), it shows each arm's hit ratio over time with its interval band, the latency histograms, hit
ratio against cache size and the registry's decisions. A run directory with nothing in it, or a file
that does not parse, is one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.report import arm_windows, wilson
from tests.helpers import wait_for

UNHURRIED = {"prefetch_engine_priority": "normal", "prefetch_max_age": 60.0}


def script_sources(page: str) -> list[str]:
    """The src of every script tag (the parser reads a script's body as text, not as tags)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Scripts(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(v or "" for k, v in attrs if tag == "script" and k == "src")

    Scripts().feed(page)
    return found


def predis(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_report_of_a_run(
    make_proxy: Any,
    redis_server: Any,
    direct: redis.Redis,
    browser: Any,
    tmp_path: Path,
    planted_model: Path,
) -> None:
    run = tmp_path / "run"
    direct.mset({f"seq:{i}": f"value-{i}" for i in range(6_000)})
    proxy = make_proxy(redis_server.url, ab="OBL=obl,NONE=none", run_dir=str(run), **UNHURRIED)
    wait_for(lambda: proxy.server.tier.active and proxy.server.prediction.ready, timeout=30)
    client = proxy.client()
    for i in range(6_000):  # (each key once: NONE never hits; OBL reads ahead of the scan)
        client.get(f"seq:{i}")
    # Events, not durations: every read counted in the arms' figures, then one more sample written.
    arms = proxy.server.stats.ab_report
    wait_for(lambda: sum(a["gets"] for a in arms()["arms"]) == 6_000, timeout=60)

    def lines() -> int:
        path = run / "history.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    seen = lines()
    wait_for(lambda: lines() >= max(3, seen + 2), timeout=60)
    proxy.close()
    samples = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert samples[-1]["arms"]["OBL"]["gets"] + samples[-1]["arms"]["NONE"]["gets"] == 6_000
    latency = json.loads((run / "latency.json").read_text())
    assert latency["histograms"]["forward_latency_seconds"]["total"] > 0

    # A simulator run and a registry with one decision beside it.
    from accesslog.log import write_log
    from ml.registry import set_current
    from ml.training.retrain import RetrainConfig, retrain_once
    from tests.data.test_retrain import recorded
    from tests.helpers import planted_log

    write_log(planted_log(3000), tmp_path / "planted.parquet")
    sim = predis(
        "sim",
        str(tmp_path / "planted.parquet"),
        "--cache",
        "2,4,8",
        "--prefetch",
        "obl,markov",
        "--no-belady",
        "--json",
    )
    assert sim.returncode == 0, sim.stderr
    (run / "sim.json").write_text(sim.stdout)
    shutil.copytree(planted_model, run / "registry" / "v0001")
    set_current(run / "registry", run / "registry" / "v0001")
    recorded(tmp_path / "logs", planted_log(500))
    retrain_once(tmp_path / "logs", run / "registry", RetrainConfig(min_reads=1_000))

    out = tmp_path / "report.html"
    done = predis("report", str(run), "-o", str(out), "--window", "1")
    assert done.returncode == 0, done.stderr
    assert "hit ratio, latency, simulator, models" in done.stderr
    page = out.read_text()
    assert script_sources(page) == []  # (self-contained: every script inline)
    browser.get(out.as_uri())
    script = browser.execute_script
    wait_for(lambda: script("return document.querySelectorAll('.js-plotly-plot').length") == 4, timeout=30)
    names = script("return document.getElementById('figure-1').data.map(t => t.name).sort()")
    assert names == ["NONE", "NONE, 95% interval", "OBL", "OBL, 95% interval"]
    none = script("return document.getElementById('figure-1').data.find(t => t.name == 'NONE').y")
    obl = script("return document.getElementById('figure-1').data.find(t => t.name == 'OBL').y")
    assert len(none) >= 2 and all(v == 0 for v in none) and max(obl) > 0  # (OBL reads ahead; NONE never)
    sim_arms = script("return document.getElementById('figure-3').data.map(t => t.name).sort()")
    assert sim_arms == ["markov", "none", "obl"]
    assert script("return document.getElementById('figure-3').data[0].x.length") == 3
    text = browser.find_element("tag name", "body").text
    assert "too little data: 500 reads recorded, 1000 needed" in text and "* v0001" in text
    assert "forward_latency_seconds" in text
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def test_report_refuses_an_empty_run_and_a_broken_file(tmp_path: Path) -> None:
    empty = predis("report", str(tmp_path), "-o", str(tmp_path / "r.html"))
    assert (
        empty.returncode == 2 and "nothing to report" in empty.stderr and len(empty.stderr.splitlines()) == 1
    )
    (tmp_path / "history.jsonl").write_text('{"t": 1, "arms": {}}\nnot json\n{"t": 2, "arms": {}}\n')
    broken = predis("report", str(tmp_path), "-o", str(tmp_path / "r.html"))
    assert broken.returncode == 2 and "history.jsonl:2: not a JSON line" in broken.stderr
    missing = predis("report", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such directory" in missing.stderr


def test_windows_and_their_intervals() -> None:
    samples = [{"t": 100.0 + i, "arms": {"A": {"gets": 100 * i, "hits": 50 * i}}} for i in range(7)] + [
        {"t": 107.0, "arms": {"A": {"gets": 10, "hits": 10}}}
    ]  # (reset: counts start again)
    points = arm_windows(samples, 3.0)["A"]
    assert [p["t"] for p in points] == [3.0, 6.0, 7.0]
    assert [p["reads"] for p in points] == [300, 300, 10]
    assert points[0]["hit_ratio"] == 0.5 and points[-1]["hit_ratio"] == 1.0
    low, high = wilson(50, 100)
    assert 0.40 < low < 0.41 and 0.59 < high < 0.60  # (the textbook interval of 50 in 100)
    assert wilson(0, 0) == (0.0, 1.0) and wilson(10, 10)[1] == pytest.approx(1.0)
