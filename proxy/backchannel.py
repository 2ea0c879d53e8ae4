"""The proxy's own connections to Redis, apart from its clients': the invalidation channel that keeps
the hot tier coherent, and the filler that reads values into it (demand fills and prefetches).

Filling: one connection per ACL identity (the upstream URL's user, or a user a client
authenticated as), so an entry carries the rights of the user whose reads filled it. Keys are
batched per event-loop turn into ``MGET`` plus one ``PTTL`` each; the tier's placeholders make any
invalidation that lands in between win.

Invalidation: the filler connections run ``CLIENT TRACKING ON REDIRECT <id>`` towards one RESP3
connection (``predis-tracking``). Redis then remembers every key a filler read, which is every key
that entered the tier, and reports it there when it changes, whoever changed it (other clients,
other proxies, expiry, eviction); a ``null`` message (FLUSHALL, FLUSHDB) flushes the tier. Only keys
the tier read are reported: BCAST mode (every write by anyone) halved Redis's own SET throughput in
a bench run. Until that connection is up the tier is inactive; when it drops, the tier is flushed,
the fillers are reconnected (their redirect pointed at the dead connection) and the tier stays
inactive until tracking is back.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import hiredis
import structlog

from common.errors import UpstreamError
from proxy.resp import as_str, encode_command
from proxy.upstream import UpstreamOpener

if TYPE_CHECKING:
    from prefetch.tier import HotTier

log = structlog.get_logger("predis.backchannel")

Identity = tuple[str, str] | None  # (user, password), or None: no AUTH


class _Group:
    """Waits for the replies of several pipelined commands at once: one future for all of them
    (a fill's MGET and PTTLs), instead of one future, and one callback, per reply."""

    __slots__ = ("future", "left", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] = []

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, reply: Any) -> None:
        self.replies.append(reply)
        self.left -= 1
        if not self.left:
            self.future.set_result(self.replies)

    def set_exception(self, exc: BaseException) -> None:
        self.future.set_exception(exc)


class RawConnection(asyncio.Protocol):
    """A minimal pipelined RESP client: replies resolve futures in order, pushes go to a callback."""

    def __init__(self, on_push: Callable[[Any], None] | None = None) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any] | _Group] = deque()
        self.db = 0  # the database the commands sent so far leave selected
        self.transport: asyncio.Transport | None = None
        self.on_push = on_push
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                if isinstance(reply, hiredis.PushNotification):
                    if self.on_push is not None:
                        self.on_push(list(reply))
                elif self.waiters:
                    waiter = self.waiters.popleft()
                    if not waiter.done():
                        waiter.set_result(reply)
        except (hiredis.ProtocolError, TypeError):  # (TypeError: a map hiredis cannot build)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamError("connection lost"))
        self.waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, *commands: list[bytes | str]) -> list[asyncio.Future[Any]]:
        if self.transport is None or self.transport.is_closing():
            raise UpstreamError("connection closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self.waiters.extend(futures)
        self.transport.write(b"".join(encode_command(c) for c in commands))
        return futures

    def send_group(self, *commands: list[bytes | str]) -> asyncio.Future[list[Any]]:
        """Send commands in one write; one future gets the list of all their replies."""
        if self.transport is None or self.transport.is_closing():
            raise UpstreamError("connection closed")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        group = _Group(future, len(commands))
        for _ in commands:
            self.waiters.append(group)
        self.transport.write(b"".join(encode_command(c) for c in commands))
        return future

    async def call(self, *command: bytes | str, timeout: float = 5.0) -> Any:
        (future,) = self.send(list(command))
        async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancellation
            reply = await future
        if isinstance(reply, hiredis.ReplyError):
            raise UpstreamError(f"{as_str(command[0])} failed: {reply}")
        return reply

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_raw(
    opener: UpstreamOpener,
    identity: Identity,
    on_push: Callable[[Any], None] | None = None,
    resp3: bool = False,
    name: str = "",
) -> RawConnection:
    settings = opener.settings
    async with asyncio.timeout(settings.connect_timeout):
        _, conn = await opener.open(lambda: RawConnection(on_push))
    conn = cast(RawConnection, conn)
    try:
        if resp3 or identity or name:
            hello: list[bytes | str] = ["HELLO", "3" if resp3 else "2"]
            if identity:
                hello += ["AUTH", identity[0], identity[1]]
            if name:
                hello += ["SETNAME", name]  # so operators (and tests) can find it in CLIENT LIST
            await conn.call(*hello, timeout=settings.connect_timeout)
    except BaseException:
        conn.close()
        raise
    return conn


class InvalidationChannel:
    """Keeps the invalidation connection up and the tier's ``active`` flag true only while it is."""

    def __init__(self, opener: UpstreamOpener, tier: HotTier) -> None:
        self.opener = opener
        self.tier = tier
        self.filler: Filler | None = None  # its connections' tracking redirects to this one
        self.conn: RawConnection | None = None
        self.connected_at = 0.0
        self.drops = 0
        self.client_id: int | None = None  # where the fillers redirect their invalidations

    async def run(self) -> None:
        identity: Identity = self.opener.identity()
        while True:
            try:
                conn = await open_raw(
                    self.opener, identity, on_push=self.on_push, resp3=True, name="predis-tracking"
                )
                self.client_id = int(await conn.call("CLIENT", "ID"))
            except (TimeoutError, OSError, UpstreamError) as exc:
                log.warning("invalidation channel unavailable; hot tier inactive", error=str(exc))
                await asyncio.sleep(self.opener.settings.health_interval)
                continue
            self.conn = conn
            self.connected_at = time.monotonic()
            if self.filler is not None:
                self.filler.reset()  # their tracking must redirect to this connection
            self.tier.flush()  # anything cached before tracking started cannot be trusted
            self.tier.active = True
            log.info("invalidation channel up; hot tier active")
            try:
                await conn.closed
            finally:
                self.tier.active = False
                self.tier.flush()
                self.conn = None
                self.client_id = None
                self.drops += 1
            log.warning("invalidation channel lost; hot tier flushed and inactive until it is back")
            await asyncio.sleep(min(0.1, self.opener.settings.health_interval))

    def on_push(self, push: list[Any]) -> None:
        if push and push[0] == b"message" and len(push) == 3 and push[1] == b"__redis__:invalidate":
            push = [b"invalidate", push[2]]  # the RESP2-style form of the same message
        if not push or push[0] != b"invalidate":
            return
        keys = push[1] if len(push) > 1 else None
        if keys is None:
            self.tier.flush()
        else:
            self.tier.invalidate(keys, source="tracking")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


REFRESH_DELAY = 0.05  # seconds a refresh may wait to join others


class Filler:
    """Reads keys into the tier on the proxy's own connections, one per ACL identity."""

    def __init__(self, opener: UpstreamOpener, tier: HotTier, channel: InvalidationChannel) -> None:
        self.opener = opener
        self.tier = tier
        self.channel = channel  # the connection its tracking redirects to
        self.conns: dict[Identity, RawConnection] = {}
        self.connecting: dict[Identity, asyncio.Task[RawConnection]] = {}
        # (identity, user, db, prefetched) -> keys waiting for this event-loop turn
        self.batches: dict[tuple[Identity, str, int, bool], list[bytes]] = {}
        self.scheduled = False
        # Refreshes of entries still being served wait up to REFRESH_DELAY and go in larger batches:
        # a fill's fixed cost (a task, a round trip) is most of its price for one key.
        self.later: dict[tuple[Identity, str, int, bool], list[bytes]] = {}
        self.later_scheduled = False
        self.tasks: set[asyncio.Task[int]] = set()
        self.errors = 0

    def request(
        self, db: int, keys: list[bytes], identity: Identity, user: str, prefetched: bool = False
    ) -> None:
        """Queue keys for reading into the tier (no-op for keys already being read)."""
        self.batches.setdefault((identity, user, db, prefetched), []).extend(keys)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def request_later(self, db: int, keys: list[bytes], identity: Identity, user: str) -> None:
        """``request``, for keys whose entries are still valid (a refresh): batched for a while."""
        self.later.setdefault((identity, user, db, False), []).extend(keys)
        if not self.later_scheduled:
            self.later_scheduled = True
            asyncio.get_running_loop().call_later(REFRESH_DELAY, self._flush_later)

    def _flush_later(self) -> None:
        self.later_scheduled = False
        batches, self.later = self.later, {}
        self._start(batches)

    def _flush(self) -> None:
        self.scheduled = False
        batches, self.batches = self.batches, {}
        self._start(batches)

    def _start(self, batches: dict[tuple[Identity, str, int, bool], list[bytes]]) -> None:
        for (identity, user, db, prefetched), keys in batches.items():
            task = asyncio.get_running_loop().create_task(self._fill(identity, user, db, keys, prefetched))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def prefetch(self, keys: list[bytes], db: int = 0) -> int:
        """Read keys into the tier as the upstream URL's user; returns how many were inserted."""
        identity: Identity = self.opener.identity()
        return await self._fill(
            identity, self.opener.address.username or "default", db, list(dict.fromkeys(keys)), True
        )

    def reset(self) -> None:
        """Drop every filler connection: the next fill opens one tracked towards the current
        invalidation connection."""
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()

    async def _open(self, identity: Identity) -> RawConnection:
        channel = self.channel
        if channel.client_id is None:
            raise UpstreamError("no invalidation connection to redirect tracking to")
        conn = await open_raw(self.opener, identity, name="predis-filler")
        try:
            await conn.call("CLIENT", "TRACKING", "ON", "REDIRECT", str(channel.client_id))
        except BaseException:
            conn.close()
            raise
        return conn

    async def _connection(self, identity: Identity) -> RawConnection:
        conn = self.conns.get(identity)
        if conn is not None and not conn.closed.done():
            return conn
        task = self.connecting.get(identity)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open(identity))
            self.connecting[identity] = task
        try:
            conn = await task
        finally:
            self.connecting.pop(identity, None)
        self.conns[identity] = conn
        return conn

    async def _fill(self, identity: Identity, user: str, db: int, keys: list[bytes], prefetched: bool) -> int:
        tier = self.tier
        tokens = {}
        for key in dict.fromkeys(keys):
            token = tier.begin_fill(db, key)
            if token is not None:
                tokens[key] = token
        if not tokens:
            return 0
        wanted = list(tokens)
        sent_at = tier.clock()
        conn: RawConnection | None = None
        selects = False
        try:
            conn = await self._connection(identity)
            commands: list[list[bytes | str]] = [["MGET", *wanted]]
            commands += [["PTTL", k] for k in wanted]
            selects = conn.db != db
            if selects:  # (the filler's connection stays in the last db it read)
                commands.insert(0, ["SELECT", str(db)])
                conn.db = db
            sent_at = tier.clock()
            group = conn.send_group(*commands)
            async with asyncio.timeout(self.opener.settings.command_timeout):
                replies = await group
            if selects:
                if isinstance(replies[0], hiredis.ReplyError):
                    conn.db = -1  # unknown now: select again next time
                    raise UpstreamError(f"SELECT {db} failed: {replies[0]}")
                del replies[0]
        except (TimeoutError, OSError, UpstreamError) as exc:
            if conn is not None and selects:
                conn.db = -1
            self.errors += 1
            log.warning("tier fill failed", error=str(exc), keys=len(wanted))
            for key, token in tokens.items():
                tier.abandon_fill(db, key, token)
            return 0
        values, ttls = replies[0], replies[1:]
        if isinstance(values, hiredis.ReplyError):
            for key, token in tokens.items():
                tier.abandon_fill(db, key, token)
            return 0
        inserted = 0
        for key, value, ttl in zip(wanted, values, ttls, strict=True):
            if isinstance(ttl, hiredis.ReplyError) or not isinstance(value, (bytes, type(None))):
                tier.abandon_fill(db, key, tokens[key])
                continue
            inserted += tier.complete_fill(db, key, tokens[key], value, int(ttl), sent_at, user, prefetched)
        return inserted

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
