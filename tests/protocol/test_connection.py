"""A client connection driven without sockets: bytes in from the client and from Redis, bytes out
to each, through in-memory transports. The request dispatch, the reply slots and the session
state are the connection's own logic, so they are tested here without a network or a loop."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.config import Settings
from proxy.connection import UP, ClientConnection, UpstreamProtocol
from proxy.resp import encode_command
from proxy.server import ProxyServer


class MemoryTransport(asyncio.Transport):
    """What a transport is told: bytes written, reading paused, closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def take(self) -> bytes:
        out, self.written = bytes(self.written), bytearray()
        return out

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class Wired:
    """A ClientConnection of a real (never started) ProxyServer, its upstream already connected."""

    def __init__(self, **settings: Any) -> None:
        server = ProxyServer(Settings(upstream="redis://127.0.0.1:1", port=0, **settings).validate())
        self.conn = ClientConnection(server)
        self.client = MemoryTransport()
        self.conn.connection_made(self.client)
        self.redis = MemoryTransport()
        self.up = UpstreamProtocol(self.conn)
        self.up.connection_made(self.redis)
        self.conn.up, self.conn.up_state = self.up, UP

    def send(self, *cmds: list[bytes], raw: bytes = b"") -> bytes:
        """The client sends these commands; returns what reached Redis."""
        self.conn.data_received(b"".join(encode_command(c) for c in cmds) + raw)
        return self.redis.take()

    def reply(self, data: bytes) -> bytes:
        """Redis sends ``data``; returns what reached the client."""
        self.conn.upstream_data(self.up, data)
        return self.client.take()


def test_plain_pipeline_is_forwarded_and_answered_byte_for_byte() -> None:
    w = Wired(hot_tier="off")
    cmds = [[b"SET", b"k", b"v"], [b"GET", b"k"], [b"INCR", b"n"]]
    assert w.send(*cmds) == b"".join(encode_command(c) for c in cmds)
    replies = b"+OK\r\n$1\r\nv\r\n:1\r\n"
    assert w.reply(replies[:7]) + w.reply(replies[7:]) == replies
    assert not w.conn.pending


def test_select_changes_the_db_only_once_redis_accepts_it() -> None:
    w = Wired(hot_tier="off")
    w.send([b"SELECT", b"3"], [b"SELECT", b"99"])
    assert w.conn.db == 0 and w.conn.state_pending == 2  # (the request side does not know yet)
    assert w.reply(b"+OK\r\n") == b"+OK\r\n" and w.conn.db == 3
    assert w.reply(b"-ERR DB index is out of range\r\n").startswith(b"-ERR") and w.conn.db == 3
    assert w.conn.state_pending == 0


def test_resp3_attribute_is_not_a_reply_on_the_fast_path() -> None:
    """Issue 18: after HELLO 3 the reply side counts with hiredis; an attribute frame before a
    reply used to count as one, retiring the next request's slot, so a local reply overtook it."""
    w = Wired(hot_tier="off")
    w.send([b"HELLO", b"3"])
    w.reply(b"%1\r\n+proto\r\n:3\r\n")
    w.send([b"PING"])  # a plain round: the reply side is in fast mode from here
    assert w.reply(b"+PONG\r\n") == b"+PONG\r\n" and w.conn.fast and w.conn.resp3
    attrib = b"|1\r\n+key-popularity\r\n*2\r\n$1\r\na\r\n:90\r\n$2\r\nok\r\n"
    w.send([b"DEBUG", b"PROTOCOL", b"attrib"], [b"BLPOP", b"q", b"0"])
    assert w.reply(attrib) == attrib
    assert len(w.conn.pending) == 1  # BLPOP's slot is still owed
    # The proxy's own reply must wait for BLPOP's: it asks Redis for a boundary (an ECHO).
    echo = w.send([b"PREDIS", b"STATS"])
    assert echo.startswith(b"*2\r\n$4\r\nECHO\r\n") and w.client.take() == b""
    token = echo.split(b"\r\n")[-2]
    blpop = b"*2\r\n$1\r\nq\r\n$4\r\nitem\r\n"
    out = w.reply(blpop + b"$%d\r\n%s\r\n" % (len(token), token))
    assert out.startswith(blpop) and out[len(blpop) :].startswith(b"$") and b"# Predis" in out


def test_resp3_push_before_a_reply_answers_nothing() -> None:
    w = Wired(hot_tier="off")
    w.send([b"HELLO", b"3"])
    w.reply(b"%1\r\n+proto\r\n:3\r\n")
    w.send([b"GET", b"a"], [b"GET", b"b"])
    push = b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n"
    assert w.reply(push + b"$1\r\n1\r\n") == push + b"$1\r\n1\r\n"
    assert len(w.conn.pending) == 1 and w.conn.pending[0][0] == 1  # one GET still owed


def test_sync_waits_for_earlier_replies_then_the_connection_is_a_raw_pipe() -> None:
    """Issue 18: SYNC is held until the replies before it are in, then both directions pass
    bytes unparsed: an RDB payload without CRLF, the replication feed, anything the client sends."""
    w = Wired(hot_tier="off")
    assert w.send([b"PING"], [b"SYNC"], raw=b"garbage that is not RESP") == encode_command([b"PING"])
    assert w.reply(b"+PONG\r\n") == b"+PONG\r\n"
    assert w.redis.take() == encode_command([b"SYNC"]) + b"garbage that is not RESP"  # (sent now)
    rdb = b"\n\n$9\r\nREDIS0010" + b"*1\r\n$4\r\nPING\r\n"
    assert w.reply(rdb) == rdb
    assert w.send(raw=b"REPLCONF ACK 0\r\n\x00\xff") == b"REPLCONF ACK 0\r\n\x00\xff"
    assert w.conn.raw and w.conn.raw_rep and not w.conn.pending


def test_endless_header_line_is_cut_at_the_inline_limit() -> None:
    w = Wired(hot_tier="off")
    w.conn.data_received(b"*\x00" + b"x" * 60_000)
    assert not w.client.closed
    w.conn.data_received(b"x" * 10_000)
    assert w.client.take() == b"-ERR Protocol error: too big mbulk count string\r\n" and w.client.closed


def test_bytes_held_behind_a_sync_are_bounded_like_a_query_buffer() -> None:
    """While SYNC waits for the replies before it, what the client sends after it is held: past
    the query-buffer limit the client gets the error after the replies it is owed, nothing held
    reaches Redis, and the connection closes."""
    w = Wired(hot_tier="off", query_buffer_limit=10_000)
    assert w.send([b"BLPOP", b"q", b"0"], [b"SYNC"]) == encode_command([b"BLPOP", b"q", b"0"])
    w.conn.data_received(b"x" * 20_000)
    assert w.redis.take() == b"" and w.client.take() == b""  # (BLPOP's reply comes first)
    out = w.reply(b"*-1\r\n")
    assert out == b"*-1\r\n-ERR Protocol error: query buffer limit exceeded\r\n"
    assert w.client.closed and w.redis.take() == b"" and not w.conn.raw_rep
