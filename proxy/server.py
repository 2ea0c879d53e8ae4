"""The listening server: accepts clients, opens their upstream connections, runs the housekeeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from common.errors import UpstreamError
from prefetch.engine import ArmSplit, parse_shares
from prefetch.store import make_store
from prefetch.tier import HotTier
from proxy.alerts import Alerts
from proxy.backchannel import Filler, InvalidationChannel, open_raw
from proxy.cluster_upstream import ClusterOpener
from proxy.config import Settings, UpstreamAddress, parse_listen, parse_upstream
from proxy.connection import ClientConnection, Shared
from proxy.history import History
from proxy.keyspace import CommandTable
from proxy.loopwatch import LoopWatch
from proxy.prediction import LivePrefetcher
from proxy.reads import AccessSink
from proxy.resp import encode_command
from proxy.stats import Stats
from proxy.upstream import UpstreamOpener

log = structlog.get_logger("predis.server")


class ProxyServer:
    def __init__(
        self,
        settings: Settings,
        stats: Stats | None = None,
        clock: Callable[[], float] = time.monotonic,
        access: AccessSink | None = None,
    ) -> None:
        """``clock``: the hot tier's (expiry, the staleness bound, refreshes); tests move it by
        hand. ``access``: told of every GET and MGET key every client reads (``proxy.reads.AccessSink``:
        the live prediction engine and the A/B split attach here)."""
        if not settings.upstream:
            raise ValueError("ProxyServer needs an upstream URL; the CLI starts an embedded Redis")
        self.settings = settings
        self.upstream: UpstreamAddress = parse_upstream(settings.upstream)
        self.stats = stats or Stats()
        self.stats.upstream_address = self.upstream.display()
        # (A Redis Cluster: every upstream connection is a virtual one over the cluster's nodes.)
        opener = ClusterOpener if self.upstream.cluster else UpstreamOpener
        self.opener = opener(settings, self.upstream)
        self.tier: HotTier | None = None
        self.filler: Filler | None = None
        self.channel: InvalidationChannel | None = None
        arms = settings.prediction_arms()
        shares = parse_shares(settings.ab_shares, len(arms)) if settings.ab else None
        if settings.hot_tier != "off":
            store = make_store(settings.hot_tier, settings.hot_tier_bytes, settings.hot_tier_max_entry)
            # An A/B test's arms each hold their share of the tier: no arm wins by memory, and
            # prefetching for one never evicts another's entries.
            split = ArmSplit(shares, settings.ab_seed) if shares else None
            self.tier = HotTier(
                settings.hot_tier_bytes,
                max_entry_bytes=settings.hot_tier_max_entry,
                max_staleness=settings.hot_tier_max_staleness,
                policy=settings.hot_tier_policy,
                store=store,
                clock=clock,
                partitions=shares,
                partition_of=split.arm_of if split else None,
            )
            self.channel = InvalidationChannel(self.opener, self.tier)
            self.filler = self.channel.filler = Filler(self.opener, self.tier, self.channel)
            self.stats.sections["hot_tier"] = self._tier_figures
        # Live prefetching: the prediction engine's proxy side is the access sink (before any
        # other sink given, which it then passes on to).
        self.prediction: LivePrefetcher | None = None
        if arms:
            assert self.tier is not None  # (validate: prefetching needs the tier)
            self.prediction = LivePrefetcher(
                arms,
                self.tier,
                self.filler,
                self.opener,
                shares=shares,
                seed=settings.ab_seed,
                budget=settings.prefetch_budget,
                max_batch=settings.prefetch_max_batch,
                max_wait=settings.prefetch_max_wait,
                engine_config=settings.engine_config(),
                hints=settings.prefetch_hints,
                rules=settings.prefetch_rules,
            )
            self.stats.sections["prefetch"] = self.prediction.figures
            self.stats.ab = self.prediction
            access = self.prediction if access is None else _both(self.prediction, access)
        self.shared = Shared(self.opener, self.stats, self.tier, self.filler, access)
        if self.shared.pool is not None:
            self.stats.sections["upstream_pool"] = self.shared.pool.figures
        if self.prediction is not None:
            readers = self.shared.readers

            def reader_of(stream: int) -> tuple[Any, str] | None:
                session = readers.get(stream)
                return session.reader() if session is not None else None

            self.prediction.reader_of = reader_of
        self.clients = self.shared.clients
        # Alerts on live prediction's figures, looked at every second (logged, in PREDIS STATS and
        # the metrics).
        self.alerts: Alerts | None = None
        if self.prediction is not None:
            self.alerts = Alerts(settings.alert_thresholds())
            self.stats.sections["alerts"] = self.alerts.figures
        # The admin HTTP listener (/metrics, /healthz), when an address is set; aiohttp and
        # prometheus_client are imported only then.
        self.admin: Any = None
        if settings.admin:
            from proxy.admin import AdminListener

            host, port = parse_listen(settings.admin)
            self.admin = AdminListener(host, port, self.figures, self.health, settings.admin_token)
        # The run directory predis report reads (history.jsonl, latency.json), when one is set.
        self.run_dir: Any = None
        if settings.run_dir:
            from proxy.rundir import RunDirectory

            self.run_dir = RunDirectory(settings.run_dir)
        self.history = self.admin.history if self.admin is not None else History()
        self._server: asyncio.AbstractServer | None = None
        self._tls_server: asyncio.AbstractServer | None = None
        self.tls_address: tuple[str, int] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.loop_watch = LoopWatch(self.stats)
        self.address: tuple[str, int] | None = None

    @property
    def command_table(self) -> CommandTable | None:
        """Redis's command table (which writes touch which keys), once read."""
        return self.shared.command_table

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        if self.prediction is not None:
            from prefetch.abtest import prepare

            prepare()  # (what its A/B reports import, before any client is served)
        shared_port = self.settings.workers > 1  # (--workers: the kernel spreads connections over them)
        self._server = await loop.create_server(
            lambda: ClientConnection(self.shared),
            self.settings.host,
            self.settings.port,
            backlog=1024,
            reuse_port=shared_port or None,
        )
        sock = self._server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        if self.settings.tls_port:  # the TLS listener: the same connections, over TLS (proxy.tls)
            from proxy.tls import server_context

            self._tls_server = await loop.create_server(
                lambda: ClientConnection(self.shared),
                self.settings.host,
                self.settings.tls_port,
                backlog=1024,
                ssl=server_context(self.settings),
                reuse_port=shared_port or None,
            )
            tls_sock = self._tls_server.sockets[0].getsockname()
            self.tls_address = (tls_sock[0], tls_sock[1])
        self.loop_watch.start(loop)
        self._tasks = [
            loop.create_task(self._timeout_loop()),
            loop.create_task(self._health_loop()),
        ]
        if self.channel is not None:
            self._tasks.append(loop.create_task(self._tier_loop()))
        if self.alerts is not None or self.admin is not None or self.run_dir is not None:
            self._tasks.append(loop.create_task(self._look_loop()))
        if self.stats.peers is not None:
            self._tasks.append(loop.create_task(self._publish_loop()))
        if self.prediction is not None:
            await self.prediction.start()
        if self.admin is not None:
            await self.admin.start()
        log.info(
            "predis listening",
            host=self.address[0],
            port=self.address[1],
            tls_port=self.tls_address[1] if self.tls_address else None,
            upstream=self.upstream.display(),
        )
        return self.address

    async def close(self) -> None:
        self.loop_watch.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.admin is not None:
            await self.admin.close()
        if self.run_dir is not None:
            self.run_dir.close(self.figures())
        if self.prediction is not None:
            await self.prediction.close()
        if self.channel is not None:
            self.channel.close()
        if self.filler is not None:
            self.filler.close()
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abort()  # shutting down: do not wait for slow readers
            client.upstream.close()
        if self.shared.pool is not None:
            self.shared.pool.close()
        for server in (self._server, self._tls_server):
            if server is None:
                continue
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except TimeoutError:
                log.warning("connections still open at shutdown")

    async def _tier_loop(self) -> None:
        """Load Redis's command table (which writes touch which keys), then keep tracking up."""
        assert self.channel is not None
        while self.shared.command_table is None:
            try:
                conn = await open_raw(self.opener, self.opener.identity(), resp3=True)
                try:
                    self.shared.command_table = CommandTable.from_reply(await conn.call("COMMAND"))
                finally:
                    conn.close()
            except (TimeoutError, OSError, UpstreamError, ValueError) as exc:
                log.warning("cannot read Redis's command table; hot tier inactive", error=str(exc))
                await asyncio.sleep(self.settings.health_interval)
        await self.channel.run()

    def _tier_figures(self) -> dict[str, Any]:
        assert self.tier is not None and self.channel is not None
        figures = self.tier.snapshot()
        figures["tracking_drops"] = self.channel.drops
        figures["fill_errors"] = self.filler.errors if self.filler else 0
        return figures

    def figures(self) -> Any:
        """What a metrics scrape reads (proxy.metrics.Figures): the snapshot PREDIS STATS gives,
        the A/B report PREDIS AB gives, and the latency histograms themselves."""
        from proxy.metrics import Figures

        histograms = {
            "forward_latency_seconds": (
                "From a forwarded command's send to Redis to its reply (sampled).",
                self.stats.forward_latency,
            ),
            "event_loop_lag_seconds": (
                "How late the event loop ran a timer due every 10 ms (what every request waits for).",
                self.stats.loop_lag,
            ),
            "gc_pause_seconds": (
                "The garbage collector's pauses of the proxy's process.",
                self.stats.gc_pause,
            ),
        }
        if self.tier is not None:
            histograms["hot_tier_served_latency_seconds"] = (
                "From a read's arrival to its answer from the hot tier (one read in eight).",
                self.tier.served_latency,
            )
        arm_latency = {}
        if self.prediction is not None:
            arm_latency = {
                name: hist
                for (name, _), hist in zip(self.prediction.arms, self.prediction.latency, strict=True)
            }
        # (with --workers, the whole proxy's figures, from every worker's last published ones)
        snapshot, ab = self.stats.scrape()
        return Figures(snapshot, ab, histograms, arm_latency, self.alerts)

    def health(self) -> dict[str, Any]:
        """``/healthz``: the upstream's status, and the tier's and the engine's."""
        out: dict[str, Any] = {"upstream": self.stats.upstream_status}
        if self.tier is not None:
            out["hot_tier_active"] = bool(self.tier.active)
        if self.prediction is not None:
            out["engine_up"] = bool(self.prediction.ready)
        return out

    async def prefetch(self, keys: list[bytes], db: int = 0) -> int:
        """Read keys into the hot tier ahead of demand; returns how many were inserted."""
        if self.filler is None:
            return 0
        return await self.filler.prefetch(keys, db)

    async def _publish_loop(self) -> None:
        """With --workers: this worker's figures, for the others to sum (proxy.workers)."""
        from proxy.workers import PUBLISH_EVERY

        while True:
            try:
                self.stats.peers.publish(self.stats.published())
            except OSError as exc:
                log.warning("cannot write this worker's figures", error=str(exc))
            await asyncio.sleep(PUBLISH_EVERY)

    async def _timeout_loop(self) -> None:
        """Fail requests whose reply is overdue. One sweep every 100 ms, not a timer per request."""
        timeout = self.settings.command_timeout
        while True:
            await asyncio.sleep(0.1)
            now = time.perf_counter()
            for client in list(self.clients):
                client.check_timeout(now, timeout)

    async def _look_loop(self, every: float = 1.0) -> None:
        """Once a second, one look at the figures: the alerts judge it, the dashboard keeps it."""
        while True:
            await asyncio.sleep(every)
            figures = self.figures()
            if self.admin is not None or self.run_dir is not None:
                sample = self.history.add(time.time(), figures.snapshot, figures.ab, figures.alerts)
                if self.run_dir is not None:
                    self.run_dir.add(sample, figures)
            if self.alerts is None:
                continue
            started, stopped = self.alerts.evaluate(figures.snapshot, figures.ab)
            for f in started:
                log.warning(
                    "alert firing", alert=f.rule, arm=f.arm, value=round(f.value, 4), threshold=f.threshold
                )
            for f in stopped:
                log.info(
                    "alert resolved", alert=f.rule, arm=f.arm, lasted=round(self.alerts.clock() - f.since, 1)
                )

    async def _health_loop(self) -> None:
        up = self.upstream
        prelude = b""
        if up.password:
            prelude = encode_command(["AUTH", up.username or "default", up.password])
        while True:
            status = "down"
            writer = None
            try:
                conn = self.opener.open_stream()
                async with asyncio.timeout(self.settings.connect_timeout):
                    reader, writer = await conn
                    writer.write(prelude + encode_command(["PING"]))
                    if prelude:
                        await reader.readline()
                    line = await reader.readline()
                status = "up" if line.startswith(b"+PONG") else "error"
            except (TimeoutError, OSError):
                status = "down"
            finally:
                if writer is not None:
                    writer.close()
            if status != self.stats.upstream_status:
                log.info("upstream status", status=status, upstream=up.display())
            self.stats.upstream_status = status
            await asyncio.sleep(self.settings.health_interval)


def _both(first: AccessSink, second: AccessSink) -> AccessSink:
    def sink(stream: int, db: int, keys: Sequence[bytes], hit: bool) -> None:
        first(stream, db, keys, hit)
        second(stream, db, keys, hit)

    return sink


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed, the default loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]
