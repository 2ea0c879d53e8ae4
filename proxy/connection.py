"""One client connection: the asyncio transport, and the dispatch of its requests among the parts
that do the work, each in its own module:

* ``proxy.requests.RequestReader`` frames the client's bytes into commands;
* ``proxy.reads`` (``TierReads``, or ``ForwardReads`` with the tier off) decides every read of
  GETs: served from the hot tier, or forwarded (and filled); it reports every key to the access
  sink, where live prediction attaches;
* ``proxy.session.Session`` follows the Redis state of the connection (AUTH, SELECT, MULTI...);
* ``proxy.replies.ReplyStream`` matches Redis's replies to the queue of reply slots;
* ``proxy.multiplex.MuxLink`` sends its requests over a shared upstream connection, or over its
  own ``proxy.upstream.UpstreamLink`` while it is pinned (with ``upstream_pool`` 0: always).

A GET's way: ``data_received`` -> ``reads.decide`` (a read of GETs and nothing else: served, or
forwarded whole) -> otherwise ``requests.feed`` -> ``_dispatch`` (one plain run, if
``reads.decide_commands`` says so) -> otherwise ``_forward``, command by command, where
``reads.read`` serves or misses each GET and ``session.special`` decides every special command.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, cast

import structlog

from common.errors import ClientProtocolError
from prefetch.tier import HotTier
from proxy.dispatch import Dispatcher
from proxy.keyspace import CommandTable
from proxy.multiplex import MuxLink, UpstreamPool
from proxy.reads import AccessSink, ForwardReads
from proxy.replies import ReplyStream
from proxy.requests import RequestReader
from proxy.resp import Limits, encode_error
from proxy.session import Session
from proxy.slots import Run
from proxy.stats import Stats
from proxy.tier_reads import TierReads
from proxy.upstream import DOWN, UP, UpstreamLink, UpstreamOpener, UpstreamProtocol

log = structlog.get_logger("predis.connection")


class Shared:
    """What every client connection of one proxy shares (the server owns it)."""

    def __init__(
        self,
        opener: UpstreamOpener,
        stats: Stats,
        tier: HotTier | None = None,
        filler: Any = None,  # proxy.backchannel.Filler
        access: AccessSink | None = None,
    ) -> None:
        self.opener = opener
        self.settings = opener.settings
        self.stats = stats
        self.tier = tier
        self.filler = filler
        self.access = access  # told of every GET and MGET key every client reads
        self.command_table: CommandTable | None = None  # Redis's, once the server has read it
        self.clients: set[ClientConnection] = set()
        # Shared upstream connections (settings.upstream_pool > 0), else one per client.
        self.pool = (
            UpstreamPool(opener, stats, self.settings.upstream_pool) if self.settings.upstream_pool else None
        )
        self.streams = itertools.count(1)  # each connection's stream id, for ``access``
        self.readers: dict[int, Session] = {}  # stream id -> its connection's session (live ones)
        settings = self.settings
        self.admin_users = frozenset(u.strip() for u in settings.admin_users.split(",") if u.strip())
        self.limits = Limits(
            settings.max_bulk_len,
            settings.max_multibulk_len,
            settings.max_inline_len,
            settings.query_buffer_limit,
        )
        # The GET and SET fast paths check no limits: they need limits above any one read (which
        # holds a few hundred KiB at most) and three-argument commands.
        self.fast_framing = (
            min(settings.max_bulk_len, settings.query_buffer_limit) >= 1 << 20
            and settings.max_multibulk_len >= 3
        )

    def table(self) -> CommandTable | None:
        return self.command_table


class ClientConnection(asyncio.Protocol):
    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        stats = self.stats = shared.stats
        settings = shared.settings
        self.limits = shared.limits
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.closing = False  # no more requests are read; the connection closes once replies drain
        self.paused: set[str] = set()
        self.peer = ""
        self.session = Session(shared.opener.address, stats, admin_users=shared.admin_users)
        stream = self.stream = next(shared.streams)
        own = UpstreamLink(
            shared.opener, stats, self._new_upstream_protocol, self._upstream_up, self._upstream_failed
        )
        self.upstream: UpstreamLink | MuxLink = own
        self.mux: MuxLink | None = None
        if shared.pool is not None:
            self.upstream = self.mux = MuxLink(
                shared.pool,
                own,
                stream,
                self.pooled_data,
                self.upstream_lost,
                self._upstream_failed,
                self.set_paused,
                self._can_pool,
                self._speaks_resp3,
            )
        self.replies = ReplyStream(
            self.session, stats, self._write, self.upstream.send, self._bad_upstream_reply, self._close_now
        )
        self.pending = self.replies.pending
        fast_framing = shared.fast_framing
        self.reads: ForwardReads
        if shared.tier is None:
            self.reads = ForwardReads(self.session, stats, self.pending, shared.access, stream, fast_framing)
        else:
            reads = TierReads(
                self.session,
                stats,
                self.pending,
                shared.access,
                stream,
                fast_framing,
                shared.tier,
                shared.filler,
                shared.table,
                settings.hot_tier_max_batch,
            )
            self.session.on_db_change = reads.db_changed
            self.reads = reads
        self.dispatch = Dispatcher(
            self.session,
            self.reads,
            self.replies,
            stats,
            self.upstream.send,
            self.close_after_replies,
            self._enter_raw,
            self.mux.before_special if self.mux is not None else None,
            self.mux.can_stream if self.mux is not None else None,
        )
        self.requests = RequestReader(
            self.limits,
            self.dispatch.commands,
            self.dispatch.each,
            self.dispatch.stream,
            self.dispatch.stream_bytes,
        )
        # After SYNC/PSYNC the connection is a raw byte pipe both ways (``_enter_raw``).
        self.raw = False  # requests: forwarded as they arrive, never parsed
        self.raw_rep = False  # replies: written as they arrive, never scanned
        self.raw_held: list[bytes] | None = None  # raw requests waiting for the replies before them
        self.raw_held_bytes = 0

    # ------------------------------------------------------------------ client transport

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = self.transport = cast(asyncio.Transport, base)
        settings = self.shared.settings
        transport.set_write_buffer_limits(
            high=settings.backpressure_bytes, low=settings.backpressure_bytes // 4
        )
        peer = transport.get_extra_info("peername")
        self.peer = self.upstream.peer = self.replies.peer = (
            f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        )
        self.stats.total_connections += 1
        clients = self.shared.clients
        if len(clients) >= settings.max_clients:
            self.stats.rejected_connections += 1
            transport.write(b"-ERR max number of clients reached\r\n")
            self.closed = True
            transport.close()
            return
        clients.add(self)
        self.shared.readers[self.stream] = self.session
        self.stats.connected_clients = len(clients)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.shared.clients.discard(self)
        self.shared.readers.pop(self.stream, None)
        self.stats.connected_clients = len(self.shared.clients)
        self.upstream.close()

    def pause_writing(self) -> None:
        self.set_paused("client_full", True)
        self._check_output_limit()

    def resume_writing(self) -> None:
        self.set_paused("client_full", False)

    def set_paused(self, reason: str, on: bool) -> None:
        """Backpressure, one direction at a time, as Redis itself behaves.

        A client that does not read its replies stops the proxy reading from its upstream
        connection, so the replies wait in Redis's output buffer as they would for a direct client;
        its requests are still read (a client that writes a whole pipeline before reading would
        deadlock otherwise). Redis not reading our requests stops the proxy reading the client.
        """
        if on == (reason in self.paused) or self.closed:
            return
        if on:
            self.paused.add(reason)
        else:
            self.paused.discard(reason)
        if reason == "client_full":
            self.upstream.pause_reading(on)
            return
        t = None if self.closing else self.transport
        if t is not None and not t.is_closing():
            if on:
                t.pause_reading()
            else:
                t.resume_reading()

    def _check_output_limit(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        if transport.get_write_buffer_size() > self.shared.settings.output_buffer_limit:
            self.stats.output_limit_disconnects += 1
            log.warning("client output buffer limit reached, disconnecting", peer=self.peer)
            self.closed = True
            transport.abort()

    def _write(self, data: bytes) -> None:
        if self.closed or self.transport is None or not data:
            return
        self.stats.bytes_out += len(data)
        self.transport.write(data)
        if self.paused:
            self._check_output_limit()

    # ------------------------------------------------------------------ requests

    def data_received(self, data: bytes) -> None:
        if self.closing or self.closed:
            return
        self.stats.bytes_in += len(data)
        if self.raw:
            self._raw_request(data)
            return
        requests = self.requests
        if not requests.tail and requests.parser is None and not requests.streaming:
            verdict = self.reads.decide(data)
            if verdict is not None:
                if type(verdict) is bytes:  # served: the hit path, inlined (_write)
                    self.stats.bytes_out += len(verdict)
                    self.transport.write(verdict)  # type: ignore[union-attr]
                    if self.paused:
                        self._check_output_limit()
                else:  # forwarded as it is: one Run slot for its replies (Dispatcher.forward_run, inlined)
                    run: Run = verdict  # type: ignore[assignment]
                    self.pending.append(run)
                    self.stats.commands_forwarded += run.count
                    self.upstream.send(data, run.count)
                return
        try:
            rest = requests.feed(data)
        except ClientProtocolError as exc:
            if not self.closing:
                self._protocol_error(exc)
            return
        if rest is not None:
            self._raw_request(rest)

    def _protocol_error(self, exc: ClientProtocolError) -> None:
        self.stats.protocol_errors += 1
        log.info("protocol error, closing client", peer=self.peer, error=str(exc))
        self.reply_local(encode_error("ERR " + str(exc)), force=True)
        self.close_after_replies()

    def reply_local(self, reply: bytes, force: bool = False) -> None:
        """Queue a reply the proxy made itself, honouring CLIENT REPLY OFF/SKIP."""
        self.stats.commands_local += 1
        session = self.session
        if not force and session.reply_mode != b"ON":
            if session.reply_mode == b"SKIP":
                session.reply_mode = b"ON"
            return
        self.replies.queue_local(reply)

    def close_after_replies(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        if not self.replies.close_after():
            self._close_now()

    def _close_now(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered, then closes
        self.upstream.close()

    # ------------------------------------------------------------------ SYNC/PSYNC: a raw pipe

    def _enter_raw(self, data: bytes) -> None:
        """SYNC/PSYNC: from here on the connection is a raw byte pipe both ways, as it is against
        Redis (an RDB payload without a trailing CRLF, then the replication feed, cannot be
        framed as replies). ``data`` (the command and anything after it) waits until every reply
        before it is in, so that the reply side switches at a known boundary."""
        log.info("replication stream requested, the connection becomes a raw pipe", peer=self.peer)
        self.raw = True
        self.raw_held = [data]
        self.raw_held_bytes = len(data)
        if self.upstream.state == DOWN:
            self.upstream.send(b"", 0)  # connect (and replay the prelude) first
        self._release_raw()

    def _raw_request(self, data: bytes) -> None:
        if self.raw_held is not None:
            self.raw_held.append(data)
            self.raw_held_bytes += len(data)
            if self.raw_held_bytes > self.limits.max_query_buffer:
                # Held bytes are this client's query buffer: bounded as Redis bounds it. Nothing
                # held is sent; the replies owed go out, then the connection closes.
                self.raw_held = None
                self._protocol_error(ClientProtocolError("Protocol error: query buffer limit exceeded"))
        elif data:
            self.upstream.send(data, 0)

    def _release_raw(self) -> None:
        """Send the held raw bytes once nothing is owed before them."""
        if self.raw_held is None or self.pending or self.upstream.state != UP or self.closed:
            return
        if not self.replies.at_boundary():
            return  # (a push frame still arriving)
        held, self.raw_held = self.raw_held, None
        self.raw_rep = True
        self.replies.leave_fast_mode_raw()
        self.upstream.send(b"".join(held), 0)

    # ------------------------------------------------------------------ upstream events

    def _speaks_resp3(self) -> bool:
        return self.session.resp3

    def _can_pool(self) -> bool:
        """Whether this client may go back to the shared connections: nothing owed, nothing
        held, and its Redis state the default (proxy.multiplex)."""
        return not self.pending and not self.raw and not self.closing and self.session.poolable()

    def _new_upstream_protocol(self) -> UpstreamProtocol:
        return UpstreamProtocol(self.upstream_data, self.upstream_lost, self.set_paused)

    def _upstream_up(self, proto: UpstreamProtocol, waiting: bytes) -> None:
        """A new upstream connection: the session's state is replayed before what waited (for a
        pooled client just pinned, the state it had on the pool: its reply stream goes on where
        the pool left it)."""
        prelude = self.session.prelude()
        mux = self.mux
        if mux is not None and mux.fresh_pin:
            mux.fresh_pin = False
            self.replies.switch_connection(len(prelude))
        else:
            self.replies.restart(len(prelude))
        transport = proto.transport
        if transport is None:
            return
        if "client_full" in self.paused:
            transport.pause_reading()
        data = b"".join(prelude) + waiting
        if data:
            transport.write(data)
        if self.raw_held is not None:
            self._release_raw()

    def _upstream_failed(self, reason: str) -> None:
        if self.mux is not None:
            self.mux.fresh_pin = False
        self.replies.fail_all(f"ERR Predis: upstream Redis unavailable ({reason})")

    def upstream_data(self, proto: Any, data: bytes) -> None:
        if proto is not self.upstream.proto or self.closed:
            return
        if self.raw_rep:
            self._write(data)
            return
        replies = self.replies
        if replies.fast:
            replies.fast_replies(data)
        else:
            replies.slow_replies(data)
        if self.raw_held is not None:
            self._release_raw()
        elif self.mux is not None and self.mux.pinned and not self.pending:
            self.mux.unpin_if_idle()

    def pooled_data(self, proto: Any, data: bytes, frames: int, whole: bool) -> None:
        """Bytes of this client's replies from a pooled connection, whose scanner counted
        ``frames`` ends in them (``whole``: they end at a frame boundary): passed through
        without counting them again where the reply stream allows it."""
        if proto is not self.upstream.proto or self.closed:
            return
        if whole and frames and not self.raw_rep and self.replies.counted_replies(data, frames):
            return
        self.upstream_data(proto, data)

    def upstream_lost(self, proto: Any, exc: Exception | None) -> None:
        if not self.upstream.lost(proto) or self.closed:
            return
        self.stats.upstream_errors += 1
        log.warning("upstream connection lost", peer=self.peer, error=str(exc) if exc else "EOF")
        self._after_upstream_loss("ERR Predis: upstream connection lost")

    def _bad_upstream_reply(self, reason: str) -> None:
        log.error("unparseable reply from upstream", peer=self.peer, error=reason)
        self._drop_upstream("ERR Predis: unparseable reply from upstream")

    def _drop_upstream(self, message: str) -> None:
        """Give up on the current upstream connection (timeout, garbage) and fail what is in flight."""
        self.upstream.drop()
        self._after_upstream_loss(message)

    def _after_upstream_loss(self, message: str) -> None:
        if self.requests.streaming:
            # A request cut in the middle of its streamed argument: the rest of its bytes must
            # reach no connection (a new one would read a value's bytes as commands), and the
            # client's stream cannot go on past them. Its replies fail; it is closed.
            self.replies.fail_all(message)
            if not self.closed:
                self.close_after_replies()
            return
        # State that a new connection cannot restore: close the client rather than lie to it.
        stateful = self.session.stateful() or self.raw
        # A reply cut in the middle cannot be finished with an error: the client's stream is broken.
        if self.replies.lost() or self.raw_rep:  # (a raw stream cannot be resumed either)
            log.info("upstream lost in the middle of a reply, closing client", peer=self.peer)
            self.pending.clear()
            self._close_now()
            return
        if self.replies.fail_all(message) and stateful and not self.closed:
            log.info("closing client whose connection state was lost", peer=self.peer)
            self.close_after_replies()

    def check_timeout(self, now: float, timeout: float) -> None:
        sent = self.replies.head_sent()
        if sent and now - sent > timeout:
            self.stats.timeouts += 1
            log.warning("upstream reply timed out", peer=self.peer, seconds=round(now - sent, 3))
            self._drop_upstream(f"ERR Predis: upstream Redis did not reply within {timeout:g}s")
