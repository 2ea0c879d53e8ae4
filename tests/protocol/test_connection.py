"""A client connection driven without sockets: bytes in from the client and from Redis, bytes out
to each, through in-memory transports. The request dispatch, the reply slots and the session
state are the connection's own logic, so they are tested here without a network or a loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.config import Settings
from proxy.connection import ClientConnection
from proxy.keyspace import CommandInfo, CommandTable, KeySpec
from proxy.resp import encode_command
from proxy.server import ProxyServer
from proxy.session import Session
from proxy.slots import NO_SLOT, Answer, Capture, Run


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
    """A ClientConnection of a real (never started) ProxyServer, its upstream already connected.
    With the tier on, the tier is made active and given a command table (the server's loop that
    reads them never runs); ``seen``: what the access sink was told, per key."""

    def __init__(self, **settings: Any) -> None:
        self.seen: list[tuple[int, bytes, bool]] = []
        settings.setdefault("upstream_pool", 0)  # (the client's own upstream connection, wired here)
        server = ProxyServer(
            Settings(upstream="redis://127.0.0.1:1", port=0, **settings).validate(),
            access=lambda stream, db, keys, hit: self.seen.extend((db, k, hit) for k in keys),
        )
        self.tier = server.tier
        if self.tier is not None:
            self.tier.active = True
            set_spec = KeySpec("index", index=1, find="range", lastkey=0)
            server.shared.command_table = CommandTable({b"SET": CommandInfo(b"SET", True, [set_spec])})
            server.shared.filler = None  # (fills need the loop and Redis: tests/e2e/test_tier.py)
        self.conn = ClientConnection(server.shared)
        self.client = MemoryTransport()
        self.conn.connection_made(self.client)
        self.redis = MemoryTransport()
        self.up = self.conn._new_upstream_protocol()
        self.up.connection_made(self.redis)
        self.conn.upstream.attach(self.up)

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
    assert (
        w.conn.session.db == 0 and w.conn.session.state_pending == 2
    )  # (the request side does not know yet)
    assert w.reply(b"+OK\r\n") == b"+OK\r\n" and w.conn.session.db == 3
    assert w.reply(b"-ERR DB index is out of range\r\n").startswith(b"-ERR") and w.conn.session.db == 3
    assert w.conn.session.state_pending == 0


def test_resp3_attribute_is_not_a_reply_on_the_fast_path() -> None:
    """Issue 18: after HELLO 3 the reply side counts with hiredis; an attribute frame before a
    reply used to count as one, retiring the next request's slot, so a local reply overtook it."""
    w = Wired(hot_tier="off")
    w.send([b"HELLO", b"3"])
    w.reply(b"%1\r\n+proto\r\n:3\r\n")
    w.send([b"PING"])  # a plain round: the reply side is in fast mode from here
    assert w.reply(b"+PONG\r\n") == b"+PONG\r\n" and w.conn.replies.fast and w.conn.session.resp3
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
    assert len(w.conn.pending) == 1 and w.conn.pending[0].count == 1  # one GET still owed


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


def hold(w: Wired, key: bytes, value: bytes) -> None:
    """Put ``key`` in the tier as a fill would (for the default user, db 0)."""
    assert w.tier is not None
    token = w.tier.begin_fill(0, key)
    assert token is not None
    assert w.tier.complete_fill(0, key, token, value, -1, w.tier.clock(), "default")


def accepted(w: Wired) -> None:
    """A first round trip: Redis accepts the connection as it is, so the tier may serve it."""
    w.send([b"PING"])
    assert w.reply(b"+PONG\r\n") == b"+PONG\r\n" and w.conn.session.verified


def test_session_decides_and_the_connection_acts() -> None:
    """Session.special returns what to do, it does nothing itself: a local answer, a slot, none."""
    server = ProxyServer(Settings(upstream="redis://127.0.0.1:1", port=0).validate())
    session = Session(server.upstream, server.stats)
    quit_ = session.special(b"QUIT", [b"QUIT"], 1.0)
    assert type(quit_) is Answer and quit_.reply == b"+OK\r\n" and quit_.close
    select = session.special(b"SELECT", [b"SELECT", b"2"], 1.0)
    assert type(select) is Capture and session.state_pending == 1 and session.db == 0
    assert select.fn(b"+OK\r\n") == b"+OK\r\n" and session.db == 2 and session.state_pending == 0
    assert session.prelude() == [encode_command([b"SELECT", b"2"])]  # what a reconnect replays
    blocking = session.special(b"BLPOP", [b"BLPOP", b"q", b"0"], 1.0)
    assert type(blocking) is Run and blocking.count == 1 and blocking.sent == 0.0  # no timeout
    assert session.special(b"CLIENT", [b"CLIENT", b"REPLY", b"OFF"], 1.0) is NO_SLOT
    predis = session.special(b"PREDIS", [b"PREDIS", b"STATS"], 1.0)
    assert type(predis) is Answer and predis.reply is None and not predis.close  # (replies are off)


def test_a_read_of_hits_is_served_and_a_miss_forwarded_each_told_once() -> None:
    w = Wired(hot_tier="cpu")
    accepted(w)
    hold(w, b"a", b"1")
    assert w.send([b"GET", b"a"]) == b"" and w.client.take() == b"$1\r\n1\r\n"  # served
    assert w.send([b"GET", b"b"]) == encode_command([b"GET", b"b"])  # forwarded
    assert [type(slot) for slot in w.conn.pending] == [Run]
    assert w.reply(b"$-1\r\n") == b"$-1\r\n" and not w.conn.pending
    two = [[b"GET", b"a"], [b"MGET", b"a", b"c"]]
    w.send(*two)  # (a general-path read: a hit, then an MGET not all held, forwarded)
    assert w.seen == [(0, b"a", True), (0, b"b", False), (0, b"a", True), (0, b"a", False), (0, b"c", False)]


def test_with_replies_off_reads_are_still_told_and_writes_still_drop_their_keys() -> None:
    """Under CLIENT REPLY OFF the tier serves nothing, but every GET still reaches the access sink
    and a write through the proxy drops its key at once (before, on this path, the key stayed
    held until Redis's tracking message came)."""
    w = Wired(hot_tier="cpu")
    accepted(w)
    hold(w, b"k", b"old")
    w.send([b"CLIENT", b"REPLY", b"OFF"], [b"GET", b"k"], [b"SET", b"k", b"new"])
    assert w.seen == [(0, b"k", False)]
    assert w.tier is not None and (0, b"k") not in w.tier.entries


def test_a_command_is_streamed_only_when_its_arriving_argument_is_no_key() -> None:
    """With the tier, a streamed write drops its keys before its last argument has arrived, so
    that argument must not be one of them (the tier could not drop a key it cannot name)."""
    w = Wired(hot_tier="cpu")
    dispatch = w.conn.dispatch
    head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048576\r\nxx"
    tier = w.tier
    token = tier.begin_fill(0, b"k")
    assert tier.complete_fill(0, b"k", token, b"old", -1, tier.clock(), "default", False)
    assert (0, b"k") in tier.entries  # (what the write must drop)
    assert dispatch.stream([b"SET", b"k", b""], head) is True
    assert (0, b"k") not in w.tier.entries and w.redis.take() == head
    slot = w.conn.pending[-1]
    assert slot.sent == 0.0  # (no timeout while it uploads)
    dispatch.stream_bytes(b"yy", False)
    assert w.redis.take() == b"yy" and slot.sent == 0.0
    dispatch.stream_bytes(b"zz", True)  # (its last bytes: the reply's clock starts now)
    assert w.redis.take() == b"zz" and slot.sent > 0.0
    # SET <key arriving>: refused, held whole; as is anything in MULTI.
    assert dispatch.stream([b"SET", b""], b"*2\r\n$3\r\nSET\r\n$1048576\r\nkk") is False
    w.conn.session.in_multi = True
    assert dispatch.stream([b"SET", b"k2", b""], head) is False


def test_an_upstream_lost_in_the_middle_of_a_streamed_argument_closes_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rest of a value must never reach a new upstream connection, where its bytes would be
    read as commands (a value may hold "FLUSHALL"): the client gets the error and is closed, and
    what it sends after is not forwarded anywhere."""
    import proxy.requests

    monkeypatch.setattr(proxy.requests, "STREAM_FROM", 64)
    w = Wired(hot_tier="off")
    assert w.send(raw=b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\n" + b"v" * 100).startswith(b"*3\r\n$3\r\nSET")
    assert w.conn.requests.streaming > 0
    w.conn.upstream_lost(w.up, None)
    assert b"upstream connection lost" in w.client.take() and w.conn.closing
    assert w.send(raw=b"v" * 900 + b"\r\n" + encode_command([b"FLUSHALL"])) == b""
