"""Many clients over a few upstream connections (``upstream_pool`` N > 0), as twemproxy and
connection poolers do.

Requests of clients in Redis's default connection state (the upstream URL's user and database,
RESP2, no name, no transaction, subscription, tracking or CLIENT REPLY mode) go over a small pool
of shared connections: what all clients sent in one event-loop turn goes to Redis in one write,
and Redis's replies, read in bulk, are cut at frame boundaries and handed to each client in the
order its requests went (``PooledConnection``). A client keeps to one pooled connection, so its
replies cannot overtake each other.

A client about to change its connection's state (``needs_pin``: AUTH, SELECT, HELLO, MULTI,
WATCH, SUBSCRIBE, blocking commands, CLIENT..., MONITOR, SYNC) is pinned: what it sends from that
command on waits until every reply it is owed on the pool is in, then goes over a connection of
its own (the 1:1 ``UpstreamLink``, which replays its state on a reconnect). Once its state is the
default again and nothing is owed (after EXEC, say), it returns to the pool (``MuxLink``).

Clients in RESP3 (HELLO 3: redis-py 8's default) have pooled connections of their own protocol;
``HELLO 2|3`` alone moves a client between the two. ``CLIENT SETINFO`` and ``CLIENT
MAINT_NOTIFICATIONS``, which redis-py 8 sends on every connect, go over the pool (pinning on them
would give every such client a connection of its own); the session replays SETINFO on a
connection of the client's own.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from proxy import commands
from proxy.resp import encode_command
from proxy.scanner import PUSH, ReplyScanner
from proxy.session import Session
from proxy.stats import Stats
from proxy.upstream import CONNECTING, DOWN, UP, UpstreamLink, UpstreamOpener, discard_unsent

log = structlog.get_logger("predis.multiplex")

# A client with more replies than this owed on the pool at once is pinned for good: a deep
# pipeline gains little from sharing a connection (it amortizes its round trips itself), and on a
# connection of its own a client that does not read its replies is slowed by backpressure; on a
# shared one it could only be buffered or disconnected.
MAX_POOLED_PIPELINE = 8
# So is a client that sends, or is sent, more than this many bytes at once: on a shared connection
# every other client's requests and replies would wait behind a 32 MiB value.
MAX_POOLED_BYTES = 64 * 1024

# Special commands a pooled client may send over the pool: they change no connection state.
_POOL_SAFE = frozenset({b"INFO", b"PREDIS", b"QUIT"})
# CLIENT subcommands redis-py (8.x) and others send on every connect: SETINFO names the library in
# CLIENT LIST; MAINT_NOTIFICATIONS asks for maintenance pushes (an error from Redis versions that
# lack it; where they exist, a push on a pooled connection goes to a RESP3 client sharing it).
_POOL_SAFE_CLIENT = frozenset({b"SETINFO", b"MAINT_NOTIFICATIONS"})


# Pinning on these lasts while the session says the client's state is not the default (a
# transaction, a subscription, a database, a user, a protocol, a reply mode, tracking, a name, a
# blocking command in flight); on any other special command it lasts for good (CLIENT ID's id,
# CLIENT NO-EVICT, READONLY... are state the session does not follow).
_REVERSIBLE = (
    frozenset({b"MULTI", b"EXEC", b"DISCARD", b"WATCH", b"UNWATCH", b"SELECT", b"AUTH", b"HELLO", b"RESET"})
    | commands.BLOCKING
    | commands.MAYBE_BLOCKING
    | commands.SUBSCRIBE
    | commands.UNSUBSCRIBE
)
_REVERSIBLE_CLIENT = frozenset({b"REPLY", b"TRACKING", b"SETNAME", b"GETNAME", b"INFO", b"LIST"})

NO_PIN, PIN, PIN_FOR_GOOD = 0, 1, 2


def needs_pin(name: bytes, args: list[bytes]) -> int:
    """Whether a special command (``proxy.session.SPECIAL``) needs the client's own connection:
    NO_PIN, PIN (until its state is the default again) or PIN_FOR_GOOD."""
    if name in _POOL_SAFE:
        return NO_PIN
    if name in commands.MAYBE_BLOCKING and not commands.is_blocking(name, args):
        return NO_PIN
    if name == b"SCRIPT":  # (SCRIPT DEBUG puts the connection's next EVAL under the debugger)
        return PIN_FOR_GOOD if len(args) > 1 and args[1].upper() == b"DEBUG" else NO_PIN
    if name == b"CLIENT":
        sub = args[1].upper() if len(args) > 1 else b""
        if sub in _POOL_SAFE_CLIENT:
            return NO_PIN
        return PIN if sub in _REVERSIBLE_CLIENT else PIN_FOR_GOOD
    return PIN if name in _REVERSIBLE else PIN_FOR_GOOD


class PooledConnection(asyncio.Protocol):
    """One shared upstream connection: requests go out in one write per event-loop turn; reply
    frames go back to the clients in the order their requests were written (``routes``)."""

    def __init__(self, pool: UpstreamPool, resp3: bool) -> None:
        self.pool = pool
        self.resp3 = resp3  # its protocol (HELLO 3 in its prelude)
        self.transport: asyncio.Transport | None = None
        self.state = DOWN
        self.outbox: list[bytes] = []  # written at the end of this turn (or once connected)
        self.flush_scheduled = False
        # [MuxLink | None (replies to discard), frames still owed]
        self.routes: deque[list[Any]] = deque()
        self.scanner = ReplyScanner()
        self.paused: set[MuxLink] = set()  # clients whose reading is paused while Redis's buffer is full
        self.full = False  # between pause_writing and resume_writing

    # ------------------------------------------------------------------ requests

    def send(self, link: MuxLink | None, data: bytes, frames: int) -> None:
        if frames:
            routes = self.routes
            if routes and routes[-1][0] is link:
                routes[-1][1] += frames
            else:
                routes.append([link, frames])
        self.outbox.append(data)
        if self.full and link is not None and link not in self.paused:
            self.paused.add(link)  # (a client that sends while the connection is full waits too)
            link.set_paused(True)
        if self.state == UP:
            if not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
        elif self.state == DOWN:
            self.state = CONNECTING
            asyncio.get_running_loop().create_task(self._connect())

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.outbox and self.transport is not None and self.state == UP:
            data = b"".join(self.outbox)
            self.outbox.clear()
            self.transport.write(data)

    async def _connect(self) -> None:
        pool = self.pool
        try:
            async with asyncio.timeout(pool.opener.settings.connect_timeout):
                await pool.opener.open(lambda: self)
        except (TimeoutError, OSError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            pool.stats.upstream_errors += 1
            log.warning("pooled upstream connect failed", error=reason)
            self._fail(lambda link: link.failed(self, reason))
            return
        if self.state != CONNECTING:  # (reset while it opened)
            if self.transport is not None:
                self.transport.abort()
            return
        pool.stats.upstream_connects += 1
        prelude = pool.preludes[self.resp3]
        self.routes.appendleft([None, len(prelude)])
        self.outbox[:0] = prelude
        self.state = UP
        self.flush()

    # ------------------------------------------------------------------ replies

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            ends = self.scanner.feed(data)
        except ValueError as exc:
            self._desync(f"unparseable reply from upstream: {exc}")
            return
        routes = self.routes
        start = 0
        done = 0  # frames finished in the slice since ``start``
        for end, kind in ends:
            if kind == PUSH:
                continue  # (answers no request: it goes with the frames around it)
            if not routes:
                self._desync("a reply no request was waiting for")
                return
            route = routes[0]
            route[1] -= 1
            done += 1
            if not route[1]:
                routes.popleft()
                link = route[0]
                if link is not None:
                    link.deliver(self, data[start:end], done, True)
                start = end
                done = 0
        if start < len(data):
            if not routes:
                if self.scanner.at_boundary:
                    return  # (push frames between requests: nobody to give them to)
                self._desync("a reply no request was waiting for")
                return
            link = routes[0][0]
            if link is not None:
                link.deliver(self, data[start:] if start else data, done, self.scanner.at_boundary)

    def _desync(self, reason: str) -> None:
        log.error("pooled upstream connection out of step, resetting it", error=reason)
        self.reset()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == DOWN:
            return
        self.pool.stats.upstream_errors += 1
        log.warning("pooled upstream connection lost", error=str(exc) if exc else "EOF")
        self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        self._fail(lambda link: link.lost_pooled(self, exc))

    def _fail(self, tell: Callable[[MuxLink], None]) -> None:
        """Down: every client owed a reply here is told (once), and the pool forgets it."""
        self.state = DOWN
        self.transport = None
        self.outbox.clear()
        links = {id(r[0]): r[0] for r in self.routes if r[0] is not None}
        self.routes.clear()
        self.scanner = ReplyScanner()
        self.pool.forget(self)
        self.full = False
        for link in self.paused:
            link.set_paused(False)
        self.paused.clear()
        for link in links.values():
            tell(link)

    def reset(self) -> None:
        """Give up on this connection (a timeout, garbage): reset, not closed, so no request in
        it reaches Redis later (see ``UpstreamLink.drop``); every client owed a reply is told."""
        transport = self.transport
        if transport is not None:
            discard_unsent(transport)
            transport.abort()
        if self.state != DOWN:
            self._lost(None)

    def close(self) -> None:
        self.state = DOWN
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------ backpressure

    def pause_writing(self) -> None:
        self.full = True
        for link in {id(r[0]): r[0] for r in self.routes if r[0] is not None}.values():
            if link not in self.paused:
                self.paused.add(link)
                link.set_paused(True)

    def resume_writing(self) -> None:
        self.full = False
        for link in self.paused:
            link.set_paused(False)
        self.paused.clear()


class UpstreamPool:
    """The shared connections of one proxy (the upstream URL's user and database): ``size`` for
    RESP2 clients and ``size`` for RESP3 ones (HELLO 3, the default of redis-py 8), opened when
    first needed."""

    def __init__(self, opener: UpstreamOpener, stats: Stats, size: int) -> None:
        self.opener = opener
        self.stats = stats
        self.size = size
        self.conns: dict[bool, list[PooledConnection | None]] = {False: [None] * size, True: [None] * size}
        self.pinned = 0  # clients on a connection of their own now
        name = encode_command([b"CLIENT", b"SETNAME", b"predis-pool"])
        resp2, resp3 = Session(opener.address, stats), Session(opener.address, stats)
        resp3.replay_resp3 = True
        self.preludes = {False: resp2.prelude() + [name], True: resp3.prelude() + [name]}

    def pick(self, stream: int, resp3: bool) -> PooledConnection:
        conns = self.conns[resp3]
        i = stream % self.size
        conn = conns[i]
        if conn is None:
            conn = conns[i] = PooledConnection(self, resp3)
        return conn

    def forget(self, conn: PooledConnection) -> None:
        conns = self.conns[conn.resp3]
        for i, held in enumerate(conns):
            if held is conn:
                conns[i] = None

    def figures(self) -> dict[str, Any]:
        """The ``upstream_pool_*`` figures of INFO's ``# Predis`` section."""
        return {
            "size": self.size,
            "connections": sum(
                1 for c in self.conns[False] + self.conns[True] if c is not None and c.state == UP
            ),
            "pinned_clients": self.pinned,
        }

    def close(self) -> None:
        for conn in self.conns[False] + self.conns[True]:
            if conn is not None:
                conn.close()
        self.conns = {False: [None] * self.size, True: [None] * self.size}


class MuxLink:
    """A client's side of the pool, with the same face as ``UpstreamLink`` (which it holds, for
    when the client is pinned): the client connection does not know which it talks to.

    Moves (each waits until nothing is owed where the client was, holding what it sends
    meanwhile): to the other protocol's pooled connections on ``HELLO 2|3``; to its own
    connection (pinned) on a command that changes its connection's state; back to the pool once
    its state is the default again."""

    def __init__(
        self,
        pool: UpstreamPool,
        dedicated: UpstreamLink,
        stream: int,
        on_data: Callable[[Any, bytes, int, bool], None],
        on_lost: Callable[[Any, Exception | None], None],
        on_failed: Callable[[str], None],
        on_full: Callable[[str, bool], None],
        can_pool: Callable[[], bool],
        wants_resp3: Callable[[], bool],
    ) -> None:
        self.pool = pool
        self.dedicated = dedicated
        self.stream = stream
        self.on_data = on_data
        self.on_lost = on_lost
        self.on_failed = on_failed
        self.on_full = on_full
        self.can_pool = can_pool  # the client's state is the default and it is owed nothing
        self.wants_resp3 = wants_resp3  # the protocol the client speaks
        self.resp3 = False  # which of the pool's connections it uses
        self.pooled: PooledConnection | None = None  # the one it is owed replies on
        self.owed = 0  # reply frames owed on ``pooled``
        self.pinned = False
        self.deep = False  # pinned for good (a deep pipeline, state the session does not follow)
        # Requests (and their reply counts) held while a move waits for the pool to owe nothing;
        # ``moving_to``: the protocol of the pooled connections they go to (None: pinning).
        self.held: list[tuple[bytes, int]] | None = None
        self.moving_to: bool | None = None
        # The next connection of its own continues the client's reply stream where the pool
        # left it (the client's state the default, but for the protocol: see resp3).
        self.fresh_pin = False
        self.kept_resp3 = False  # the protocol of its own connection, kept open after a pin
        self.closed = False
        self.peer = ""

    @property
    def proto(self) -> Any:
        return self.dedicated.proto if self.pinned else self.pooled

    @property
    def state(self) -> int:
        if self.pinned:
            return self.dedicated.state
        if self.held is not None:
            return CONNECTING
        return UP

    # ------------------------------------------------------------------ requests

    def send(self, data: bytes, frames: int = 0) -> None:
        if self.pinned:
            self.dedicated.send(data)
            return
        if self.held is None and (self.owed + frames > MAX_POOLED_PIPELINE or len(data) > MAX_POOLED_BYTES):
            self.deep = True
            self.pin()
            if self.pinned:
                self.dedicated.send(data)
                return
        if self.held is not None:
            self.held.append((data, frames))
            return
        conn = self.pooled
        if conn is None or conn.state == DOWN and not self.owed:
            conn = self.pooled = self.pool.pick(self.stream, self.resp3)
        self.owed += frames
        conn.send(self, data, frames)

    def before_special(self, name: bytes, args: list[bytes]) -> None:
        """A special command is about to be sent: move the client first if it must."""
        if self.pinned:
            return
        if _is_plain_hello(args) and self.held is None:
            if (args[1] == b"3") != self.resp3:
                self._move(args[1] == b"3")
            return
        # (A HELLO while a move waits: it could undo the protocol of the connections moved to,
        # which others share; the client gets one of its own instead.)
        kind = PIN if _is_plain_hello(args) else needs_pin(name, args)
        if kind == PIN_FOR_GOOD:
            self.deep = True
        if kind == NO_PIN or self.held is not None and self.moving_to is None:
            return
        if self.held is not None:  # (moving: what is held goes to a connection of its own instead)
            self.moving_to = None
            self.pool.pinned += 1
            return
        self.pin()

    def can_stream(self) -> bool:
        """Whether a request sent in pieces would reach a connection of the client's own (it pins
        for good on its size): not while a move to the other protocol's shared connections
        waits, which would take the pieces there."""
        return self.pinned or self.held is None or self.moving_to is None

    def pin(self) -> None:
        """From the next request on, this client has a connection of its own."""
        if self.pinned or self.held is not None:
            return
        self.pool.pinned += 1
        if self.owed:
            self.held = []
            self.moving_to = None
        else:
            self._own_connection()
            self.pinned = True

    def _own_connection(self) -> None:
        """Pinning begins: the connection of its own kept from the last time is used if it is
        still up and speaks the protocol the client spoke on the pool (a transaction per
        pipeline, as redis-py sends, must not cost a connect each); else a new one is opened."""
        if self.dedicated.state == UP and self.kept_resp3 == self.resp3:
            self.fresh_pin = False
            return
        if self.dedicated.state != DOWN:
            self.dedicated.release()
        self.fresh_pin = True

    def _move(self, resp3: bool) -> None:
        if self.owed:
            self.held = []
            self.moving_to = resp3
        else:
            self.resp3 = resp3
            self.pooled = None

    def unpin_if_idle(self) -> None:
        """Back to the pool if the client's own connection owes nothing and its state is the
        default (the client connection asks after replies drained)."""
        if self.pinned and not self.deep and self.dedicated.state == UP and self.can_pool():
            self._unpin()

    def _unpin(self) -> None:
        self.pinned = False
        self.resp3 = self.kept_resp3 = self.wants_resp3()
        self.pooled = None
        self.pool.pinned -= 1
        # (Its own connection stays open, idle, in the default state: the next pin reuses it.)

    # ------------------------------------------------------------------ replies (from the pool)

    def deliver(self, conn: PooledConnection, data: bytes, done: int, whole: bool) -> None:
        """Bytes of this client's replies: ``done`` frames end in them, and ``whole``: they end at
        a frame boundary."""
        self.owed -= done
        if len(data) > MAX_POOLED_BYTES and not self.pinned and not self.deep:
            self.deep = True  # (large replies: its next requests go over a connection of its own)
            self.pin()
        if self.closed:
            return
        self.on_data(conn, data, done, whole)
        if done and self.held is not None and not self.owed:
            held, self.held = self.held, None
            if self.moving_to is None:
                self._own_connection()
                self.pinned = True
                self.dedicated.send(b"".join(data for data, _ in held))
            else:
                self.resp3, self.moving_to = self.moving_to, None
                self.pooled = None
                for data, frames in held:
                    self.send(data, frames)

    def lost_pooled(self, conn: PooledConnection, exc: Exception | None) -> None:
        self.owed = 0
        self.on_lost(conn, exc)
        self._after_pool_failure()

    def failed(self, conn: PooledConnection, reason: str) -> None:
        self.owed = 0
        if conn is self.pooled:
            self.pooled = None
            self.on_failed(reason)
        self._after_pool_failure()

    def _after_pool_failure(self) -> None:
        if self.held is not None:  # (the requests held are failed with the rest)
            if self.moving_to is None:
                self.pinned = True
            else:
                self.resp3 = self.moving_to
            self.held = None
            self.moving_to = None
        if not self.pinned:
            self.resp3 = self.wants_resp3()
        self.fresh_pin = False

    def lost(self, proto: Any) -> bool:
        """The connection ``proto`` is gone: True if it was this client's current one."""
        if proto is not None and proto is self.pooled:
            self.pooled = None
            return True
        if self.pinned:
            return self.dedicated.lost(proto)
        self.dedicated.lost(proto)  # (the idle one kept from the last pin, if it was that: gone)
        return False

    def drop(self) -> None:
        """A reply is overdue: reset the connection it is owed on (every client on it is told)."""
        if self.pinned:
            self.dedicated.drop()
            return
        conn, self.pooled = self.pooled, None
        self.owed = 0
        if conn is not None:
            conn.reset()
        self._after_pool_failure()

    def close(self) -> None:
        if not self.closed and (self.pinned or (self.held is not None and self.moving_to is None)):
            self.pool.pinned -= 1
        self.closed = True
        self.dedicated.close()

    def pause_reading(self, on: bool) -> None:
        # A slow reader cannot stop a shared connection: its replies wait in its own buffer,
        # bounded by output_buffer_limit, as in Redis (and a deep pipeline is pinned).
        if self.pinned:
            self.dedicated.pause_reading(on)

    def set_paused(self, on: bool) -> None:
        self.on_full("upstream_full", on)


def _is_plain_hello(args: list[bytes]) -> bool:
    """``HELLO 2`` or ``HELLO 3``, with no AUTH or SETNAME: a change of protocol only."""
    return len(args) == 2 and args[0].upper() == b"HELLO" and args[1] in (b"2", b"3")
