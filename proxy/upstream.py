"""Connections to the upstream Redis: how they are opened, and one client's own connection's life
(opened on the first request, requests queued until it is up, lost or dropped).

A client's own upstream connection (1:1: with ``upstream_pool`` 0, or once proxy.multiplex pins a
client to one), so every piece of Redis connection state
(AUTH, SELECT, HELLO 3, MULTI/WATCH, subscriptions, CLIENT settings, blocking commands) behaves
exactly as it would against Redis directly. What a new connection must replay to restore that
state is the session's (``Session.prelude``); what happens to the replies owed when one is lost
is the connection's.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any, cast

import structlog

from proxy.config import Settings, UpstreamAddress
from proxy.stats import Stats

log = structlog.get_logger("predis.upstream")

# A client's upstream connection's states.
DOWN, CONNECTING, UP = 0, 1, 2


def discard_unsent(transport: asyncio.BaseTransport) -> None:
    """Make closing ``transport``'s TCP socket drop what the kernel has not sent yet (SO_LINGER 0:
    a reset) rather than deliver it later; a Unix socket's bytes are delivered at once."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:  # (already closed)
            pass


class UpstreamOpener:
    """Opens connections to the upstream Redis (TCP or a Unix socket), for the clients' links and
    the proxy's own connections (the filler, the invalidation channel)."""

    def __init__(self, settings: Settings, address: UpstreamAddress) -> None:
        self.settings = settings
        self.address = address
        self.ssl: ssl.SSLContext | None = None  # a rediss:// upstream's (proxy.tls)
        if address.tls:
            from proxy.tls import client_context

            self.ssl = client_context(settings)

    async def open(self, factory: Callable[[], Any]) -> tuple[asyncio.BaseTransport, Any]:
        loop = asyncio.get_running_loop()
        up = self.address
        if up.unix_path:
            return await loop.create_unix_connection(factory, up.unix_path)
        if self.ssl is not None:
            return await loop.create_connection(
                factory, up.host, up.port, ssl=self.ssl, server_hostname=up.host
            )
        return await loop.create_connection(factory, up.host, up.port)

    async def open_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The same connection as asyncio streams (the health check's)."""
        up = self.address
        if up.unix_path:
            return await asyncio.open_unix_connection(up.unix_path)
        if self.ssl is not None:
            return await asyncio.open_connection(up.host, up.port, ssl=self.ssl, server_hostname=up.host)
        return await asyncio.open_connection(up.host, up.port)

    def identity(self) -> tuple[str, str] | None:
        """The upstream URL's credentials, as (user, password), or None."""
        up = self.address
        return ((up.username or "default"), up.password) if up.password else None


class UpstreamProtocol(asyncio.Protocol):
    """The transport's side of one client's upstream connection: every event goes to the client
    connection's handlers, which are told which connection it came from (a lost one's late
    events are ignored)."""

    __slots__ = ("transport", "on_data", "on_lost", "on_full")

    def __init__(
        self,
        on_data: Callable[[UpstreamProtocol, bytes], None],
        on_lost: Callable[[UpstreamProtocol, Exception | None], None],
        on_full: Callable[[str, bool], None],
    ) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_data = on_data
        self.on_lost = on_lost
        self.on_full = on_full

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.on_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost(self, exc)

    def pause_writing(self) -> None:
        self.on_full("upstream_full", True)

    def resume_writing(self) -> None:
        self.on_full("upstream_full", False)


class UpstreamLink:
    """One client's upstream connection: opened by the first ``send``; what is sent while it opens
    waits in ``outbox`` and goes out, after the session's prelude, once it is up
    (``on_connected``); a failed open is reported to ``on_failed`` with its reason."""

    def __init__(
        self,
        opener: UpstreamOpener,
        stats: Stats,
        make_protocol: Callable[[], UpstreamProtocol],
        on_connected: Callable[[UpstreamProtocol, bytes], None],
        on_failed: Callable[[str], None],
    ) -> None:
        self.opener = opener
        self.stats = stats
        self.make_protocol = make_protocol
        self.on_connected = on_connected  # (the connection, what waited in the outbox)
        self.on_failed = on_failed
        self.proto: UpstreamProtocol | None = None
        self.state = DOWN
        self.outbox: list[bytes] = []  # requests sent while the connection opens
        self.closed = False  # the client is gone: a connection that opens now is closed at once
        self.peer = ""

    def send(self, data: bytes, frames: int = 0) -> None:
        """``frames``: the replies ``data`` asks for (a pool's concern; unused here)."""
        if self.state == UP:
            self.proto.transport.write(data)  # type: ignore[union-attr]
            return
        self.outbox.append(data)
        if self.state == DOWN:
            self.state = CONNECTING
            asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.opener.settings.connect_timeout):  # (not wait_for: 3.11 bug)
                _, proto = await self.opener.open(self.make_protocol)
        except (TimeoutError, OSError) as exc:
            self.state = DOWN
            self.outbox.clear()
            self.stats.upstream_errors += 1
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else (exc.strerror or str(exc))
            log.warning("upstream connect failed", peer=self.peer, error=reason)
            self.on_failed(reason)
            return
        if self.closed:
            if proto.transport is not None:
                proto.transport.close()
            return
        self.stats.upstream_connects += 1
        self.proto = proto
        self.state = UP
        waiting = b"".join(self.outbox)
        self.outbox.clear()
        self.on_connected(proto, waiting)

    def attach(self, proto: UpstreamProtocol) -> None:
        """Take ``proto`` (already connected) as the connection, with nothing to replay."""
        self.proto, self.state = proto, UP

    def lost(self, proto: UpstreamProtocol) -> bool:
        """The transport of ``proto`` closed: True if it was this link's current connection."""
        if proto is not self.proto:
            return False
        self.proto = None
        self.state = DOWN
        return True

    def drop(self) -> None:
        """Give up on the current connection (a timeout, garbage): reset, its late events ignored.

        Reset, not closed: a closed socket's unsent bytes stay in the kernel, which goes on
        retransmitting them, and a write the client was told had failed reached Redis seconds
        after a partition healed, over newer writes (a stale read in the history test).
        SO_LINGER 0 makes the kernel discard them and send a reset instead."""
        proto, self.proto = self.proto, None
        self.state = DOWN
        if proto is not None and proto.transport is not None:
            discard_unsent(proto.transport)
            proto.transport.abort()

    def release(self) -> None:
        """Close the current connection (nothing is owed on it); the next ``send`` opens another."""
        proto, self.proto = self.proto, None
        self.state = DOWN
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    def close(self) -> None:
        """The client is gone: close the connection (and any that is still opening)."""
        self.closed = True
        proto, self.proto = self.proto, None
        self.state = DOWN
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    def pause_reading(self, on: bool) -> None:
        transport = self.proto.transport if self.proto is not None else None
        if transport is not None and not transport.is_closing():
            if on:
                transport.pause_reading()
            else:
                transport.resume_reading()
