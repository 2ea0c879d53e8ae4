"""The dashboard in a real browser: headless Chromium (Debian's, driven by selenium through its
chromedriver) opens /dashboard on a proxy running an A/B test while a client reads; the charts fill
with samples of the running proxy, the arms and the test's figures are on the page, the browser logs
no error, and a screenshot is saved. The page's JavaScript comes from the proxy itself."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import redis

from tests.helpers import wait_for

UNHURRIED = {"prefetch_engine_priority": "normal", "prefetch_max_age": 60.0}


def test_the_dashboard_shows_a_running_ab_test(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, browser: Any, tmp_path: Path
) -> None:
    direct.mset({f"seq:{i}": f"value-{i}" for i in range(50_000)})  # (a scan that never wraps)
    proxy = make_proxy(redis_server.url, admin="127.0.0.1:0", ab="OBL=obl,NONE=none", **UNHURRIED)
    wait_for(lambda: proxy.server.tier.active and proxy.server.prediction.ready, timeout=30)
    stop = threading.Event()

    def reader() -> None:
        client = proxy.client()
        i = 0
        while not stop.is_set():
            client.get(f"seq:{i % 50_000}")
            i += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        host, port = proxy.server.admin.address
        browser.get(f"http://{host}:{port}/dashboard")
        script = browser.execute_script
        wait_for(lambda: script("return window.predisSamples.length") >= 4, timeout=60)
        # Both arms' hit ratio traces, with the samples' points.
        wait_for(
            lambda: script(
                "const d = document.getElementById('hit').data;"
                "return d && d.length == 2 && d.every(t => t.x.length >= 3 && t.y.some(v => v !== null));"
            ),
            timeout=30,
        )
        names = script("return document.getElementById('hit').data.map(t => t.name).sort()")
        assert names == ["NONE", "OBL"]
        for chart in ("latency", "precision", "tier", "drift"):
            assert script(f"return document.getElementById('{chart}').data.length") >= 1, chart
        # No key is read twice and NONE never prefetches: its hit ratio on the page is exactly 0.
        last = script("return window.predisSamples[window.predisSamples.length - 1].arms")
        assert last["NONE"]["hit_ratio_total"] == 0.0 and last["OBL"]["gets"] > 0
        assert "chi-square p" in browser.find_element("id", "ab").text
        rows = [r.text for r in browser.find_elements("css selector", "#models tbody tr")]
        assert len(rows) == 2 and any(r.startswith("OBL obl") for r in rows)
        assert (
            "No alert firing" in browser.find_element("id", "alerts").text
            or "Alerts firing" in browser.find_element("id", "alerts").text
        )
        shot = Path(os.environ.get("PREDIS_SCREENSHOT_DIR", tmp_path)) / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        stop.set()
        thread.join(10)
