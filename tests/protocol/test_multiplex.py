"""The pool's reply routing without sockets (proxy.multiplex.PooledConnection): requests of many
clients written in turn, Redis's replies cut into arbitrary reads, and every client handed exactly
its own reply bytes, in order, with the frame counts and boundaries it is told."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import Settings, parse_upstream
from proxy.multiplex import NO_PIN, PIN, PIN_FOR_GOOD, PooledConnection, UpstreamPool, needs_pin
from proxy.scanner import ReplyScanner
from proxy.stats import Stats
from proxy.upstream import UP, UpstreamOpener


class Written:
    """A transport that keeps what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def get_extra_info(self, name: str) -> Any:
        return None

    def abort(self) -> None:
        pass


class Client:
    """What the pool hands a client: its bytes, the frames they finish, whether they end whole."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.frames = 0
        self.bad_boundary = 0

    def deliver(self, conn: Any, data: bytes, done: int, whole: bool) -> None:
        self.received += data
        self.frames += done
        if whole:
            scanner = ReplyScanner()
            scanner.feed(bytes(self.received))
            self.bad_boundary += not scanner.at_boundary


def bulk(payload: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(payload), payload)


reply = st.recursive(
    st.one_of(
        st.binary(max_size=40).map(bulk),
        st.integers(-(10**6), 10**6).map(lambda n: b":%d\r\n" % n),
        st.sampled_from([b"+OK\r\n", b"$-1\r\n", b"-ERR wrong\r\n", b"*0\r\n", b"_\r\n", b"#t\r\n"]),
    ),
    lambda inner: st.lists(inner, min_size=1, max_size=4).map(lambda xs: b"*%d\r\n" % len(xs) + b"".join(xs)),
    max_leaves=8,
)


def pool() -> UpstreamPool:
    settings = Settings(upstream="redis://127.0.0.1:1", port=0).validate()
    return UpstreamPool(UpstreamOpener(settings, parse_upstream(settings.upstream)), Stats(), 1)


@settings(max_examples=150, deadline=None)
@given(
    sends=st.lists(
        st.tuples(st.integers(0, 4), st.lists(reply, min_size=1, max_size=5)), min_size=1, max_size=25
    ),
    cuts=st.lists(st.integers(1, 64), min_size=1, max_size=200),
)
def test_every_client_gets_exactly_its_replies_however_they_are_read(
    sends: list[tuple[int, list[bytes]]], cuts: list[int]
) -> None:
    clients = [Client() for _ in range(5)]
    conn = PooledConnection(pool(), False)
    transport = Written()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.state = UP

    async def run() -> None:
        for who, replies in sends:
            conn.send(clients[who], b"request", len(replies))  # type: ignore[arg-type]
        conn.flush()

    asyncio.run(run())
    stream = b"".join(b"".join(replies) for _, replies in sends)
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        conn.data_received(stream[pos : pos + step])
        pos += step
        i += 1
    assert bytes(transport.data) == b"request" * len(sends)  # (one write for the turn)
    for who, client in enumerate(clients):
        mine = [r for w, replies in sends if w == who for r in replies]
        assert bytes(client.received) == b"".join(mine)
        assert client.frames == len(mine)
        assert client.bad_boundary == 0
    assert not conn.routes


def test_prelude_replies_are_not_handed_to_anyone() -> None:
    clients = [Client()]
    conn = PooledConnection(pool(), False)
    conn.connection_made(Written())  # type: ignore[arg-type]
    conn.state = UP
    conn.routes.append([None, 1])

    async def run() -> None:
        conn.send(clients[0], b"GET k", 1)  # type: ignore[arg-type]

    asyncio.run(run())
    conn.data_received(b"+OK\r\n$1\r\nv\r\n")
    assert bytes(clients[0].received) == b"$1\r\nv\r\n" and clients[0].frames == 1


def test_which_commands_pin_a_client() -> None:
    assert needs_pin(b"INFO", [b"INFO"]) == NO_PIN
    assert needs_pin(b"CLIENT", [b"CLIENT", b"SETINFO", b"LIB-NAME", b"x"]) == NO_PIN
    assert needs_pin(b"XREAD", [b"XREAD", b"STREAMS", b"s", b"0"]) == NO_PIN
    assert needs_pin(b"XREAD", [b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"$"]) == PIN
    for name in (b"MULTI", b"WATCH", b"SELECT", b"AUTH", b"SUBSCRIBE", b"BLPOP", b"RESET"):
        assert needs_pin(name, [name, b"x"]) == PIN
    assert needs_pin(b"CLIENT", [b"CLIENT", b"TRACKING", b"ON"]) == PIN
    assert needs_pin(b"CLIENT", [b"CLIENT", b"ID"]) == PIN_FOR_GOOD
    assert needs_pin(b"CLIENT", [b"CLIENT", b"NO-EVICT", b"ON"]) == PIN_FOR_GOOD
    assert needs_pin(b"MONITOR", [b"MONITOR"]) == PIN_FOR_GOOD
    assert needs_pin(b"READONLY", [b"READONLY"]) == PIN_FOR_GOOD
    assert needs_pin(b"REPLCONF", [b"REPLCONF", b"rdb-only", b"1"]) == PIN_FOR_GOOD
    assert needs_pin(b"SCRIPT", [b"SCRIPT", b"DEBUG", b"YES"]) == PIN_FOR_GOOD
    assert needs_pin(b"SCRIPT", [b"SCRIPT", b"LOAD", b"return 1"]) == NO_PIN
    from proxy.session import SPECIAL

    assert {
        b"READONLY",
        b"READWRITE",
        b"ASKING",
        b"WAIT",
        b"CLIENT",
        b"REPLCONF",
        b"SCRIPT",
    } <= SPECIAL  # (the dispatcher sees them)
