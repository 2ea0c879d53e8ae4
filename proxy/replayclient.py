"""A lean asyncio Redis connection for ``predis replay --client hiredis``: commands packed and
replies parsed by hiredis, one asyncio protocol per connection, nothing else per request.

redis-py's asyncio client (the replay's default) does much more per command (its connection
pool, retries, timeouts and event hooks); on a 2-core machine its own queue became most of the
latency the replay reported (bench/RESULTS.md, "The replay client as the load"). This leaves the
cores to the proxy under test at rates where redis-py would be the bottleneck. It speaks just what
the replay sends (GET, SET, DEL, one at a time per stream, several streams may share a connection:
replies come back in order), and raises redis-py's exceptions, so the replay treats both clients
alike.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"protocol error: {exc}"))
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is False:
                return
            if self.waiting:
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection lost: {exc or 'closed by the server'}"))

    def _fail(self, exc: Exception) -> None:
        self.lost = exc
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(exc)


class HiredisConnection:
    """One connection, opened at its first command; ``get``, ``set`` and ``delete`` as redis-py's."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._proto: _Protocol | None = None
        self._opening = asyncio.Lock()  # (streams sharing the connection wait on the one opening)

    async def _connection(self) -> _Protocol:
        if self._proto is not None and self._proto.lost is None:
            return self._proto
        async with self._opening:
            if self._proto is None or self._proto.lost is not None:
                self._proto = await self._open()
            return self._proto

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(_Protocol, self.host, self.port), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return proto

    async def execute(self, *args: str | bytes) -> Any:
        proto = await self._connection()
        assert proto.transport is not None
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.waiting.append(waiter)
        proto.transport.write(hiredis.pack_command(args))  # type: ignore[arg-type]  # (its stub: one argument)
        try:
            reply = await asyncio.wait_for(waiter, self.timeout)
        except TimeoutError:
            # (a reply now owed to this waiter would go to the next one: the connection is dropped)
            proto.transport.close()
            raise RedisConnectionError(f"no reply within {self.timeout} s") from None
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def get(self, key: str) -> Any:
        return await self.execute("GET", key)

    async def set(self, key: str, value: bytes) -> Any:
        return await self.execute("SET", key, value)

    async def delete(self, key: str) -> Any:
        return await self.execute("DEL", key)

    async def aclose(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
