"""Typed settings: defaults, then a TOML file, then PREDIS_* environment variables, then flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from common.errors import ConfigError
from proxy.resp import MAX_BULK_LEN, MAX_INLINE_LEN, MAX_MULTIBULK_LEN, MAX_QUERY_BUFFER

ENV_PREFIX = "PREDIS_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("console", "json")


@dataclass
class Settings:
    # Where clients connect. Loopback unless told otherwise: the proxy has no auth of its own.
    host: str = "127.0.0.1"
    port: int = 6380
    # redis://[user:password@]host:port[/db] or unix:///path; empty starts an embedded redis-server.
    upstream: str = ""
    # Binary for the embedded upstream.
    redis_server: str = "redis-server"
    # Seconds to open an upstream connection before the client gets -ERR.
    connect_timeout: float = 2.0
    # Seconds a non-blocking command may wait for its reply; past it the client gets -ERR and the
    # upstream connection is replaced (BLPOP, XREAD BLOCK, WAIT... are exempt).
    command_timeout: float = 10.0
    max_clients: int = 10000
    # Upstream connections: N > 0 pipelines the requests of clients in Redis's default connection
    # state over N shared connections (per protocol), and gives a client its own connection while
    # it holds state (MULTI, SUBSCRIBE, AUTH, SELECT...; proxy.multiplex); 0 gives each client its
    # own (1:1). One shared connection forwarded the most in bench.muxbench.
    upstream_pool: int = 1
    # Proxy processes sharing the port (SO_REUSEPORT) under a supervisor (proxy.workers).
    workers: int = 1
    # With workers and live prefetching: prediction engines the workers share (worker i uses engine
    # i mod N). One learns from every worker's reads; more keep up with more cores' reads.
    prediction_engines: int = 1
    # With a redis-cluster:// upstream: clients' read-only commands go to a replica of their slot
    # (READONLY), which may answer with a value older than a write just acknowledged. The tier's
    # fills, and anything in a transaction, always read the masters.
    cluster_replica_reads: bool = False
    # Request limits, Redis's defaults (see proxy/resp.py).
    max_bulk_len: int = MAX_BULK_LEN
    max_multibulk_len: int = MAX_MULTIBULK_LEN
    max_inline_len: int = MAX_INLINE_LEN
    query_buffer_limit: int = MAX_QUERY_BUFFER
    # A client whose unsent replies exceed this is disconnected (Redis: client-output-buffer-limit).
    # Below it, a slow reader only pauses its own upstream connection (backpressure).
    output_buffer_limit: int = 256 * 1024 * 1024
    # Write-buffer high-water mark at which reading is paused on the other side of the pair.
    backpressure_bytes: int = 1024 * 1024
    # The hot tier: "cpu" (values in this process), "gpu" (values in GPU memory through CuPy) or
    # "off". Bounded by bytes (keys + values + per-entry overhead).
    hot_tier: str = "cpu"
    hot_tier_bytes: int = 64 * 1024 * 1024
    hot_tier_max_entry: int = 1024 * 1024  # larger entries are not cached
    hot_tier_policy: str = "lru"  # lru or s3fifo
    # No entry is served longer than this after it was read from Redis, whatever its TTL.
    hot_tier_max_staleness: float = 10.0
    # A read with more GETs than this is forwarded, not served: in Python, answering a long
    # pipelined batch from the tier costs more CPU than Redis needs for it (bench/HISTORY.md).
    hot_tier_max_batch: int = 8
    # Live prefetching (needs the hot tier): one predictor spec the simulator knows ("none", a
    # heuristic such as "markov" or "pg:lookahead=10"), or an A/B experiment "A=SPEC,B=SPEC" that
    # splits keys among the arms by a seeded hash (ab_shares "50,50"; equal when empty).
    prefetch: str = "none"
    ab: str = ""
    ab_shares: str = ""
    ab_seed: int = 0
    # Prefetches an arm may ask for per GET of its own keys (the simulator's budget).
    prefetch_budget: float = 1.0
    # Records go to the prediction engine in batches of at most this many, or after this long
    # (0.2 ms: the wait is most of a heuristic's median prediction latency; bench/RESULTS.md).
    prefetch_max_batch: int = 256
    prefetch_max_wait: float = 0.0002
    # A read older than this when the engine reaches it is not predicted from (its prefetches
    # would come too late): it is shed and counted.
    prefetch_max_age: float = 0.05
    # The engine process's CPU priority: "idle" (only spare CPU: never slows the proxy, but its
    # prefetches come late even under light load), "low" (nice 19) or "normal".
    prefetch_engine_priority: str = "low"
    # The share of one core the engine may use on average (1: no bound). Below 1 it pauses when
    # past it, and the reads that come meanwhile are shed (prefetch.cpubudget): for hosts whose
    # cores the proxy, Redis and the clients already fill.
    prefetch_engine_cpu: float = 1.0
    # What a miss reads beside its own key, without waiting for the engine: the keys the engine
    # named after that key before (hints), and those a model's template rules name (rules). Off,
    # prefetches come only from the engine's answers to each batch, as the simulator models them.
    prefetch_hints: bool = True
    prefetch_rules: bool = True
    # Where a model arm (ml:MODEL_DIR) runs: "auto" (a CUDA GPU where torch sees one), "cpu", "cuda".
    prefetch_device: str = "auto"
    # Recording reads for retraining: rotating access-log Parquet files in this directory, written
    # by the prediction engine's process (started for it if no arm runs); empty: no recording.
    access_log_dir: str = ""
    access_log_sample: float = 1.0  # the share of client streams recorded (each one whole)
    access_log_rotate_rows: int = 1_000_000  # a file is closed after this many rows...
    access_log_rotate_seconds: float = 300.0  # ...or this long (retraining reads closed files only)
    access_log_max_bytes: int = 1 << 30  # the oldest files go while the directory holds more
    # A secret: when set, keys are recorded as keyed pseudonyms of the same shape.
    access_log_salt: str = ""
    # Alert thresholds (0 turns one off; see proxy/alerts.py): an arm's hit ratio under its own
    # baseline by this much, its prediction p99 over this (ms), its prefetch precision under this,
    # the key-template mix's drift over this (Jensen-Shannon), a model's live recall under its
    # trained recall by this much, this share of reads shed from prediction; engine restarts.
    drift_window: int = 10_000  # reads per window of the key-template drift measure
    alert_hit_ratio_drop: float = 0.05
    alert_prediction_p99_ms: float = 50.0
    alert_precision_min: float = 0.05
    alert_drift_max: float = 0.2
    alert_recall_drop: float = 0.15
    alert_shed_share: float = 0.5
    alert_engine_restarts: float = 1.0
    # The admin HTTP listener (/metrics for Prometheus, /healthz), as [HOST:]PORT ("9121" is
    # 127.0.0.1:9121; port 0 picks a free one); empty: none.
    admin: str = ""
    # TLS, with Redis's own option names (proxy.tls). The listener: tls_port (0: none) serving
    # tls_cert_file and tls_key_file, checking clients' certificates against tls_ca_cert_file
    # (tls_auth_clients: yes, optional or no). A rediss:// upstream is verified against
    # tls_ca_cert_file (the system's CAs when empty), presenting tls_client_cert_file and
    # tls_client_key_file (default, as Redis does: tls_cert_file and tls_key_file) if it asks.
    tls_port: int = 0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_cert_file: str = ""
    tls_auth_clients: str = "yes"
    tls_client_cert_file: str = ""
    tls_client_key_file: str = ""
    # ACL users allowed the commands that change the proxy (PREDIS AB RESET, PREDIS MODEL
    # ROLLBACK), comma-separated; a client is the user it authenticated as, or the upstream URL's.
    admin_users: str = "default"
    # With an admin listener: the bearer token its pages ask for (Authorization: Bearer TOKEN, or
    # ?token=TOKEN); /healthz stays open. Empty: none (the listener is on loopback by default).
    admin_token: str = ""
    # A directory where the proxy leaves its figures over time for predis report (proxy.rundir);
    # empty: none.
    run_dir: str = ""
    log_level: str = "info"
    log_format: str = "console"
    # Seconds between health checks of the upstream (the PREDIS STATS upstream_status figure).
    health_interval: float = 1.0
    # Names of the settings that came from somewhere other than the defaults, for the startup log.
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def validate(self) -> Settings:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be console or json, got {self.log_format!r}")
        for name in ("connect_timeout", "command_timeout", "health_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in (
            "max_clients",
            "max_bulk_len",
            "max_multibulk_len",
            "max_inline_len",
            "query_buffer_limit",
            "output_buffer_limit",
            "backpressure_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.cluster_replica_reads and not self.upstream.startswith(
            ("redis-cluster://", "rediss-cluster://")
        ):
            raise ConfigError("cluster_replica_reads needs a redis-cluster:// upstream")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.prediction_engines < 1:
            raise ConfigError(f"prediction_engines must be at least 1, got {self.prediction_engines}")
        if self.workers > 1 and self.admin and parse_listen(self.admin)[1] == 0:
            raise ConfigError(
                "with workers > 1 the admin listener needs a port of its own, not 0 (they share it)"
            )
        if self.upstream_pool < 0:
            raise ConfigError(
                f"upstream_pool must be 0 (a connection per client) or more, got {self.upstream_pool}"
            )
        if self.hot_tier not in ("off", "cpu", "gpu"):
            raise ConfigError(f"hot_tier must be off, cpu or gpu, got {self.hot_tier!r}")
        if self.hot_tier_policy not in ("lru", "s3fifo"):
            raise ConfigError(f"hot_tier_policy must be lru or s3fifo, got {self.hot_tier_policy!r}")
        for name in ("hot_tier_bytes", "hot_tier_max_entry", "hot_tier_max_staleness", "hot_tier_max_batch"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if (
            self.prefetch_budget < 0
            or self.prefetch_max_batch <= 0
            or self.prefetch_max_wait <= 0
            or self.prefetch_max_age <= 0
        ):
            raise ConfigError(
                "prefetch_budget must be at least 0; prefetch_max_batch, prefetch_max_wait and prefetch_max_age positive"
            )
        if self.prefetch_engine_priority not in ("idle", "low", "normal", "realtime"):
            raise ConfigError(
                "prefetch_engine_priority must be idle, low, normal or realtime, "
                f"got {self.prefetch_engine_priority!r}"
            )
        if not 0.0 < self.prefetch_engine_cpu <= 1.0:
            raise ConfigError(
                f"prefetch_engine_cpu must be more than 0 and at most 1 (a share of one core), got {self.prefetch_engine_cpu}"
            )
        if self.prefetch_device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"prefetch_device must be auto, cpu or cuda, got {self.prefetch_device!r}")
        arms = self.prediction_arms()
        if arms and self.hot_tier == "off":
            raise ConfigError(
                "live prefetching (prefetch, ab) needs the hot tier: hot_tier must be cpu or gpu"
            )
        if arms:
            from prefetch.engine import parse_shares
            from prefetch.predictors import make_predictor

            for _, spec in arms:
                # A bad spec or model stops the start with its one line, before anything runs (a
                # model is checked, not loaded: the engine's process loads it).
                make_predictor(spec, check_only=True)
            if self.ab.strip():
                parse_shares(self.ab_shares, len(arms))
        if self.upstream:
            parse_upstream(self.upstream)
        if self.admin:
            parse_listen(self.admin)
        from proxy.tls import check_tls

        check_tls(self, bool(self.upstream) and parse_upstream(self.upstream).tls)
        if self.drift_window < 1:
            raise ConfigError(f"drift_window must be at least 1, got {self.drift_window}")
        for name in (
            "alert_hit_ratio_drop",
            "alert_prediction_p99_ms",
            "alert_precision_min",
            "alert_drift_max",
            "alert_recall_drop",
            "alert_shed_share",
            "alert_engine_restarts",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"{name} must be at least 0 (0 turns the alert off), got {getattr(self, name)}"
                )
        if self.access_log_dir:
            if not 0.0 < self.access_log_sample <= 1.0:
                raise ConfigError(f"access_log_sample must be in (0, 1], got {self.access_log_sample}")
            if (
                min(self.access_log_rotate_rows, self.access_log_max_bytes) <= 0
                or self.access_log_rotate_seconds <= 0
            ):
                raise ConfigError(
                    "access_log_rotate_rows, access_log_rotate_seconds and access_log_max_bytes must be positive"
                )
            if self.hot_tier == "off":
                raise ConfigError(
                    "the access log is recorded by the prediction engine, which needs the hot tier: hot_tier must be cpu or gpu"
                )
        return self

    def alert_thresholds(self) -> dict[str, float]:
        return {name[len("alert_") :]: float(getattr(self, name)) for name in _FIELDS_ALERTS}

    def access_log(self) -> dict[str, Any] | None:
        """The recorder's arguments (accesslog.recorder.AccessRecorder), or None: no recording."""
        if not self.access_log_dir:
            return None
        return {
            "directory": os.path.abspath(self.access_log_dir),
            "sample": self.access_log_sample,
            "seed": self.ab_seed,
            "rotate_rows": self.access_log_rotate_rows,
            "rotate_seconds": self.access_log_rotate_seconds,
            "max_bytes": self.access_log_max_bytes,
            "salt": self.access_log_salt,
        }

    def engine_config(self) -> str:
        """The prediction engine's ``--config`` (``prefetch.engine_process``) for these settings:
        what a proxy's own engine gets, and the one the supervisor of ``--workers`` starts for all."""
        from prefetch.engine import parse_shares
        from prefetch.engine_process import config_json

        arms = self.prediction_arms()
        shares = parse_shares(self.ab_shares, len(arms)) if self.ab else [1.0 / len(arms)] * len(arms)
        return config_json(
            arms,
            shares,
            self.ab_seed,
            self.prefetch_budget,
            self.prefetch_max_age,
            self.prefetch_engine_priority,
            self.prefetch_device,
            self.access_log(),
            self.drift_window,
            self.prefetch_engine_cpu,
            self.prefetch_hints,
            self.prefetch_rules,
        )

    def prediction_arms(self) -> list[tuple[str, str]]:
        """The arms live prefetching runs: the A/B experiment's, else the one ``prefetch`` arm
        (none when it is "none" and there is no experiment)."""
        from prefetch.engine import parse_arms

        if self.ab.strip():
            return parse_arms(self.ab)
        if self.prefetch.strip() in ("", "none"):
            # (recording reads needs the engine's process: it runs with an arm that prefetches nothing)
            return [("prefetch", "none")] if self.access_log_dir else []
        return [("prefetch", self.prefetch.strip())]


_FIELDS = {f.name: f for f in fields(Settings) if f.name != "sources"}
_FIELDS_ALERTS = [name for name in _FIELDS if name.startswith("alert_")]


def _coerce(name: str, value: Any, origin: str) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind == "bool":
            if isinstance(value, bool):
                return value
            word = str(value).strip().lower()
            if word in ("1", "true", "yes", "on"):
                return True
            if word in ("0", "false", "no", "off"):
                return False
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}: {name} must be {kind}, got {value!r}") from None
    raise ConfigError(f"{origin}: unsupported setting type for {name}")


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from defaults < TOML file < environment < explicit overrides (flags)."""
    settings = Settings()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        section = data.get("predis", data)
        if not isinstance(section, dict):
            raise ConfigError(f"config file {path}: [predis] must be a table")
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in _FIELDS:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            setattr(settings, name, _coerce(name, value, f"config file {path}"))
            settings.sources[name] = str(path)
    env = os.environ if env is None else env
    for name in _FIELDS:
        var = ENV_PREFIX + name.upper()
        if var in env:
            setattr(settings, name, _coerce(name, env[var], f"environment {var}"))
            settings.sources[name] = var
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        setattr(settings, name, _coerce(name, value, f"--{name.replace('_', '-')}"))
        settings.sources[name] = "flag"
    return settings.validate()


@dataclass(frozen=True)
class UpstreamAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    unix_path: str | None = None
    tls: bool = False  # rediss://
    cluster: tuple[tuple[str, int], ...] = ()  # redis-cluster://: the seed nodes (host, port)

    def display(self) -> str:
        if self.cluster:
            scheme = "rediss-cluster" if self.tls else "redis-cluster"
            return f"{scheme}://" + ",".join(f"{h}:{p}" for h, p in self.cluster)
        scheme = "rediss" if self.tls else "redis"
        where = f"unix://{self.unix_path}" if self.unix_path else f"{scheme}://{self.host}:{self.port}"
        return where + (f"/{self.db}" if self.db else "")


def parse_upstream(url: str) -> UpstreamAddress:
    """Parse redis://[user:pass@]host[:port][/db] (rediss:// for TLS), unix:///path[?db=N] or
    redis-cluster://[user:pass@]host:port[,host:port...] (a Redis Cluster's seed nodes)."""
    if url.startswith(("redis-cluster://", "rediss-cluster://")):
        return _parse_cluster(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"upstream URL {url!r} is invalid: {exc}") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(f"upstream URL {url!r} has no socket path")
        db = 0
        for item in parts.query.split("&"):
            if item.startswith("db="):
                db = _parse_db(item[3:], url)
        return UpstreamAddress(db=db, username=user, password=password, unix_path=parts.path)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(
            f"upstream URL {url!r} must start with redis://, rediss:// (TLS), unix://, "
            "redis-cluster:// or rediss-cluster://"
        )
    if not parts.hostname:
        raise ConfigError(f"upstream URL {url!r} has no host")
    db = _parse_db(parts.path.lstrip("/"), url) if parts.path.strip("/") else 0
    return UpstreamAddress(parts.hostname, port or 6379, db, user, password, tls=parts.scheme == "rediss")


def parse_listen(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``[HOST:]PORT`` (an IPv6 host in brackets) as (host, port); loopback when no host is given."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host = default_host
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"admin address must be [HOST:]PORT with a port 0-65535, got {text!r}")
    return host, int(port)


def _parse_cluster(url: str) -> UpstreamAddress:
    tls = url.startswith("rediss-cluster://")
    rest = url.partition("://")[2]
    rest, _, path = rest.partition("/")
    if path.strip("/") and path.strip("/") != "0":
        raise ConfigError(f"upstream URL {url!r}: a Redis Cluster has database 0 only")
    creds, _, hosts = rest.rpartition("@")
    user = password = None
    if creds:
        name, colon, secret = creds.partition(":")
        user, password = (unquote(name) or None), (unquote(secret) if colon else None)
        if not colon:  # (redis://secret@host: a password alone)
            user, password = None, unquote(name)
    seeds = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"upstream URL {url!r}: each seed node must be host:port, got {item!r}")
        seeds.append((host.strip("[]"), int(port)))
    return UpstreamAddress(seeds[0][0], seeds[0][1], 0, user, password, tls=tls, cluster=tuple(seeds))


def _parse_db(text: str, url: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"upstream URL {url!r}: database must be a number, got {text!r}")
    return int(text)


def settings_table() -> list[tuple[str, str, str]]:
    """(name, type, default) for every setting: the README's configuration reference."""
    defaults = Settings()
    return [(f.name, str(f.type), repr(getattr(defaults, f.name))) for f in _FIELDS.values()]


def replace(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, **changes).validate()
