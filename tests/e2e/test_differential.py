"""Differential testing against Redis itself: hypothesis writes programs of random commands
(strings, counters, lists, hashes, sets, expiry, SELECT, MULTI/EXEC/WATCH, pipelines of mixed
length) over two client connections, and each program runs on a proxy (hot tier and live
prefetching on) in front of one Redis and directly on a second Redis of the same version. Every
reply must be byte for byte the same: the tier serving reads, prefetches landing meanwhile and
invalidations from the other connection's writes never show."""

from __future__ import annotations

import os
import re
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.embedded import EmbeddedRedis
from proxy.resp import encode_command
from tests.helpers import read_frames, wait_for

KEYS = [b"k0", b"k1", b"k2"]
key = st.sampled_from(KEYS)
value = st.sampled_from([b"", b"1", b"v", b"-3", b"10", b"x" * 40, b"\x00\r\n"])
number = st.integers(-3, 5).map(lambda n: str(n).encode())
field = st.sampled_from([b"f", b"g"])

COMMANDS = st.one_of(
    st.tuples(st.just(b"GET"), key),
    st.tuples(st.just(b"GET"), key),  # (reads three times as often: the tier's path)
    st.tuples(st.just(b"GET"), key),
    st.tuples(st.just(b"SET"), key, value),
    st.tuples(st.just(b"SET"), key, value, st.sampled_from([b"NX", b"XX", b"GET"])),
    st.tuples(st.just(b"SET"), key, value, st.just(b"EX"), st.just(b"1000")),
    st.tuples(st.just(b"MGET"), key, key),
    st.tuples(st.just(b"MSET"), key, value, key, value),
    st.tuples(st.just(b"DEL"), key),
    st.tuples(st.just(b"EXISTS"), key, key),
    st.tuples(st.sampled_from([b"INCR", b"DECR", b"STRLEN", b"TYPE", b"PERSIST", b"GETDEL"]), key),
    st.tuples(st.just(b"INCRBY"), key, number),
    st.tuples(st.just(b"APPEND"), key, value),
    st.tuples(st.just(b"EXPIRE"), key, st.just(b"1000")),
    st.tuples(st.sampled_from([b"LPUSH", b"RPUSH", b"SADD"]), key, value),
    st.tuples(st.sampled_from([b"LPOP", b"RPOP", b"SCARD", b"LLEN"]), key),
    st.tuples(st.just(b"LRANGE"), key, st.just(b"0"), st.just(b"-1")),
    # (a set's members sorted: SMEMBERS's order follows each server's own hash seed, so two Redis
    # processes given the same commands may list them differently; found by a 15,000-program run)
    st.tuples(st.just(b"SORT"), key, st.just(b"ALPHA")),
    st.tuples(st.just(b"HSET"), key, field, value),
    st.tuples(st.sampled_from([b"HGET", b"HDEL"]), key, field),
    st.tuples(st.just(b"HGETALL"), key),
    st.tuples(st.just(b"SELECT"), st.sampled_from([b"0", b"1"])),
    # Writes that change keys other than by SET: the tier must drop what they touch.
    st.tuples(st.sampled_from([b"RENAME", b"COPY", b"RENAMENX"]), key, key),
    st.tuples(st.just(b"MOVE"), key, st.sampled_from([b"0", b"1"])),
    st.tuples(st.just(b"SWAPDB"), st.just(b"0"), st.just(b"1")),
    st.tuples(st.sampled_from([b"FLUSHDB", b"DBSIZE"])),
    st.tuples(st.just(b"SETRANGE"), key, st.sampled_from([b"0", b"2"]), value),
    st.tuples(st.just(b"GETRANGE"), key, st.just(b"0"), st.just(b"1")),
    st.tuples(st.just(b"GETSET"), key, value),
    st.tuples(st.just(b"GETEX"), key, st.sampled_from([b"PERSIST", b"EX"]), st.just(b"1000")).map(
        lambda c: c if c[2] == b"EX" else c[:3]
    ),
    st.tuples(st.just(b"INCRBYFLOAT"), key, st.sampled_from([b"1.5", b"-2"])),
    st.tuples(st.sampled_from([b"SETNX", b"MSETNX"]), key, value),
    st.tuples(st.just(b"UNLINK"), key, key),
    # Connection state (replies that do not name the connection, so both sides answer alike).
    st.tuples(st.just(b"CLIENT"), st.just(b"SETNAME"), st.sampled_from([b"a", b"b", b""])),
    st.tuples(st.just(b"CLIENT"), st.just(b"GETNAME")),
    st.tuples(st.just(b"HELLO"), st.sampled_from([b"2", b"3"])),  # (its reply's id is masked)
).map(list)

# A step: one connection sends a pipeline (1-6 commands), a MULTI/EXEC block, or WATCH.
STEP = st.tuples(
    st.integers(0, 1),
    st.one_of(
        st.lists(COMMANDS, min_size=1, max_size=6),
        st.lists(COMMANDS, min_size=1, max_size=4).map(lambda cmds: [[b"MULTI"], *cmds, [b"EXEC"]]),
        st.tuples(key).map(lambda k: [[b"WATCH", k[0]]]),
    ),
)


class Side:
    """Two raw connections to one server (the proxy, or Redis directly)."""

    def __init__(self, port: int) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(2)]

    def run(self, conn: int, commands: list[list[bytes]]) -> list[bytes]:
        sock = self.socks[conn]
        sock.sendall(b"".join(encode_command(c) for c in commands))
        return read_frames(sock, len(commands))

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.fixture(scope="module")
def pair() -> Any:
    """A proxy (tier and live prefetching on) in front of one Redis, and a second Redis."""
    from proxy.config import Settings
    from tests.conftest import TEST_HOT_TIER, RunningProxy

    with EmbeddedRedis() as behind, EmbeddedRedis() as reference:
        settings = Settings(
            upstream=behind.url,
            port=0,
            hot_tier=TEST_HOT_TIER,
            prefetch="markov",
            prefetch_engine_priority="normal",
            prefetch_max_age=60.0,
        ).validate()
        proxy = RunningProxy(settings, None, None)
        try:
            wait_for(lambda: proxy.server.tier.active and proxy.server.prediction.ready, timeout=30)
            yield proxy, reference
        finally:
            proxy.close()


@settings(
    max_examples=int(os.environ.get("PREDIS_TEST_EXAMPLES", "500")),
    stateful_step_count=1,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=st.lists(STEP, min_size=1, max_size=25))
def test_the_proxy_answers_every_program_as_redis_does(pair: Any, program: list[Any]) -> None:
    compare(pair, program)


HELLO_ID = re.compile(rb"\$2\r\nid\r\n:\d+\r\n")


def mask_ids(replies: list[bytes]) -> list[bytes]:
    """The replies with HELLO's connection id masked: the one field two servers never share."""
    return [HELLO_ID.sub(b"$2\r\nid\r\n:0\r\n", reply) for reply in replies]


def compare(pair: Any, program: list[tuple[int, list[list[bytes]]]]) -> None:
    """Run each step (connection, commands) on the proxy and on the second Redis, both flushed
    first: every reply must be the same."""
    proxy, reference = pair
    ours, theirs = Side(proxy.port), Side(reference.port)
    try:
        for side in (ours, theirs):
            assert side.run(0, [[b"FLUSHALL"]]) == [b"+OK\r\n"]
        for i, (conn, commands) in enumerate(program):
            got, want = ours.run(conn, commands), theirs.run(conn, commands)
            assert mask_ids(got) == mask_ids(want), f"step {i} on connection {conn}: {commands}"
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize(
    "program",
    [
        # Found by the property test above: WATCH's key written, so EXEC is aborted and the SELECT
        # queued in it never runs; the proxy took its +QUEUED for the switch and served GET k0
        # from database 0's entry in its tier.
        [
            [[b"WATCH", b"k0"]],
            [[b"SET", b"k0", b""], [b"SELECT", b"1"]],
            [[b"MULTI"], [b"SELECT", b"0"], [b"EXEC"]],
            [[b"GET", b"k0"]],
        ],
        # The transaction runs: its SELECT counts, and a read pipelined behind EXEC is in db 0.
        [
            [[b"SET", b"k0", b"v0"], [b"GET", b"k0"], [b"SELECT", b"1"], [b"GET", b"k0"]],
            [[b"MULTI"], [b"SELECT", b"0"], [b"EXEC"], [b"GET", b"k0"]],
            [[b"GET", b"k0"]],
        ],
        # A SELECT that fails when EXEC runs it, and one in a discarded transaction.
        [
            [[b"SET", b"k0", b"v0"], [b"GET", b"k0"]],
            [[b"MULTI"], [b"SELECT", b"99"], [b"EXEC"], [b"GET", b"k0"]],
            [[b"SELECT", b"1"], [b"MULTI"], [b"SELECT", b"0"], [b"DISCARD"], [b"GET", b"k0"]],
        ],
    ],
)
def test_a_select_inside_a_transaction_counts_only_when_exec_runs_it(pair: Any, program: list[Any]) -> None:
    compare(pair, [(1, commands) for commands in program])


def answer_until_closed(port: int, payload: bytes) -> bytes:
    """Everything the server sends back to ``payload`` and a QUIT after it, until it closes the
    connection (at the QUIT, or at a protocol error before it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload + b"*1\r\n$4\r\nQUIT\r\n")
        got = b""
        while chunk := s.recv(1 << 16):
            got += chunk
        return got


@pytest.mark.parametrize(
    "payload",
    [
        # Found by fuzzing (fuzz/regressions): hiredis raises TypeError building a RESP3 map whose
        # key is an array or a push; the proxy's connection died with a traceback instead of
        # answering Redis's protocol error.
        b"*1\r\n%1\r\n*1\r\n:1\r\n:2\r\n",
        b"*2\r\n$3\r\nGET\r\n%1\r\n>1\r\n:1\r\n:2\r\n",
        b"*1\r\n~1\r\n*1\r\n:1\r\n",
        b"*2\r\n$3\r\nGET\r\n$-5\r\n",
        # Found by fuzzing the request path against our own parser: what hiredis reads at a
        # command's start that Redis reads as an inline command (a null, an empty set, a set, a
        # scalar); "_" was framed at the wrong size and desynchronised the replies.
        b"*1\r\n$4\r\nPING\r\n_\r\n*1\r\n$4\r\nPING\r\n",
        b"*1\r\n$4\r\nPING\r\n~2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"*0\r\n:-1\r\n",
        b"*1\r\n$4\r\nPING\r\n$-1\r\n*1\r\n$4\r\nPING\r\n",
        b"*0\r\n*-1\r\n~0\r\n*1\r\n$4\r\nPING\r\n",
        # A push header declaring 100 million elements: hiredis allocated them (800 MB a request).
        b"*1\r\n>100000000\r\n",
        # An inline command after a multibulk one, ended by a bare LF (Redis reads it; hiredis
        # waited for a CRLF).
        b"*2\r\n$3\r\nGET\r\n$3\r\nf:0\r\n-1*\n",
        b"*1\r\n$3\r\nGET\r\n*1\r\n_\r\n",
    ],
)
def test_bad_request_bytes_get_redis_s_answer(pair: Any, payload: bytes) -> None:
    proxy, reference = pair
    assert answer_until_closed(proxy.port, payload) == answer_until_closed(reference.port, payload)
