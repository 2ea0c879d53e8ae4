"""A byte-copying TCP proxy with no parsing at all: the floor any Redis proxy in Python stands on.

    python -m bench.copyproxy LISTEN_PORT UPSTREAM_PORT

Used by bench/loadtest.py as a reference beside Predis, so the cost of Predis's parsing and
bookkeeping shows as the gap between the two, measured in the same run.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from proxy.server import new_event_loop


class Pipe(asyncio.Protocol):
    def __init__(self) -> None:
        self.peer: Pipe | None = None
        self.transport: asyncio.Transport | None = None
        self.buffer: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.buffer.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class Client(Pipe):
    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(Pipe, "127.0.0.1", self.upstream_port)
        upstream.peer, self.peer = self, upstream
        for chunk in self.buffer:
            upstream.transport.write(chunk)
        self.buffer.clear()


def serve(factory: Callable[[], asyncio.Protocol], port: int) -> None:
    """Run a reference server on 127.0.0.1:``port`` until killed (also bench/dictserver.py)."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", port))
    try:
        loop.run_forever()
    finally:
        server.close()


def main() -> None:
    listen, upstream = int(sys.argv[1]), int(sys.argv[2])
    serve(lambda: Client(upstream), listen)


if __name__ == "__main__":
    main()
