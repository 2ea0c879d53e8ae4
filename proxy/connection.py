"""One client connection and its dedicated upstream connection.

Each client gets its own upstream connection (1:1), so every piece of Redis connection state (AUTH,
SELECT, HELLO 3, MULTI/WATCH, subscriptions, CLIENT settings, blocking commands) behaves exactly as it
would against Redis directly. Requests are forwarded as the client's own bytes; replies are streamed
back as Redis's own bytes. The proxy keeps a queue of "reply slots", one per request in flight, so
that replies it produces itself (PREDIS, INFO's extra section, later the hot tier) go out in order.

A slot is one of:
  float      a forwarded request awaiting one reply (send time; 0.0 = blocking, no timeout)
  bytes      a reply made by the proxy, written when it reaches the head
  Capture    a forwarded request whose reply the proxy must read or rewrite
  _CLOSE / _PASSTHROUGH   markers acted upon when they reach the head
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import structlog

from proxy import commands
from proxy.errors import ClientProtocolError
from proxy.resp import (
    PUSH,
    Limits,
    ReplyScanner,
    RequestParser,
    decode_reply,
    encode_bulk,
    encode_command,
    encode_error,
    encode_verbatim,
)

if TYPE_CHECKING:
    from proxy.server import ProxyServer

log = structlog.get_logger("predis.connection")

_now = time.perf_counter


class Capture:
    __slots__ = ("t", "fn")

    def __init__(self, t: float, fn: Callable[[bytes], bytes | None]) -> None:
        self.t = t
        self.fn = fn  # receives the reply frame, returns what the client gets (None: nothing)


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_CLOSE = _Marker("CLOSE")
_PASSTHROUGH = _Marker("PASSTHROUGH")
_RESET_FRAME = b"+RESET\r\n"

# Upstream connection states.
DOWN, CONNECTING, UP = 0, 1, 2

# Commands that need the slow path (state tracking, local answers, special reply counts).
_SPECIAL = frozenset(
    {
        b"INFO",
        b"PREDIS",
        b"HELLO",
        b"AUTH",
        b"SELECT",
        b"CLIENT",
        b"MULTI",
        b"EXEC",
        b"DISCARD",
        b"WATCH",
        b"UNWATCH",
        b"MONITOR",
        b"RESET",
        b"QUIT",
    }
    | commands.BLOCKING
    | commands.MAYBE_BLOCKING
    | commands.SUBSCRIBE
    | commands.UNSUBSCRIBE
)


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = ("client", "transport")

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.upstream_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        self.client.set_paused("upstream_full", True)

    def resume_writing(self) -> None:
        self.client.set_paused("upstream_full", False)


class ClientConnection(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.stats = server.stats
        settings = server.settings
        self.parser = RequestParser(
            Limits(
                settings.max_bulk_len,
                settings.max_multibulk_len,
                settings.max_inline_len,
                settings.query_buffer_limit,
            )
        )
        self.scanner = ReplyScanner()
        self.pending: deque[Any] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.closing = False  # no more requests are read; the connection closes once replies drain
        # Upstream connection.
        self.up: UpstreamProtocol | None = None
        self.up_state = DOWN
        self.outbox: list[bytes] = []  # requests written while the upstream connection opens
        self.capture_parts: list[bytes] = []  # start of a captured reply frame split across reads
        # Connection state that a reconnect replays. Updated only when Redis acknowledged the
        # command that set it, so the prelude never repeats a command still in flight.
        self.auth: tuple[str | bytes, str | bytes] | None = None
        self.db = 0
        self.client_name: bytes | None = None
        self.replay_resp3 = False
        self._default_state()
        # The protocol the client asked for, as seen on the request side (before Redis answers),
        # which decides how RESP3 SUBSCRIBE confirmations are counted.
        self.resp3 = False
        # State that cannot be replayed: losing the upstream connection closes the client.
        self.in_multi = False
        self.watching = False
        self.tracking = False
        self.passthrough_req = False  # RESP2 pub/sub or MONITOR: requests are no longer inspected
        self.passthrough_rep = False  # ...and replies are no longer matched to requests
        self.reply_mode = b"ON"  # CLIENT REPLY ON | OFF | SKIP
        self.paused: set[str] = set()
        self.peer = ""

    # ------------------------------------------------------------------ client side

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = self.transport = cast(asyncio.Transport, base)
        settings = self.server.settings
        transport.set_write_buffer_limits(
            high=settings.backpressure_bytes, low=settings.backpressure_bytes // 4
        )
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.stats.total_connections += 1
        if len(self.server.clients) >= settings.max_clients:
            self.stats.rejected_connections += 1
            transport.write(b"-ERR max number of clients reached\r\n")
            self.closed = True
            transport.close()
            return
        self.server.clients.add(self)
        self.stats.connected_clients = len(self.server.clients)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.clients.discard(self)
        self.stats.connected_clients = len(self.server.clients)
        self._close_upstream()

    def pause_writing(self) -> None:
        self.set_paused("client_full", True)
        self._check_output_limit()

    def resume_writing(self) -> None:
        self.set_paused("client_full", False)

    def set_paused(self, reason: str, on: bool) -> None:
        """Backpressure: while either side's write buffer is full, read from neither."""
        was = bool(self.paused)
        if on:
            self.paused.add(reason)
        else:
            self.paused.discard(reason)
        now = bool(self.paused)
        if was == now or self.closed:
            return
        up_transport = self.up.transport if self.up else None
        for t in (self.transport, up_transport):
            if t is not None and not t.is_closing():
                if now:
                    t.pause_reading()
                elif not (t is self.transport and self.closing):
                    t.resume_reading()

    def _check_output_limit(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        if transport.get_write_buffer_size() > self.server.settings.output_buffer_limit:
            self.stats.output_limit_disconnects += 1
            log.warning("client output buffer limit reached, disconnecting", peer=self.peer)
            self.closed = True
            transport.abort()

    def _write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        self.stats.bytes_out += len(data)
        self.transport.write(data)
        if self.paused:
            self._check_output_limit()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.closed:
            return
        self.stats.bytes_in += len(data)
        parser = self.parser
        parser.feed(data)
        try:
            cmds = parser.parse()
        except ClientProtocolError as exc:
            self._protocol_error(exc)
            return
        if not cmds:
            return
        now = _now()
        pending = self.pending
        buf = parser.buffer
        pieces: list[bytes] = []
        run_start = run_end = -1  # a run of consecutive forwarded commands, sent as one slice
        forwarded = 0
        fast = not self.passthrough_req and self.reply_mode == b"ON"
        for args, start, end in cmds:
            name = args[0].upper()
            if fast and name not in _SPECIAL:
                slot: Any = now
            else:
                slot = self._special(name, args, now)
                fast = not self.passthrough_req and self.reply_mode == b"ON"
                if slot is None:  # answered locally (or swallowed): not forwarded
                    continue
            if start < 0:  # inline command: re-encode as RESP
                if run_start >= 0:
                    pieces.append(bytes(buf[run_start:run_end]))
                    run_start = -1
                pieces.append(encode_command(args))
            elif run_start < 0:
                run_start, run_end = start, end
            elif start == run_end:
                run_end = end
            else:
                pieces.append(bytes(buf[run_start:run_end]))
                run_start, run_end = start, end
            if type(slot) is tuple:
                pending.extend(slot)
            elif slot is not _NO_SLOT:
                pending.append(slot)
            forwarded += 1
            if self.closing:
                break
        if run_start >= 0:
            pieces.append(bytes(buf[run_start:run_end]))
        parser.consume()
        if pieces:
            self.stats.commands_forwarded += forwarded
            self._send_upstream(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if parser.error is not None and not self.closing:
            self._protocol_error(parser.error)

    def _protocol_error(self, exc: ClientProtocolError) -> None:
        self.stats.protocol_errors += 1
        log.info("protocol error, closing client", peer=self.peer, error=str(exc))
        self._reply_local(encode_error("ERR " + str(exc)), force=True)
        self._close_after_replies()

    def _close_after_replies(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        if self.pending:
            self.pending.append(_CLOSE)
        else:
            self._close_now()

    def _close_now(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered, then closes
        self._close_upstream()

    def _reply_local(self, reply: bytes, force: bool = False) -> None:
        """Queue a reply the proxy made itself, honouring CLIENT REPLY OFF/SKIP."""
        self.stats.commands_local += 1
        if not force and self.reply_mode != b"ON":
            if self.reply_mode == b"SKIP":
                self.reply_mode = b"ON"
            return
        if self.pending:
            self.pending.append(reply)
        else:
            self._write(reply)

    # ------------------------------------------------------------------ the slow path

    def _special(self, name: bytes, args: list[bytes], now: float) -> Any:
        """Decide what to do with a command that is not a plain forward.

        Returns the reply slot for a forwarded command, _NO_SLOT for a forwarded command that gets no
        reply, or None if the command is not forwarded.
        """
        if self.passthrough_req:
            if name == b"RESET":
                self._reset_state()
                return Capture(now, self._on_reset_reply)
            if name == b"QUIT":
                self._close_after_replies()
                return None
            return _NO_SLOT
        if self.reply_mode != b"ON":
            # CLIENT REPLY OFF/SKIP: Redis sends no reply, so no slot is queued.
            if name == b"CLIENT" and len(args) == 3 and args[1].upper() == b"REPLY":
                mode = args[2].upper()
                if mode in (b"ON", b"OFF", b"SKIP"):
                    self.reply_mode = mode
                    return now if mode == b"ON" else _NO_SLOT
            if self.reply_mode == b"SKIP":
                self.reply_mode = b"ON"
            if name == b"PREDIS":
                return None
            if name == b"QUIT":
                self._close_after_replies()
                return None
            self._track_state(name, args)
            return _NO_SLOT
        if name == b"PREDIS":
            self._reply_local(self._predis_command(args))
            return None
        if name == b"QUIT":
            self._reply_local(b"+OK\r\n")
            self._close_after_replies()
            return None
        if name == b"INFO":
            if self.in_multi or not commands.info_wants_predis(args):
                return now
            return Capture(now, self._append_info_section)
        if name == b"CLIENT" and len(args) >= 3 and args[1].upper() == b"REPLY":
            mode = args[2].upper()
            if mode in (b"ON", b"OFF", b"SKIP") and len(args) == 3:
                self.reply_mode = mode
                return now if mode == b"ON" else _NO_SLOT
            return now
        if commands.is_blocking(name, args):
            return 0.0
        if name in commands.SUBSCRIBE:
            if len(args) < 2:
                return now  # arity error: an ordinary error reply
            if self.resp3:
                return _NO_SLOT  # RESP3: confirmations arrive as push frames
            # RESP2: one confirmation per channel, then the connection is a message stream.
            self.passthrough_req = True
            return (now,) * (len(args) - 1) + (_PASSTHROUGH,)
        if name in commands.UNSUBSCRIBE and self.resp3:
            return _NO_SLOT
        if name == b"MONITOR":
            self.passthrough_req = True
            return (now, _PASSTHROUGH)
        return self._track_state(name, args, now)

    def _track_state(self, name: bytes, args: list[bytes], now: float = 0.0) -> Any:
        """Remember connection state that a reconnect must replay or must not silently drop."""
        if name == b"SELECT" and len(args) == 2:
            return Capture(now, partial(self._on_select, db=args[1]))
        if name == b"AUTH" and len(args) in (2, 3):
            cred = (b"default", args[1]) if len(args) == 2 else (args[1], args[2])
            return Capture(now, partial(self._on_auth, cred=cred))
        if name == b"HELLO":
            before = self.resp3
            if len(args) > 1 and args[1] in (b"2", b"3"):
                self.resp3 = args[1] == b"3"  # now, so pipelined SUBSCRIBEs are counted right
            return Capture(now, partial(self._on_hello, args=args, resp3_before=before))
        if name == b"RESET":
            self._reset_state()
            return Capture(now, self._on_reset_reply)
        if name == b"MULTI":
            self.in_multi = True
        elif name in (b"EXEC", b"DISCARD"):
            self.in_multi = False
            self.watching = False
        elif name == b"WATCH":
            self.watching = True
        elif name == b"UNWATCH":
            self.watching = False
        elif name == b"CLIENT" and len(args) >= 3:
            sub = args[1].upper()
            if sub == b"SETNAME" and len(args) == 3:
                return Capture(now, partial(self._on_setname, name=args[2]))
            if sub == b"TRACKING":
                self.tracking = args[2].upper() == b"ON"
        return now if now else _NO_SLOT

    def _on_select(self, frame: bytes, db: bytes) -> bytes:
        if frame.startswith(b"+"):
            self.db = int(db)
        return frame

    def _on_setname(self, frame: bytes, name: bytes) -> bytes:
        if frame.startswith(b"+"):
            self.client_name = name or None
        return frame

    def _on_auth(self, frame: bytes, cred: tuple[bytes, bytes]) -> bytes:
        if frame.startswith(b"+"):
            self.auth = cred
        return frame

    def _on_hello(self, frame: bytes, args: list[bytes], resp3_before: bool) -> bytes:
        if frame[:1] not in (b"%", b"*"):
            self.resp3 = resp3_before  # HELLO failed: the protocol did not change
            return frame
        self.resp3 = self.replay_resp3 = frame.startswith(b"%")
        i = 2
        while i < len(args):
            word = args[i].upper()
            if word == b"AUTH" and i + 2 < len(args):
                self.auth = (args[i + 1], args[i + 2])
                i += 3
            elif word == b"SETNAME" and i + 1 < len(args):
                self.client_name = args[i + 1] or None
                i += 2
            else:
                i += 1
        return frame

    def _default_state(self) -> None:
        """The state a new upstream connection starts from: the upstream URL's user and db."""
        address = self.server.upstream
        self.auth = (address.username or "default", address.password) if address.password else None
        self.db = address.db
        self.client_name = None
        self.replay_resp3 = False

    def _reset_state(self) -> None:
        self.resp3 = False
        self.in_multi = self.watching = self.tracking = False
        self.passthrough_req = False
        self.reply_mode = b"ON"

    def _on_reset_reply(self, frame: bytes) -> bytes:
        self.passthrough_rep = False
        if frame == _RESET_FRAME:
            self._default_state()
        return frame

    def _append_info_section(self, frame: bytes) -> bytes:
        reply = decode_reply(frame)
        if not isinstance(reply, bytes):
            return frame  # an error or something unexpected: pass it on untouched
        # hiredis strips the "txt:" format prefix of a RESP3 verbatim string.
        section = self.stats.info_text()
        text = reply + b"\r\n" + section if reply.strip() else section
        return encode_verbatim(text) if frame.startswith(b"=") else encode_bulk(text)

    def _predis_command(self, args: list[bytes]) -> bytes:
        if self.in_multi:
            return encode_error("ERR PREDIS is not allowed inside MULTI")
        sub = args[1].upper() if len(args) > 1 else b""
        if sub == b"STATS" and len(args) == 2:
            return encode_bulk(self.stats.info_text())
        if sub == b"STATS" and len(args) == 3 and args[2].upper() == b"JSON":
            return encode_bulk(self.stats.json_text())
        if sub == b"HELP":
            lines = [
                b"PREDIS STATS: the # Predis section of INFO, as text",
                b"PREDIS STATS JSON: the same figures as a JSON object",
            ]
            return b"*%d\r\n" % len(lines) + b"".join(b"+%s\r\n" % line for line in lines)
        return encode_error(
            f"ERR unknown subcommand or wrong number of arguments for 'PREDIS {sub.decode(errors='replace')}'. Try PREDIS HELP."
        )

    # ------------------------------------------------------------------ upstream side

    def _send_upstream(self, data: bytes) -> None:
        if self.up_state == UP and self.up is not None and self.up.transport is not None:
            self.up.transport.write(data)
            return
        self.outbox.append(data)
        if self.up_state == DOWN:
            self.up_state = CONNECTING
            asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        settings = self.server.settings
        try:
            _, proto = await asyncio.wait_for(
                self.server.open_upstream(lambda: UpstreamProtocol(self)), settings.connect_timeout
            )
        except (TimeoutError, OSError) as exc:
            self.up_state = DOWN
            self.outbox.clear()
            self.stats.upstream_errors += 1
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else (exc.strerror or str(exc))
            log.warning("upstream connect failed", peer=self.peer, error=reason)
            self._fail_pending(f"ERR Predis: upstream Redis unavailable ({reason})")
            return
        if self.closed:
            if proto.transport is not None:
                proto.transport.close()
            return
        self.stats.upstream_connects += 1
        self.up = proto
        self.up_state = UP
        self.scanner = ReplyScanner()
        prelude = self._prelude()
        for _ in prelude:
            self.pending.appendleft(Capture(_now(), _swallow))
        data = b"".join(prelude) + b"".join(self.outbox)
        self.outbox.clear()
        if self.paused and proto.transport is not None:
            proto.transport.pause_reading()
        if data and proto.transport is not None:
            proto.transport.write(data)

    def _prelude(self) -> list[bytes]:
        """Commands that put a fresh upstream connection in this client's state."""
        out: list[bytes] = []
        if self.replay_resp3 or (self.auth and self.client_name):
            hello: list[Any] = [b"HELLO", b"3" if self.replay_resp3 else b"2"]
            if self.auth:
                hello += [b"AUTH", *self.auth]
            if self.client_name:
                hello += [b"SETNAME", self.client_name]
            out.append(encode_command([_b(x) for x in hello]))
        else:
            if self.auth:
                out.append(encode_command([b"AUTH", *(_b(x) for x in self.auth)]))
            if self.client_name:
                out.append(encode_command([b"CLIENT", b"SETNAME", self.client_name]))
        if self.db:
            out.append(encode_command([b"SELECT", str(self.db).encode()]))
        return out

    def upstream_data(self, proto: UpstreamProtocol, data: bytes) -> None:
        if proto is not self.up or self.closed:
            return
        try:
            ends = self.scanner.feed(data)
        except ValueError as exc:
            log.error("unparseable reply from upstream", peer=self.peer, error=str(exc))
            self._drop_upstream("ERR Predis: unparseable reply from upstream")
            return
        pending = self.pending
        if not ends:
            self._partial_frame(data)
            return
        start = 0  # start of the current frame in data
        run = 0  # start of bytes not yet written
        now = _now()
        record = self.stats.forward_latency.record
        for end, kind in ends:
            if kind == PUSH:
                start = end
                continue
            if self.passthrough_rep:
                if pending and isinstance(pending[0], Capture) and data[start:end] == _RESET_FRAME:
                    if run < start:
                        self._write(data[run:start])
                    head = pending.popleft()
                    self._write(head.fn(_RESET_FRAME))
                    run = end
                    self._drain_markers()
                start = end
                continue
            if not pending:
                log.error("reply with no request pending", peer=self.peer)
                start = end
                continue
            head = pending.popleft()
            if type(head) is float:
                if head:
                    record(now - head)
                start = end
                if pending and type(pending[0]) is not float:
                    self._write(data[run:end])
                    run = end
                    self._drain_markers()
                continue
            # A captured reply: hand it to its handler, write what it returns.
            if run < start:
                self._write(data[run:start])
            frame = data[start:end]
            if self.capture_parts:
                self.capture_parts.append(frame)
                frame = b"".join(self.capture_parts)
                self.capture_parts = []
            if head.t:
                record(now - head.t)
            out = head.fn(frame)
            if out:
                self._write(out)
            run = start = end
            self._drain_markers()
        # Bytes after the last complete frame begin a frame that continues in the next read.
        if start < len(data) and not self.passthrough_rep:
            if pending and isinstance(pending[0], Capture) and not self.scanner.in_push:
                if run < start:
                    self._write(data[run:start])
                self.capture_parts.append(data[start:])
                return
        if run == 0:
            self._write(data)
        elif run < len(data):
            self._write(data[run:])

    def _partial_frame(self, data: bytes) -> None:
        pending = self.pending
        if (
            not self.passthrough_rep
            and pending
            and isinstance(pending[0], Capture)
            and not self.scanner.in_push
        ):
            self.capture_parts.append(data)
        else:
            self._write(data)

    def _drain_markers(self) -> None:
        """Write proxy-made replies and act on markers that have reached the head of the queue."""
        pending = self.pending
        while pending:
            head = pending[0]
            if type(head) is bytes:
                pending.popleft()
                self._write(head)
            elif head is _CLOSE:
                pending.clear()
                self._close_now()
                return
            elif head is _PASSTHROUGH:
                pending.popleft()
                self.passthrough_rep = True
            else:
                return

    def _fail_pending(self, message: str) -> None:
        """Answer every request in flight with an error, keeping proxy-made replies in order."""
        error = encode_error(message)
        pending = self.pending
        self.capture_parts = []
        while pending:
            head = pending.popleft()
            if type(head) is float:
                self._write(error)
            elif isinstance(head, Capture):
                out = head.fn(error)
                if out:
                    self._write(out)
            else:
                pending.appendleft(head)
                self._drain_markers()
                if pending and pending[0] is _CLOSE:
                    return

    def upstream_lost(self, proto: UpstreamProtocol, exc: Exception | None) -> None:
        if proto is not self.up:
            return
        self.up = None
        self.up_state = DOWN
        if self.closed:
            return
        self.stats.upstream_errors += 1
        log.warning("upstream connection lost", peer=self.peer, error=str(exc) if exc else "EOF")
        self._after_upstream_loss("ERR Predis: upstream connection lost")

    def _drop_upstream(self, message: str) -> None:
        """Give up on the current upstream connection (timeout, garbage) and fail what is in flight."""
        proto, self.up = self.up, None
        self.up_state = DOWN
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        self._after_upstream_loss(message)

    def _after_upstream_loss(self, message: str) -> None:
        # State that a new connection cannot restore: close the client rather than lie to it.
        stateful = self.in_multi or self.watching or self.tracking or self.passthrough_req
        stateful = stateful or self.passthrough_rep
        self.passthrough_rep = False
        self._fail_pending(message)
        if stateful and not self.closed:
            log.info("closing client whose connection state was lost", peer=self.peer)
            self._close_after_replies()

    def check_timeout(self, now: float, timeout: float) -> None:
        pending = self.pending
        if not pending or self.passthrough_rep:
            return
        head = pending[0]
        t = head if type(head) is float else getattr(head, "t", 0.0)
        if t and now - t > timeout:
            self.stats.timeouts += 1
            log.warning("upstream reply timed out", peer=self.peer, seconds=round(now - t, 3))
            self._drop_upstream(f"ERR Predis: upstream Redis did not reply within {timeout:g}s")

    def _close_upstream(self) -> None:
        proto, self.up = self.up, None
        self.up_state = DOWN
        if proto is not None and proto.transport is not None:
            proto.transport.close()


_NO_SLOT = _Marker("NO_SLOT")


def _swallow(frame: bytes) -> None:
    if frame.startswith(b"-"):
        log.warning("reconnect prelude command failed", reply=frame[:200])
    return None


def _b(x: str | bytes) -> bytes:
    return x if isinstance(x, bytes) else x.encode()
