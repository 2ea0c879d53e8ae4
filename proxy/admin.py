"""The admin HTTP listener: ``/metrics`` for Prometheus, ``/healthz`` for a load balancer or an
orchestrator, and ``/dashboard`` for a person (its history at ``/api/history``), served by aiohttp
on the proxy's own event loop, on its own address (``admin`` setting, loopback by default, off
unless set).

A scrape reads the proxy's figures once (``proxy.metrics``), so the request path pays nothing for
it; the process's own figures (resident memory, open file descriptors, CPU seconds, garbage
collections) come from ``prometheus_client``'s standard collectors.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from proxy.dashboard import PAGE, plotly_js
from proxy.history import History
from proxy.metrics import Figures, ProxyCollector

log = structlog.get_logger("predis.admin")


# What a load balancer and a browser fetch without the token: the health check, and the public
# plotly.js library the dashboard page loads.
OPEN_PATHS = frozenset({"/healthz", "/static/plotly.min.js"})


class AdminListener:
    def __init__(
        self,
        host: str,
        port: int,
        read: Callable[[], Figures],
        health: Callable[[], dict[str, Any]],
        token: str = "",
    ) -> None:
        """``read``: the figures of a scrape; ``health``: ``{"upstream": "up"|"down"|...}`` and
        anything else worth a glance (200 while the upstream is up, 503 otherwise); ``token``: the
        bearer token every page but /healthz and the plotly library asks for (empty: none)."""
        self.host, self.port = host, port
        self.token = token
        self.refused = 0
        self.health = health
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ProxyCollector(read))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.read = read
        self.runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None
        self.scrapes = 0
        self.history = History()  # (the server adds a sample a second)
        # With --workers: every worker listens on the same port (the kernel spreads the scrapes),
        # each answering with the whole proxy's figures.
        self.reuse_port = False

    @web.middleware
    async def _check_token(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.token and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            given = given[7:] if given.startswith("Bearer ") else request.query.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                self.refused += 1
                raise web.HTTPUnauthorized(
                    text="this admin listener needs its token: Authorization: Bearer TOKEN (or ?token=TOKEN)\n",
                    headers={"WWW-Authenticate": 'Bearer realm="predis"'},
                )
        return await handler(request)

    async def start(self) -> tuple[str, int]:
        app = web.Application(middlewares=[self._check_token])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/", self._index)
        app.router.add_get("/dashboard", self._dashboard)
        app.router.add_get("/api/history", self._history)
        app.router.add_get("/static/plotly.min.js", self._plotly)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, self.host, self.port, reuse_address=True, reuse_port=self.reuse_port or None
        )
        await site.start()
        server = site._server  # (aiohttp keeps the asyncio server there; the bound port is on it)
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname() if sockets else (self.host, self.port)
        self.address = (bound[0], bound[1])
        log.info(
            "admin listening",
            host=self.address[0],
            port=self.address[1],
            paths="/metrics /healthz /dashboard",
        )
        return self.address

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        state = self.health()
        return web.json_response(state, status=200 if state.get("upstream") == "up" else 503)

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(
            text="Predis admin listener: /metrics (Prometheus), /healthz (200 while the upstream is up), "
            "/dashboard\n"
        )

    async def _dashboard(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def _history(self, request: web.Request) -> web.Response:
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="since must be a number (seconds since the epoch)") from None
        return web.json_response(self.history.since(since))

    async def _plotly(self, request: web.Request) -> web.StreamResponse:
        path = plotly_js()
        if path is None:
            raise web.HTTPNotFound(text="the dashboard needs the plotly package (pip install plotly)")
        return web.FileResponse(path, headers={"Cache-Control": "max-age=86400"})
