"""The listening server: accepts clients, opens their upstream connections, runs the housekeeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from proxy.config import Settings, UpstreamAddress, parse_upstream
from proxy.connection import ClientConnection
from proxy.stats import Stats

log = structlog.get_logger("predis.server")


class ProxyServer:
    def __init__(self, settings: Settings, stats: Stats | None = None) -> None:
        if not settings.upstream:
            raise ValueError("ProxyServer needs an upstream URL; the CLI starts an embedded Redis")
        self.settings = settings
        self.upstream: UpstreamAddress = parse_upstream(settings.upstream)
        self.stats = stats or Stats()
        self.stats.upstream_address = self.upstream.display()
        self.clients: set[ClientConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.address: tuple[str, int] | None = None

    async def open_upstream(self, factory: Callable[[], Any]) -> tuple[asyncio.BaseTransport, Any]:
        loop = asyncio.get_running_loop()
        up = self.upstream
        if up.unix_path:
            return await loop.create_unix_connection(factory, up.unix_path)
        return await loop.create_connection(factory, up.host, up.port)

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), self.settings.host, self.settings.port, backlog=1024
        )
        sock = self._server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        self._tasks = [
            loop.create_task(self._timeout_loop()),
            loop.create_task(self._health_loop()),
        ]
        log.info(
            "predis listening",
            host=self.address[0],
            port=self.address[1],
            upstream=self.upstream.display(),
        )
        return self.address

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.close()
            client.close_upstream()
        if self._server is not None:
            await self._server.wait_closed()

    async def _timeout_loop(self) -> None:
        """Fail requests whose reply is overdue. One sweep every 100 ms, not a timer per request."""
        timeout = self.settings.command_timeout
        while True:
            await asyncio.sleep(0.1)
            now = time.perf_counter()
            for client in list(self.clients):
                client.check_timeout(now, timeout)

    async def _health_loop(self) -> None:
        up = self.upstream
        prelude = b""
        if up.password:
            prelude = b"AUTH %s %s\r\n" % ((up.username or "default").encode(), up.password.encode())
        while True:
            status = "down"
            writer = None
            try:
                if up.unix_path:
                    conn = asyncio.open_unix_connection(up.unix_path)
                else:
                    conn = asyncio.open_connection(up.host, up.port)
                reader, writer = await asyncio.wait_for(conn, self.settings.connect_timeout)
                writer.write(prelude + b"PING\r\n")
                if prelude:
                    await asyncio.wait_for(reader.readline(), self.settings.connect_timeout)
                line = await asyncio.wait_for(reader.readline(), self.settings.connect_timeout)
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


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed, the default loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]
