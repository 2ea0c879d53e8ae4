"""RESP requests without I/O, and the encoders.

``RequestParser`` splits a client's byte stream into commands (RESP multibulk or inline), enforcing
Redis's own request limits, and reports each command's byte span so the transport can forward the
client's exact bytes instead of re-encoding them; ``UnfinishedRequest`` checks the unfinished
command at the end of a read as Redis would. Replies are framed by ``proxy.scanner``. Nothing in
this module touches a socket or an event loop.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import hiredis

from common.errors import ClientProtocolError

# Limits, with Redis's defaults (redis.conf): proto-max-bulk-len is 512 MB; a multibulk may hold at
# most 1024*1024 arguments (server.h, "invalid multibulk length" above that); inline requests and
# unfinished header lines are capped at PROTO_INLINE_MAX_SIZE = 64 KiB; client-query-buffer-limit
# is 1 GB.
MAX_BULK_LEN = 512 * 1024 * 1024
MAX_MULTIBULK_LEN = 1024 * 1024
MAX_INLINE_LEN = 64 * 1024
MAX_QUERY_BUFFER = 1024 * 1024 * 1024

_CRLF = b"\r\n"
_STAR = 42  # '*'
_DOLLAR = 36  # '$'


@dataclass(frozen=True, slots=True)
class Limits:
    max_bulk_len: int = MAX_BULK_LEN
    max_multibulk_len: int = MAX_MULTIBULK_LEN
    max_inline_len: int = MAX_INLINE_LEN
    max_query_buffer: int = MAX_QUERY_BUFFER


# A parsed command: its arguments, and the span [start, end) of its bytes in the parser's buffer,
# or start == -1 for an inline command (whose bytes must be re-encoded before forwarding).
Command = tuple[list[bytes], int, int]


class RequestParser:
    """Incremental parser of client requests.

    ``feed(data)`` appends bytes; ``parse()`` returns the complete commands now buffered, with their
    spans into ``buffer``. The caller forwards ``buffer[start:end]`` slices, then calls ``consume()``.
    A protocol violation raises ``ClientProtocolError`` with Redis's wording; commands completed
    before the bad bytes are handed out first (Redis executes those too).
    """

    __slots__ = ("buffer", "_pos", "_limits", "_args", "_want", "_cmd_start", "_error")

    def __init__(self, limits: Limits | None = None) -> None:
        self.buffer = bytearray()
        self._pos = 0  # first byte not yet parsed
        self._limits = limits or Limits()
        self._args: list[bytes] = []  # arguments of the command being parsed
        self._want = 0  # arguments still expected; 0 means "at a command boundary"
        self._cmd_start = 0
        self._error: ClientProtocolError | None = None

    def feed(self, data: bytes) -> None:
        self.buffer += data

    @property
    def error(self) -> ClientProtocolError | None:
        """A protocol error found after the commands last returned; ``parse()`` raises it next."""
        return self._error

    def pending_bytes(self) -> int:
        """Bytes of an unfinished command held in the buffer (the query buffer, in Redis terms)."""
        return len(self.buffer) - (self._cmd_start if self._want else self._pos)

    def consume(self) -> None:
        """Drop the bytes of every command already returned. O(1) on CPython's bytearray."""
        keep_from = self._cmd_start if self._want else self._pos
        if keep_from:
            del self.buffer[:keep_from]
            self._pos -= keep_from
            self._cmd_start -= keep_from

    def parse(self) -> list[Command]:
        if self._error is not None:
            raise self._error
        out: list[Command] = []
        try:
            self._parse_into(out)
        except ClientProtocolError as exc:
            if not out:
                raise
            self._error = exc  # raised on the next call, after the good commands are served
        if self.pending_bytes() > self._limits.max_query_buffer:
            if not out:
                raise ClientProtocolError("Protocol error: query buffer limit exceeded")
            self._error = ClientProtocolError("Protocol error: query buffer limit exceeded")
        return out

    def _parse_into(self, out: list[Command]) -> None:
        buf = self.buffer
        n = len(buf)
        pos = self._pos
        lim = self._limits
        try:
            while pos < n:
                if not self._want:
                    # At a command boundary.
                    if buf[pos] != _STAR:
                        nl = buf.find(b"\n", pos)
                        if nl < 0:
                            if n - pos > lim.max_inline_len:
                                raise ClientProtocolError("Protocol error: too big inline request")
                            return
                        line = bytes(buf[pos:nl]).rstrip(b"\r")
                        if nl - pos > lim.max_inline_len:
                            raise ClientProtocolError("Protocol error: too big inline request")
                        pos = nl + 1
                        args = split_inline(line)
                        if args:
                            out.append((args, -1, -1))
                        continue
                    nl = buf.find(_CRLF, pos)
                    if nl < 0:
                        if n - pos > lim.max_inline_len:
                            raise ClientProtocolError("Protocol error: too big mbulk count string")
                        return
                    count = parse_length(buf, pos + 1, nl)
                    if count is None or count > lim.max_multibulk_len:
                        raise ClientProtocolError("Protocol error: invalid multibulk length")
                    if count <= 0:  # Redis ignores *0 and *-1
                        pos = nl + 2
                        continue
                    self._cmd_start = pos
                    self._want = count
                    self._args = []
                    pos = nl + 2
                # Inside a multibulk: read bulk arguments.
                args = self._args
                while self._want:
                    if pos >= n:
                        return
                    if buf[pos] != _DOLLAR:
                        got = chr(buf[pos])
                        raise ClientProtocolError(f"Protocol error: expected '$', got '{got}'")
                    nl = buf.find(_CRLF, pos)
                    if nl < 0:
                        if n - pos > lim.max_inline_len:
                            raise ClientProtocolError("Protocol error: too big bulk count string")
                        return
                    size = parse_length(buf, pos + 1, nl)
                    if size is None or size < 0 or size > lim.max_bulk_len:
                        raise ClientProtocolError("Protocol error: invalid bulk length")
                    end = nl + 2 + size
                    if end + 2 > n:
                        return  # the header is re-read on the next feed: a few bytes, not the payload
                    # Like Redis, skip the two bytes after the payload without checking them.
                    args.append(bytes(buf[nl + 2 : end]))
                    pos = end + 2
                    self._want -= 1
                out.append((args, self._cmd_start, pos))
        finally:
            self._pos = pos


class UnfinishedRequest:
    """Follows the unfinished multibulk command at the end of a client's stream (the bytes the
    transport holds until hiredis returns the command) and checks it as Redis would while it
    arrives, whatever the split: a header line (``*N``, ``$N``) longer than ``max_inline_len``
    without its CRLF, an absurd count or length, or a non-``$`` argument fails at once. Payloads
    are skipped by length and never kept, so a 512 MB argument costs one step per read, and a
    header line is searched only where its new bytes begin.

    ``feed(data)`` returns True if a whole command ended inside what was fed: the caller's
    framing found none there, so the client's encoding is not the canonical one it relies on.
    """

    __slots__ = ("_limits", "_line", "_want", "_skip")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._line = bytearray()  # the header line read so far (at most max_inline_len + 2 bytes)
        self._want = 0  # arguments still to come; 0: before the command's ``*N`` line
        self._skip = 0  # payload bytes (and their CRLF) of the current argument still to pass

    def feed(self, data: bytes) -> bool:
        pos, n = 0, len(data)
        lim = self._limits
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                if not self._skip and not self._want:
                    return True
                continue
            line = self._line
            old = len(line)
            line += data[pos : pos + lim.max_inline_len + 2 - old]
            nl = line.find(_CRLF, max(0, old - 1))
            if nl < 0:
                if len(line) > lim.max_inline_len:
                    raise ClientProtocolError(self._too_big())
                pos += len(line) - old
                continue
            pos += nl + 2 - old
            header = bytes(line[:nl])
            line.clear()
            if self._header(header):
                return True
        return False

    def _header(self, line: bytes) -> bool:
        """Act on one complete header line; True if it completed a command (``$0`` never does:
        its CRLF still follows)."""
        lim = self._limits
        if not self._want:
            if line[:1] != b"*":  # (the caller hands over multibulk commands only)
                raise ClientProtocolError(
                    "Protocol error: expected '*', got " + repr(line[:1].decode("latin-1"))
                )
            count = parse_length(line, 1, len(line))
            if count is None or count > lim.max_multibulk_len:
                raise ClientProtocolError("Protocol error: invalid multibulk length")
            self._want = max(count, 0)  # Redis ignores *0 and *-1
            return False
        if line[:1] != b"$":
            got = line[:1].decode("latin-1") or "\\r"
            raise ClientProtocolError(f"Protocol error: expected '$', got '{got}'")
        size = parse_length(line, 1, len(line))
        if size is None or size < 0 or size > lim.max_bulk_len:
            raise ClientProtocolError("Protocol error: invalid bulk length")
        self._want -= 1
        self._skip = size + 2
        return False

    def _too_big(self) -> str:
        if not self._want:
            return "Protocol error: too big mbulk count string"
        return "Protocol error: too big bulk count string"


# The lengths Redis's string2ll reads: "0", or an optional "-" and digits without a leading zero
# (no "+", spaces, underscores or "04", all of which Python's int() takes), within a long long.
_LENGTH = re.compile(rb"0|-?[1-9][0-9]{0,18}")


def parse_length(buf: bytes | bytearray, start: int, end: int) -> int | None:
    """A multibulk or bulk length as Redis reads it (None: Redis refuses it)."""
    text = bytes(buf[start:end])
    if _LENGTH.fullmatch(text) is None:
        return None
    value = int(text)
    return value if -(1 << 63) <= value < 1 << 63 else None


_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("a"): b"\a"}


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command like Redis's sdssplitargs: spaces separate, quotes group.

    Double quotes understand \\xHH and the usual backslash escapes; single quotes only \\'.
    A closing quote must be followed by a space or the end of the line.
    """
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \t\r\n\v\f":
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        quote = 0
        while i < n:
            c = line[i]
            if quote == 0:
                if c in b" \t\r\n\v\f":
                    break
                if c in b"\"'":
                    quote = c
                else:
                    cur.append(c)
                i += 1
                continue
            if quote == 34 and c == 92 and i + 3 < n and line[i + 1] == ord("x"):
                hexpart = line[i + 2 : i + 4]
                try:
                    cur.append(int(hexpart, 16))
                    i += 4
                    continue
                except ValueError:
                    pass
            if c == 92 and i + 1 < n and (quote == 34 or line[i + 1] == 39):
                nxt = line[i + 1]
                cur += _ESCAPES.get(nxt, bytes([nxt])) if quote == 34 else b"'"
                i += 2
                continue
            if c == quote:
                i += 1
                if i < n and line[i] not in b" \t\r\n\v\f":
                    raise ClientProtocolError("Protocol error: unbalanced quotes in request")
                quote = 0
                break
            cur.append(c)
            i += 1
        if quote:
            raise ClientProtocolError("Protocol error: unbalanced quotes in request")
        args.append(bytes(cur))


def encode_command(args: Sequence[bytes | str]) -> bytes:
    """One command as a RESP multibulk; str arguments are UTF-8 encoded (hiredis does it)."""
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
    return packed


def as_str(x: bytes | str) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else x


def encode_error(message: str) -> bytes:
    return b"-" + message.replace("\r", " ").replace("\n", " ").encode() + _CRLF


def encode_bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode_verbatim(data: bytes, fmt: bytes = b"txt") -> bytes:
    body = fmt + b":" + data
    return b"=%d\r\n%s\r\n" % (len(body), body)
