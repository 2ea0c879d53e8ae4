"""The request side of one client connection: a client's bytes framed into commands, checked as
Redis checks them, and handed on with the client's own bytes.

Commands are parsed by ``hiredis.Reader``. A read that holds whole commands is handed on with
the client's bytes for them (``on_commands``); hiredis gives no offsets, but clients encode
canonically, so a command's length follows from its arguments (``canonical_size``, at C speed).
Inline commands (telnet style) go through ``proxy.resp.RequestParser`` and are handed on with
each command's bytes, None where it must be re-encoded (``on_each``). The bytes of an unfinished
command at the end of a read (``tail``) are held back until it completes: it may turn out to be
one the proxy answers itself, which must not reach Redis.

Each handler returns True when the connection has become a raw byte pipe (SYNC/PSYNC): the bytes
after the commands handed on are then no longer parsed but returned by ``feed``.

A command whose last argument is large (past ``STREAM_FROM`` bytes held, a 32 MiB SET say) is
streamed: once its arguments before the last are known, ``on_stream`` is offered it (the
arguments, the last one empty, and the bytes so far); if it takes it, the rest of the command's
bytes go to ``on_stream_bytes`` as they arrive (with whether they end it), never held, parsed or
copied whole. (Holding it
cost the event loop about 75 ms per 32 MiB, which every other client waited through.)
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

import hiredis

from common.errors import ClientProtocolError
from proxy.framing import canonical_size
from proxy.resp import Limits, RequestParser, UnfinishedRequest, parse_length

_STAR = b"*"
_pack = hiredis.pack_command
# Past this many bytes, the check that every argument has its "$" header walks the headers
# instead of counting "$" bytes through the payloads too (one pass over every byte of a long value).
_WALK_HEADERS_FROM = 64 * 1024
_PUSH = b"\r\n>"
# An unfinished command holding this many bytes is offered for streaming (above the shared
# connection's 64 KiB, so a streamed command's client always has a connection of its own).
STREAM_FROM = 512 * 1024


class RequestReader:
    def __init__(
        self,
        limits: Limits,
        on_commands: Callable[[list[Any], bytes], bool],
        on_each: Callable[[list[Any], list[bytes | None]], bool],
        on_stream: Callable[[list[bytes], bytes], bool] | None = None,
        on_stream_bytes: Callable[[bytes, bool], None] | None = None,
    ) -> None:
        self.limits = limits
        self.on_commands = on_commands  # (commands, the client's bytes of exactly them)
        self.on_each = on_each  # (commands, each one's bytes or None)
        self.reader = hiredis.Reader()
        self.tail: list[bytes] = []  # bytes of the unfinished command at the end of the stream
        self.unfinished = UnfinishedRequest(limits)  # checks the tail as it grows
        self.parser: RequestParser | None = None  # in use while inline commands are being read
        self.edge = b""  # the last two bytes fed to hiredis (a push header may straddle reads)
        self.on_stream = on_stream
        self.on_stream_bytes = on_stream_bytes
        self.streaming = 0  # bytes of a streamed command still to pass through
        # Held bytes at which an unfinished command is next offered for streaming (0: at
        # STREAM_FROM). Doubled after each offer not taken, so that a command held whole (a large
        # argument not the last, a command inside MULTI...) costs the joins of its head about
        # twice its size in all, not one join per piece that arrives.
        self.stream_next = 0

    def feed(self, data: bytes) -> bytes | None:
        """Frame ``data`` and hand its complete commands on. Returns the bytes after a command
        that made the connection a raw pipe, else None. Raises ClientProtocolError for what Redis
        would refuse, after handing on the commands before it."""
        if self.streaming:
            take = min(self.streaming, len(data))
            self.streaming -= take
            assert self.on_stream_bytes is not None
            self.on_stream_bytes(data[:take] if take < len(data) else data, not self.streaming)
            data = data[take:]
            if not data:
                return None
        if self.parser is not None or (not self.tail and data[:1] != _STAR):
            return self._inline_data(data)
        edge, self.edge = self.edge, data[-2:]
        if (
            _PUSH in data
            or (data[:1] == b">" and edge == b"\r\n")
            or (data[:2] == b"\n>" and edge[-1:] == b"\r")
        ):
            # A push header inside a request (never valid; or ">" after CRLF inside a value):
            # hiredis allocates a push's declared element count at once, so one 30-byte request
            # could take gigabytes (fuzzing found it). Our own parser reads it instead, exactly.
            return self._exact(data)
        reader = self.reader
        reader.feed(data)
        cmds: list[Any] = []
        try:
            while (cmd := reader.gets()) is not False:
                cmds.append(cmd)
            if cmds and not self._plain(cmds, data):
                return self._exact(data)
        except (hiredis.ProtocolError, TypeError, MemoryError):
            # (MemoryError: hiredis refuses an array length past 2**31 so, not as a protocol error)
            if not self._plain(cmds, data):
                return self._exact(data)
            # Not a multibulk where one should start: an inline command, or garbage (hiredis also
            # raises TypeError building a RESP3 map whose key is an array or a push: fuzzing found
            # it). Hand on the complete commands, then our own parser takes over from that
            # boundary; it reads inline commands and words a real error as Redis does.
            self.reader = hiredis.Reader()
            stream = b"".join(self.tail) + data
            self.tail = []
            try:
                size = self._checked_size(cmds)  # (_plain: no *-1 or *0 among them)
                exact = not cmds or not _canonical(cmds, stream[:size])
            except ClientProtocolError:
                exact = True
            if exact:
                # Commands before the error that are not their canonical bytes ("*1\r\n+$4\r\n":
                # hiredis reads a simple string as an argument; fuzzing found it) would reach
                # Redis, which refuses them and closes the connection, a shared one too. Our own
                # parser reads the stream from the last boundary, as Redis does.
                return self._inline_data(stream)
            if self.on_commands(cmds, stream[:size]):
                return stream[size:]
            return self._inline_data(stream[size:])
        return self._frame_requests(cmds, data)

    def _plain(self, cmds: list[Any], data: bytes) -> bool:
        """Whether hiredis's replies are surely the multibulk commands Redis reads: every one a
        non-empty array. hiredis reads more than Redis does at a command's start: a null
        (``*-1``, ``$-1``, ``_``) or empty array (``*0``, ``~0``) cannot be told apart by size,
        a set (``~``) reads as an array, a push (``>``) as an array of its own type, and a
        scalar is no command; Redis reads any of those but ``*-1`` and ``*0`` as an inline
        command (fuzzing against our own parser found each)."""
        return (
            None not in cmds
            and [] not in cmds
            and all(type(c) is list for c in cmds)
            and b"~" not in data
            and not any(b"~" in t for t in self.tail)
        )

    def _exact(self, data: bytes) -> bytes | None:
        """The stream since the last command boundary through our own parser, which reads it as
        Redis does (inline commands, its error wording); hiredis starts afresh after it."""
        self.reader = hiredis.Reader()
        stream = b"".join(self.tail) + data
        self.tail = []
        return self._inline_data(stream)

    def _frame_requests(self, cmds: list[Any], data: bytes) -> bytes | None:
        """Find the client's bytes for the commands hiredis returned, check them, hand them on."""
        tail = self.tail
        held = sum(map(len, tail))
        if not cmds:
            tail.append(data)
            if held == 0:
                self.unfinished = UnfinishedRequest(self.limits)
                self.stream_next = 0
            self._check_tail(data, held + len(data))
            if held + len(data) >= max(STREAM_FROM, self.stream_next) and self.on_stream is not None:
                self._try_stream()
            return None
        # (No *-1 or *0 among them: _plain sent those to our own parser.)
        try:
            size = self._checked_size(cmds)
        except ClientProtocolError as exc:
            # Hand on the commands before the bad one, as Redis serves them, then fail with
            # Redis's words for the bad one.
            good = cmds[: next(i for i, c in enumerate(cmds) if not self._acceptable(c))]
            stream = b"".join(tail) + data
            start = self._checked_size(good)
            if good:
                self.tail = []
                self.on_commands(good, stream[:start])
            raise self._worded(stream[start:], exc) from None
        tail_len = held + len(data) - size
        if tail_len < 0 or tail_len > len(data):  # (not the commands' canonical bytes: below)
            return self._exact(data)
        cut = len(data) - tail_len
        # (One join: a long argument's bytes are copied once here, not twice.)
        raw = b"".join((*tail, data[:cut])) if tail else (data if tail_len == 0 else data[:cut])
        if not _canonical(cmds, raw):
            # Not the commands' canonical encoding, which hiredis reads and Redis refuses: an
            # argument without its "$" header (a simple string, a big number; fuzzing found it),
            # or a length written otherwise ("$04", "$+4", "*01": cut at the canonical sizes, such
            # a request reached Redis misframed, which closed the connection, a shared one too).
            # Our own parser reads it, as Redis does.
            return self._exact(data)
        self.tail = [data[cut:]] if tail_len else []
        if cmds and self.on_commands(cmds, raw):
            # (What follows the SYNC is the raw stream's.)
            self.reader = hiredis.Reader()
            rest = b"".join(self.tail)
            self.tail = []
            return rest
        if tail_len:
            if data[cut : cut + 1] != _STAR:
                # An inline command next: Redis ends one at a bare LF, hiredis waits for a CRLF
                # that may never come (fuzzing found it). Our own parser reads it, as Redis does.
                self.reader = hiredis.Reader()
                self.tail = []
                return self._inline_data(data[cut:])
            self.unfinished = UnfinishedRequest(self.limits)
            self._check_tail(data[cut:], tail_len)
        return None

    def _checked_size(self, cmds: list[Any]) -> int:
        """Canonical byte size of these commands; raises for anything Redis would refuse."""
        limits = self.limits
        if not cmds:
            return 0
        try:
            args = list(chain.from_iterable(cmds))
            sizes = list(map(len, args))  # TypeError: an argument that is not a string
            if max(map(len, cmds)) > limits.max_multibulk_len:
                raise ClientProtocolError("Protocol error: invalid multibulk length")
            if max(sizes) > limits.max_bulk_len:
                raise ClientProtocolError("Protocol error: invalid bulk length")
            if sum(sizes) < 1 << 20:
                b"".join(args)  # TypeError unless every argument is a byte string
            elif any(type(a) is not bytes for a in args):
                raise TypeError
            return canonical_size(cmds, args, sizes)
        except TypeError:
            # A nested array or a non-string element: Redis accepts only bulk strings.
            raise ClientProtocolError("Protocol error: expected '$', got something else") from None

    def _worded(self, rest: bytes, found: ClientProtocolError) -> ClientProtocolError:
        """The error our own parser, which words errors as Redis does ("expected '$', got '~'"),
        finds in ``rest`` (the bytes from the bad command on); ``found`` if it finds none."""
        parser = RequestParser(self.limits)
        parser.feed(rest)
        try:
            parser.parse()
        except ClientProtocolError as exact:
            return exact
        return parser.error or found

    def _try_stream(self) -> None:
        """Offer the unfinished command for streaming if its last argument is the one arriving."""
        head = b"".join(self.tail)
        self.stream_next = 2 * len(head)  # (if it is not taken now)
        found = _streamable(head, self.limits.max_bulk_len)
        if found is None:
            return
        args, remaining = found
        if len(head) + remaining > self.limits.max_query_buffer:
            return  # (held, it meets the query buffer limit as Redis's own buffer would)
        assert self.on_stream is not None
        if not self.on_stream(args, head):
            return
        self.tail = []
        self.reader = hiredis.Reader()  # (it held the head: the command goes on without it)
        self.unfinished = UnfinishedRequest(self.limits)
        self.streaming = remaining

    def _acceptable(self, cmd: Any) -> bool:
        limits = self.limits
        return (
            type(cmd) is list
            and 0 < len(cmd) <= limits.max_multibulk_len
            and all(type(a) is bytes and len(a) <= limits.max_bulk_len for a in cmd)
        )

    def _check_tail(self, new: bytes, tail_len: int) -> None:
        """Check the unfinished command's new bytes ``new`` as Redis would (absurd lengths and
        header lines without their CRLF past the inline limit fail at once, however the bytes
        arrive), and hold it to the query-buffer limit."""
        if tail_len > self.limits.max_query_buffer:
            raise ClientProtocolError("Protocol error: query buffer limit exceeded")
        if self.unfinished.feed(new):  # cannot happen for a canonical client: hiredis found none
            raise ClientProtocolError("Protocol error: non-canonical request encoding")

    def _inline_data(self, data: bytes) -> bytes | None:
        """Requests through our own parser: inline commands, until the stream is at a boundary."""
        parser = self.parser
        if parser is None:
            parser = self.parser = RequestParser(self.limits)
        parser.feed(data)
        cmds = parser.parse()
        turned_raw = False
        if cmds:
            buf = parser.buffer
            raw = [bytes(buf[s:e]) if s >= 0 else None for _, s, e in cmds]
            turned_raw = self.on_each([c for c, _, _ in cmds], raw)
        parser.consume()
        if turned_raw:  # (the unparsed rest is the raw stream's)
            self.parser = None
            return bytes(parser.buffer)
        if parser.error is not None:
            raise parser.error
        if parser.pending_bytes() == 0:
            self.parser = None  # at a boundary: back to hiredis
        return None


def _streamable(head: bytes, max_bulk_len: int) -> tuple[list[bytes], int] | None:
    """The arguments of the unfinished command ``head`` starts (its last one empty) and how many
    of its bytes are still to come, when every argument but the last is complete in ``head`` and
    every header is canonical; else None (it is held and parsed whole, as before)."""
    end = head.find(b"\r\n")
    count = parse_length(head, 1, end) if head[:1] == _STAR and end > 0 else None
    if count is None or count < 2:
        return None
    pos = end + 2
    args: list[bytes] = []
    for i in range(count):
        if head[pos : pos + 1] != b"$":
            return None
        end = head.find(b"\r\n", pos)
        size = parse_length(head, pos + 1, end) if end > 0 else None
        if size is None or size < 0 or size > max_bulk_len:
            return None
        start = end + 2
        if i == count - 1:
            remaining = start + size + 2 - len(head)
            return ([*args, b""], remaining) if remaining > 0 else None
        if start + size + 2 > len(head) or head[start + size : start + size + 2] != b"\r\n":
            return None
        args.append(head[start : start + size])
        pos = start + size + 2
    return None


def _canonical(cmds: list[Any], raw: bytes) -> bool:
    """Whether ``raw`` is exactly ``cmds`` canonically encoded (hiredis reads more than Redis: a
    simple string or a big number where an argument should be, a length written "$04")."""
    if len(raw) > _WALK_HEADERS_FROM:
        return _headers_in_place(cmds, raw)
    return raw == b"".join([_pack(tuple(c)) for c in cmds])


def _headers_in_place(cmds: list[Any], raw: bytes) -> bool:
    """Whether ``raw`` is ``cmds`` canonically encoded: every header exactly where and as the
    canonical encoding has it, each payload followed by its CRLF (one step per argument, whatever
    the payloads' sizes)."""
    pos = 0
    for cmd in cmds:
        header = b"*%d\r\n" % len(cmd)
        if not raw.startswith(header, pos):
            return False
        pos += len(header)
        for arg in cmd:
            n = len(arg)
            header = b"$%d\r\n" % n
            if not raw.startswith(header, pos):
                return False
            pos += len(header) + n
            if not raw.startswith(b"\r\n", pos):
                return False
            pos += 2
    return pos == len(raw)
