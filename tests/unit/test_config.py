"""Settings: defaults < TOML < environment < flags, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.histogram import LatencyHistogram
from proxy.config import Settings, load_settings, parse_listen, parse_upstream
from proxy.stats import Stats


def test_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "predis.toml"
    cfg.write_text('[predis]\nport = 7000\nlog-level = "debug"\ncommand_timeout = 3\n')
    s = load_settings(cfg, env={"PREDIS_PORT": "7001", "PREDIS_HOST": "0.0.0.0"}, overrides={"port": 7002})
    assert (s.port, s.host, s.log_level, s.command_timeout) == (7002, "0.0.0.0", "debug", 3.0)
    assert s.sources["port"] == "flag" and s.sources["host"] == "PREDIS_HOST"
    assert load_settings(env={}) == Settings()


@pytest.mark.parametrize(
    "text, message",
    [
        ("port = 'abc'", "port must be int"),
        ("nope = 1", "unknown setting 'nope'"),
        ("port = 99999", "port must be 0-65535"),
        ("log_level = 'loud'", "log_level must be one of"),
        ("upstream = 'http://x'", "must start with redis://"),
        ("upstream = 'redis://h/abc'", "database must be a number"),
        ("port = [", "not valid TOML"),
        ("command_timeout = -1", "command_timeout must be positive"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(cfg, env={})
    assert "\n" not in str(info.value)


def test_env_type_error() -> None:
    with pytest.raises(ConfigError, match="PREDIS_MAX_CLIENTS: max_clients must be int"):
        load_settings(env={"PREDIS_MAX_CLIENTS": "many"})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings("/nonexistent/predis.toml", env={})


def test_parse_upstream() -> None:
    a = parse_upstream("redis://app:p%40ss@example:7000/4")
    assert (a.host, a.port, a.db, a.username, a.password) == ("example", 7000, 4, "app", "p@ss")
    assert parse_upstream("redis://h").port == 6379
    u = parse_upstream("unix:///tmp/r.sock?db=2")
    assert (u.unix_path, u.db) == ("/tmp/r.sock", 2)
    c = parse_upstream("redis-cluster://app:s%3Ac@10.0.0.1:7000,node-b:7001")
    assert c.cluster == (("10.0.0.1", 7000), ("node-b", 7001)) and (c.username, c.password) == ("app", "s:c")
    assert c.display() == "redis-cluster://10.0.0.1:7000,node-b:7001" and not c.tls
    assert parse_upstream("redis-cluster://secret@h:1").password == "secret"
    t = parse_upstream("rediss-cluster://h:1,h:2")
    assert t.tls and t.cluster == (("h", 1), ("h", 2)) and t.display() == "rediss-cluster://h:1,h:2"
    for bad, why in (
        ("redis-cluster://h", "host:port"),
        ("redis-cluster://h:1,", "host:port"),
        ("redis-cluster://h:99999", "host:port"),
        ("redis-cluster://h:1/3", "database 0 only"),
    ):
        with pytest.raises(ConfigError, match=why):
            parse_upstream(bad)


def test_a_yes_or_no_setting_from_the_environment_and_toml(tmp_path: Path) -> None:
    up = {"PREDIS_UPSTREAM": "redis-cluster://h:1"}
    for word, meaning in (("yes", True), ("On", True), ("1", True), ("false", False), ("no", False)):
        assert (
            load_settings(env={**up, "PREDIS_CLUSTER_REPLICA_READS": word}).cluster_replica_reads is meaning
        )
    with pytest.raises(ConfigError, match="cluster_replica_reads must be bool"):
        load_settings(env={**up, "PREDIS_CLUSTER_REPLICA_READS": "maybe"})
    toml = tmp_path / "p.toml"
    toml.write_text('upstream = "redis-cluster://h:1"\ncluster-replica-reads = true\n')
    assert load_settings(toml, env={}).cluster_replica_reads is True
    with pytest.raises(ConfigError, match="needs a redis-cluster"):
        load_settings(env={"PREDIS_UPSTREAM": "redis://h", "PREDIS_CLUSTER_REPLICA_READS": "yes"})


def test_what_a_miss_reads_beside_its_key_can_be_switched_off(tmp_path: Path) -> None:
    """Hints and template rules are on by default; ``prefetch_hints``/``prefetch_rules`` (TOML,
    PREDIS_*) turn each off alone."""
    defaults = load_settings(env={})
    assert defaults.prefetch_hints is True and defaults.prefetch_rules is True
    off = load_settings(env={"PREDIS_PREFETCH_HINTS": "no"})
    assert off.prefetch_hints is False and off.prefetch_rules is True
    toml = tmp_path / "p.toml"
    toml.write_text("prefetch-rules = false\n")
    off = load_settings(toml, env={})
    assert off.prefetch_rules is False and off.prefetch_hints is True
    with pytest.raises(ConfigError, match="prefetch_rules must be bool"):
        load_settings(env={"PREDIS_PREFETCH_RULES": "sometimes"})
    # The engine is told, so that it works out neither (prefetch.engine_process's config).
    told = json.loads(load_settings(toml, env={"PREDIS_PREFETCH": "markov"}).engine_config())
    assert (told["hints"], told["rules"]) == (True, False)


def test_the_engines_cpu_share(tmp_path: Path) -> None:
    """``prefetch_engine_cpu``: a share of one core in (0, 1], 1 by default (no bound), passed to the
    engine's process; anything else is a one-line error."""
    assert load_settings(env={}).prefetch_engine_cpu == 1.0
    toml = tmp_path / "p.toml"
    toml.write_text("prefetch = 'markov'\nprefetch-engine-cpu = 0.25\n")
    settings = load_settings(toml, env={})
    assert settings.prefetch_engine_cpu == 0.25
    assert json.loads(settings.engine_config())["cpu_share"] == 0.25
    for bad in ("0", "1.5", "-1"):
        with pytest.raises(ConfigError, match="prefetch_engine_cpu must be more than 0 and at most 1"):
            load_settings(env={"PREDIS_PREFETCH_ENGINE_CPU": bad})


def test_admin_address() -> None:
    assert parse_listen("9121") == ("127.0.0.1", 9121)
    assert parse_listen("0.0.0.0:9121") == ("0.0.0.0", 9121)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("", "x", "host:", "host:70000", "host:-1"):
        with pytest.raises(ConfigError, match="admin address"):
            Settings(upstream="redis://h", admin=bad or ":").validate()


def test_latency_histogram_percentiles() -> None:
    h = LatencyHistogram()
    assert h.percentile(50) == 0.0
    for us in range(1, 1001):
        h.record(us / 1e6)
    # Upper bucket edges: within one bucket (2**(1/8), ~9%) above the true value, never below.
    for p, true in ((50, 500), (90, 900), (99, 990)):
        assert true <= h.percentile(p) <= true * 2 ** (1 / 8) * 1.001


def test_stats_sections_and_info_format() -> None:
    t = [100.0]
    stats = Stats(clock=lambda: t[0])
    t[0] = 142.0
    stats.sections["tier"] = lambda: {"hits": 3}
    text = stats.info_text().decode()
    assert text.startswith("# Predis\r\n") and "uptime_in_seconds:42\r\n" in text and "tier_hits:3" in text
