"""``predis serve --workers N``: N proxy processes on one listening port, under a supervisor.

Each worker is a whole proxy (its own event loop, tier, filler and tracking connection) that opens
the port with SO_REUSEPORT, so the kernel spreads new client
connections over them. The tier stays coherent across workers the way it does across proxies:
every worker's tracking connection hears of every write to a key it read, through whichever
worker (or client) the write came.

The supervisor starts an embedded Redis if no upstream is given (one for all workers), picks the
port if asked for port 0, starts the workers with the same flags, restarts one that dies (after a
pause if it dies young), and on SIGTERM or SIGINT stops them all.

Live prefetching: one prediction engine serves every worker (``prefetch.engine_process
--listen-fd``), or ``prediction_engines`` of them each serve some (worker i engine i mod N). The
supervisor starts it on a Unix socket of its own (``engine-0.sock`` in the workers' directory),
which every worker connects to, and restarts it when it dies; the socket stays
the supervisor's, so the workers reach the new engine where they reached the old. The engine's
predictors learn from every worker's reads (a sequence one worker's clients teach is prefetched for
every worker's), its batches are larger (one model step for all), and each worker's arms' figures
are counted apart, so that they add up over the workers as their reads do.

Statistics: each worker writes its figures to a file in a directory the supervisor made, twice a
second; ``PREDIS STATS`` (and INFO's ``# Predis`` section, ``predis stats``) in any worker sums
every worker's latest (``merge_figures``), and ``PREDIS STATS WORKERS`` lists them one by one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from proxy.config import Settings

log = structlog.get_logger("predis.workers")

PUBLISH_EVERY = 0.5  # seconds between a worker's figures files
EPOCH_BUCKETS = 1 << 16  # the tiers' shared write epochs (HotTier.share_epochs), and a flush epoch
YOUNG = 2.0  # a worker that dies younger than this is restarted after a pause of this long
GIVE_UP = 5  # ...and after this many such deaths in a row the supervisor stops, with an error


# Figures that are not counts: the whole proxy's is the largest worker's (a percentile, an age,
# a size), or a ratio recomputed from the counts where they are there.
_NOT_SUMMED_SUFFIXES = ("_p50_us", "_p90_us", "_p99_us", "_p999_us", "_ratio", "_size")
_NOT_SUMMED = frozenset(
    {"uptime_in_seconds", "hot_tier_active", "worker_index", "worker_pid", "prefetch_engine_pid"}
)
# ...and the one engine's figures, which every worker repeats (its drift, its access log).
_NOT_SUMMED_PREFIXES = ("prefetch_drift_", "prefetch_access_log_")


def merge_figures(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole proxy's figures from its workers': counts summed; percentiles, ratios and sizes
    the largest worker's (hot_tier_hit_ratio recomputed from the summed hits and misses); text
    the first worker's."""
    if not figures:
        return {}
    out: dict[str, Any] = {}
    for key, value in figures[0].items():
        values = [f.get(key) for f in figures]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) != len(values):
            out[key] = value
        elif key in _NOT_SUMMED or key.endswith(_NOT_SUMMED_SUFFIXES) or key.startswith(_NOT_SUMMED_PREFIXES):
            out[key] = max(numbers)
        else:
            out[key] = sum(numbers)
    hits, misses = out.get("hot_tier_hits"), out.get("hot_tier_misses")
    if isinstance(hits, int) and isinstance(misses, int) and "hot_tier_hit_ratio" in out:
        out["hot_tier_hit_ratio"] = round(hits / (hits + misses), 4) if hits + misses else 0.0
    out["workers"] = len(figures)
    out.pop("worker_index", None)
    out.pop("worker_pid", None)
    out.pop("ab_arms", None)  # (merge_arms')
    return out


# An arm's figures that are not counts (proxy.prediction.LivePrefetcher.arm_figures): recomputed
# from the summed counts, or the largest worker's (the latency percentiles), or the first's.
_ARM_RATIOS = ("precision", "upstream_per_get", "hit_ratio")


def merge_arms(workers: list[list[dict[str, Any]] | None]) -> list[dict[str, Any]]:
    """The A/B arms' figures of the whole proxy from each worker's (``ab_arms`` in its figures):
    counts summed (GETs, hits, misses, prefetches, fills, their hits...), precision and upstream
    reads per GET recomputed from them, prediction latency percentiles the largest worker's."""
    arms: list[dict[str, Any]] = []
    for worker in workers:
        for i, arm in enumerate(worker or []):
            if i == len(arms):
                arms.append(dict(arm))
                continue
            merged = arms[i]
            for key, value in arm.items():
                have = merged.get(key)
                if key.endswith(("_p50_us", "_p99_us")):
                    numbers = [v for v in (have, value) if isinstance(v, int | float)]
                    merged[key] = max(numbers) if numbers else None
                elif (
                    isinstance(value, int | float) and not isinstance(value, bool) and key not in _ARM_RATIOS
                ):
                    merged[key] = (have if isinstance(have, int | float) else 0) + value
    for arm in arms:
        fills, hits, gets = arm.get("prefetch_fills"), arm.get("prefetched_hits"), int(arm.get("gets", 0))
        arm["precision"] = round(hits / fills, 4) if fills and hits is not None else None
        upstream = int(arm.get("misses", 0)) + int(arm.get("fetched", 0))
        arm["upstream_per_get"] = round(upstream / gets, 4) if gets else None
    return arms


def shared_epochs(directory: str) -> Any:
    """The workers' write epochs (made by the supervisor), mapped into this process: a memoryview
    of unsigned 64-bit counters that every worker's writes are seen in."""
    import mmap

    with open(Path(directory) / "epochs", "r+b") as fh:
        mapped = mmap.mmap(fh.fileno(), 8 * (EPOCH_BUCKETS + 1))
    return memoryview(mapped).cast("Q")


class WorkerFigures:
    """A worker's side: where it writes its figures, and every worker's as last written."""

    def __init__(self, directory: str, index: int) -> None:
        self.directory = Path(directory)
        self.index = index
        self.path = self.directory / f"worker-{index}.json"

    def _named(self, figures: dict[str, Any]) -> dict[str, Any]:
        return {**figures, "worker_index": self.index, "worker_pid": os.getpid()}

    def publish(self, figures: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._named(figures)))
        tmp.replace(self.path)  # (readers never see half a file)

    def _read(self, own: bool) -> list[dict[str, Any]]:
        """The workers' figures files (this one's too if ``own``)."""
        out = []
        for path in sorted(self.directory.glob("worker-*.json")):
            if path == self.path and not own:
                continue
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # (a worker writing its first file)
        return out

    def published(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        """Every worker's figures as last published, this one's too (``mine`` until it has
        published): a scrape's, whose counters then never go back when another worker answers
        the next one."""
        out = self._read(own=True)
        if not any(f.get("worker_index") == self.index for f in out):
            out.append(self._named(mine))
        return sorted(out, key=lambda f: f.get("worker_index", 0))

    def everyone(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        """Every worker's figures: this one's now, the others' as last published."""
        return sorted([self._named(mine), *self._read(own=False)], key=lambda f: f.get("worker_index", 0))


def resolve_workers(value: str) -> int:
    """``--workers``: a count, or ``auto`` (the CPUs this process may run on)."""
    if value == "auto":
        return len(os.sched_getaffinity(0))
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--workers must be a number or auto, got {value!r}") from None
    if count < 1:
        raise ValueError(f"--workers must be at least 1, got {count}")
    return count


def supervise(settings: Settings, argv: list[str]) -> int:
    """Run ``settings.workers`` workers of ``predis serve argv`` until SIGTERM or SIGINT."""
    from proxy.embedded import EmbeddedRedis, free_port

    port = settings.port or free_port()
    _check_port(settings.host, port)  # (one line now, rather than every worker's, again and again)
    embedded = None
    upstream = settings.upstream
    if not upstream:
        embedded = EmbeddedRedis(settings.redis_server).start()
        upstream = embedded.url
    directory = tempfile.mkdtemp(prefix="predis-workers-")
    (Path(directory) / "epochs").write_bytes(bytes(8 * (EPOCH_BUCKETS + 1)))
    base = [sys.executable, "-m", "proxy.cli", "serve", *argv, "--upstream", upstream, "--port", str(port)]
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def spawn(index: int) -> tuple[subprocess.Popen[bytes], float]:
        cmd = [*base, "--worker-index", str(index), "--worker-dir", directory]
        if engines:
            cmd += ["--worker-engine", str(index % len(engines))]
        return subprocess.Popen(cmd), time.monotonic()

    engines = (
        [
            SharedEngine(settings, directory, i)
            for i in range(min(settings.prediction_engines, settings.workers))
        ]
        if settings.prediction_arms()
        else []
    )
    procs = [spawn(i) for i in range(settings.workers)]
    log.info("workers started", workers=settings.workers, port=port, pids=[p.pid for p, _ in procs])
    restarts = 0
    young_in_a_row = 0
    failed = False
    try:
        while not stopping:
            time.sleep(0.1)
            for engine in engines:
                engine.check()
            for index, (proc, started) in enumerate(procs):
                code = proc.poll()
                if code is None or stopping:
                    continue
                young = time.monotonic() - started < YOUNG
                young_in_a_row = young_in_a_row + 1 if young else 0
                if young_in_a_row >= GIVE_UP:
                    log.error("workers keep dying as they start; stopping", deaths=young_in_a_row, code=code)
                    stopping = failed = True
                    break
                log.warning("worker died; restarting it", worker=index, pid=proc.pid, code=code, young=young)
                if young:
                    time.sleep(YOUNG)
                restarts += 1
                procs[index] = spawn(index)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc, _ in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for engine in engines:
            engine.close()
        shutil.rmtree(directory, ignore_errors=True)
        if embedded is not None:
            embedded.close()
        log.info("workers stopped", restarts=restarts)
    if failed:
        from common.errors import PredisError

        raise PredisError(
            "predis serve --workers: the workers keep dying as they start (their errors are above)"
        )
    return 0


class SharedEngine:
    """A prediction engine the workers share (one by default: every worker's): its process,
    started again when it dies (after a pause that doubles while it keeps dying young), on a
    listening socket the supervisor holds."""

    def __init__(self, settings: Settings, directory: str, index: int = 0) -> None:
        import socket

        self.config = settings.engine_config()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(engine_address(directory, index))
        self.listener.listen(128)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.pause = YOUNG
        self.next_start = 0.0
        self.restarts = 0
        self.start()

    def start(self) -> None:
        fd = self.listener.fileno()
        cmd = [
            sys.executable,
            "-m",
            "prefetch.engine_process",
            "--listen-fd",
            str(fd),
            "--config",
            self.config,
        ]
        self.proc = subprocess.Popen(cmd, pass_fds=(fd,))
        self.started = time.monotonic()
        log.info("prediction engine started for every worker", pid=self.proc.pid)

    def check(self) -> None:
        """Start the engine again if it died (its workers shed their reads meanwhile)."""
        now = time.monotonic()
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return
            young = now - self.started < YOUNG
            self.pause = min(30.0, self.pause * 2) if young else YOUNG
            self.next_start = now + (self.pause if young else 0.0)
            log.warning("prediction engine died; restarting it", pid=self.proc.pid, code=code, young=young)
            self.proc = None
            self.restarts += 1
        if now >= self.next_start:
            self.start()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # (its access recorder writes what waits)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.listener.close()


def engine_address(directory: str, index: int = 0) -> str:
    """Where a worker reaches the shared engine ``index`` (worker i: engine i mod the engines)."""
    return str(Path(directory) / f"engine-{index}.sock")


def _check_port(host: str, port: int) -> None:
    """Refuse a port the workers could not share (held by a process without SO_REUSEPORT)."""
    import socket

    from common.errors import PredisError

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PredisError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
