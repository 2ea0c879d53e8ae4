"""The admin HTTP listener of a real proxy over a real Redis: /metrics in Prometheus's text format,
its figures the same as PREDIS STATS and PREDIS AB give, the latency histograms consistent, the
process's own figures beside them; /healthz 200 while the upstream is up and 503 once it is not."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from proxy.embedded import EmbeddedRedis
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
UNHURRIED = {"prefetch_engine_priority": "normal", "prefetch_max_age": 60.0}


def get(proxy: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    host, port = proxy.server.admin.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def scrape(proxy: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample by name, then by its labels."""
    status, headers, body = get(proxy, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def one(samples: dict[str, dict[Any, float]], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def test_metrics_are_the_proxys_figures(make_proxy: Any, redis_server: Any, direct: redis.Redis) -> None:
    proxy = make_proxy(redis_server.url, admin="127.0.0.1:0")
    wait_for(lambda: proxy.server.tier.active, timeout=30)
    client = proxy.client()
    for i in range(50):
        client.set(f"k:{i}", f"v{i}")
    for _ in range(3):
        for i in range(50):
            assert client.get(f"k:{i}") == f"v{i}".encode()
    wait_for(lambda: proxy.server.tier.hits >= 50, timeout=10)
    samples = scrape(proxy)
    stats = proxy.server.stats.snapshot()
    # Counters are the proxy's own (no command ran between the scrape and the snapshot).
    assert one(samples, "predis_commands_forwarded_total") == stats["commands_forwarded"] >= 100
    assert one(samples, "predis_hot_tier_hits_total") == stats["hot_tier_hits"] >= 50
    assert one(samples, "predis_hot_tier_misses_total") == stats["hot_tier_misses"]
    assert one(samples, "predis_hot_tier_entries") == stats["hot_tier_entries"] > 0
    assert one(samples, "predis_connected_clients") == 1
    address = stats["upstream_address"]
    assert one(samples, "predis_upstream_up", address=address) == 1.0
    info = next(iter(samples["predis_proxy_info"]))
    assert ("hot_tier_policy", "lru") in info
    # The forwarding latency histogram: cumulative buckets, +Inf holding every sample.
    lat = proxy.server.stats.forward_latency
    buckets = sorted(
        ((float(dict(k)["le"]), v) for k, v in samples["predis_forward_latency_seconds_bucket"].items()),
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1] == (float("inf"), lat.total)
    assert one(samples, "predis_forward_latency_seconds_count") == lat.total > 0
    assert 0 < one(samples, "predis_forward_latency_seconds_sum") < lat.total * 10
    assert "predis_hot_tier_served_latency_seconds_count" in samples
    # The event loop's lag: its timer has run (every 10 ms) since the proxy started.
    assert one(samples, "predis_event_loop_lag_seconds_count") >= 1
    assert "predis_gc_pause_seconds_count" in samples
    # The process's own figures, for memory and descriptor leaks.
    assert one(samples, "process_resident_memory_bytes") > 10e6
    assert one(samples, "process_open_fds") > 3
    status, _, body = get(proxy, "/healthz")
    assert status == 200 and json.loads(body)["upstream"] == "up"
    assert get(proxy, "/nothing")[0] == 404


def test_metrics_carry_the_ab_test(make_proxy: Any, redis_server: Any, direct: redis.Redis) -> None:
    direct.mset({f"seq:{i}": f"value-{i}" for i in range(300)})
    proxy = make_proxy(redis_server.url, admin="127.0.0.1:0", ab="OBL=obl,NONE=none", ab_seed=3, **UNHURRIED)
    wait_for(lambda: proxy.server.tier.active and proxy.server.prediction.ready, timeout=30)
    client = proxy.client()
    for i in range(300):
        client.get(f"seq:{i}")
    report = lambda: json.loads(client.execute_command("PREDIS", "AB", "JSON"))  # noqa: E731
    # (the engine's figures are its steps' over all 300: none moves any more)
    wait_for(lambda: sum(arm["engine_reads"] for arm in report()["arms"]) == 300, timeout=10)
    samples = scrape(proxy)
    arms = {arm["name"]: arm for arm in report()["arms"]}
    for name in ("OBL", "NONE"):
        assert one(samples, "predis_arm_gets_total", arm=name) == arms[name]["gets"]
        assert one(samples, "predis_arm_hits_total", arm=name) == arms[name]["hits"]
        assert one(samples, "predis_arm_prefetches_total", arm=name) == arms[name]["prefetches"]
        assert one(samples, "predis_arm_hit_ratio", arm=name) == arms[name]["hit_ratio"]
    assert one(samples, "predis_arm_prefetches_total", arm="OBL") > 0
    assert one(samples, "predis_arm_info", arm="OBL", spec="obl") == 1.0
    assert "predis_ab_chi2_p" in samples and "predis_ab_sequential_p" in samples
    assert set(dict(k)["bound"] for k in samples["predis_ab_difference"]) == {"estimate", "low", "high"}
    # Each arm has its prediction latency histogram (how many sends it holds depends on timing).
    assert {dict(k)["arm"] for k in samples["predis_arm_prediction_latency_seconds_count"]} == {"OBL", "NONE"}
    assert one(samples, "predis_prefetch_engine_up") == 1.0
    # Every metric the Grafana dashboard plots is one this proxy serves (a model arm's own
    # fallbacks aside: this experiment has no model).
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/predis.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(?:predis|process)_[a-z0-9_]+", target["expr"])
    }
    # (a model arm's own figures, and the alerts firing now: none in this run)
    absent = {"predis_arm_model_fallbacks_total", "predis_alert_firing"}
    assert len(used) > 20 and used - set(samples) == absent
    # The alerts: each rule's count and threshold.
    assert one(samples, "predis_alerts_fired_total", alert="drift_max") == 0
    assert one(samples, "predis_alert_threshold", alert="hit_ratio_drop") == 0.05
    assert "predis_prefetch_drift_js" in samples


def test_healthz_turns_503_when_the_upstream_goes(make_proxy: Any) -> None:
    upstream = EmbeddedRedis().start()
    try:
        proxy = make_proxy(upstream.url, admin="127.0.0.1:0", health_interval=0.05)
        wait_for(lambda: get(proxy, "/healthz")[0] == 200, timeout=10)
    finally:
        upstream.stop()
    wait_for(lambda: get(proxy, "/healthz")[0] == 503, timeout=10)
    status, _, body = get(proxy, "/healthz")
    assert json.loads(body)["upstream"] == "down"
    assert one(scrape(proxy), "predis_upstream_up", address=proxy.server.stats.upstream_address) == 0.0
