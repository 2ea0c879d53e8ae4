"""A command with a large last argument is streamed (proxy.requests): the bytes handed on, as
whole commands, as a streamed command's head and as its later pieces, are the client's bytes
exactly and in order, however they are split; a command the handler declines, or one whose large
argument is not its last, is parsed whole as before."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import proxy.requests as requests_module
from proxy.requests import RequestReader
from proxy.resp import Limits, encode_command


class Seen:
    def __init__(self, take: bool = True) -> None:
        self.take = take
        self.done: list[bool] = []  # per streamed piece: whether it ended its command
        self.out: list[tuple[str, Any, bytes]] = []

    def commands(self, cmds: list[Any], raw: bytes) -> bool:
        self.out.append(("commands", [list(c) for c in cmds], raw))
        return False

    def each(self, cmds: list[Any], raw: list[bytes | None]) -> bool:
        self.out.append(
            (
                "each",
                [list(c) for c in cmds],
                b"".join(r or encode_command(c) for r, c in zip(raw, cmds, strict=True)),
            )
        )
        return False

    def stream(self, args: list[bytes], head: bytes) -> bool:
        if self.take:
            self.out.append(("stream", args, head))
        return self.take

    def stream_bytes(self, data: bytes, done: bool) -> None:
        self.out.append(("bytes", None, data))
        self.done.append(done)

    def reader(self) -> RequestReader:
        return RequestReader(Limits(), self.commands, self.each, self.stream, self.stream_bytes)


def feed(reader: RequestReader, data: bytes, cuts: list[int]) -> None:
    pos = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        if cut > pos:
            assert reader.feed(data[pos:cut]) is None
            pos = cut


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"SET", b"APPEND", b"RPUSH", b"PING"]),
            st.binary(min_size=1, max_size=8),
            st.integers(min_value=0, max_value=600),
        ),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12),
    st.booleans(),
)
def test_streamed_bytes_are_the_client_s_bytes_in_order(
    commands: list[tuple[bytes, bytes, int]], cuts: list[int], take: bool
) -> None:
    stream = b"".join(
        encode_command([name, key, bytes([65 + i % 26]) * size])
        if name != b"PING"
        else encode_command([name])
        for i, (name, key, size) in enumerate(commands)
    )
    seen = Seen(take)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests_module, "STREAM_FROM", 64)
        feed(seen.reader(), stream, cuts)
    assert b"".join(raw for _, _, raw in seen.out) == stream  # (every byte once, in order)
    streamed = [args for kind, args, _ in seen.out if kind == "stream"]
    for args in streamed:  # (the arguments before the last one known, the last one left empty)
        assert args[0] in (b"SET", b"APPEND", b"RPUSH") and len(args) == 3 and args[2] == b""
    if not take:
        assert not streamed and all(kind != "bytes" for kind, _, _ in seen.out)


def test_a_large_argument_that_is_not_the_last_is_not_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(requests_module, "STREAM_FROM", 64)
    data = encode_command([b"SET", b"k", b"v" * 500, b"EX", b"10"])
    seen = Seen()
    feed(seen.reader(), data, [10, 100, 300])
    assert [kind for kind, _, _ in seen.out] == ["commands"] and seen.out[0][2] == data


def test_a_non_canonical_length_is_not_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(requests_module, "STREAM_FROM", 16)
    seen = Seen()
    reader = seen.reader()
    with pytest.raises(Exception, match="invalid bulk length"):
        reader.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0100\r\n" + b"x" * 40)
    assert not any(kind == "stream" for kind, _, _ in seen.out)


def test_a_large_last_argument_in_pieces_is_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(requests_module, "STREAM_FROM", 64)
    big = encode_command([b"SET", b"k", b"v" * 600])
    data = big + encode_command([b"PING"])
    seen = Seen()
    feed(seen.reader(), data, list(range(50, len(data), 50)))
    kinds = [kind for kind, _, _ in seen.out]
    assert kinds[0] == "stream" and seen.out[0][1] == [b"SET", b"k", b""] and len(seen.out[0][2]) >= 64
    assert set(kinds[1:-1]) == {"bytes"} and seen.out[-1][0] == "commands"  # (PING after it, parsed)
    assert b"".join(raw for _, _, raw in seen.out[:-1]) == big
    assert seen.done == [False] * (len(seen.done) - 1) + [True]


def test_a_command_past_the_query_buffer_limit_is_held_and_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis refuses an argument that would take its query buffer past the limit; a streamed one
    would never be held, so such a command is not streamed and meets the limit as before."""
    monkeypatch.setattr(requests_module, "STREAM_FROM", 64)
    seen = Seen()
    reader = RequestReader(
        Limits(max_query_buffer=1000), seen.commands, seen.each, seen.stream, seen.stream_bytes
    )
    data = encode_command([b"SET", b"k", b"v" * 2000])
    with pytest.raises(Exception, match="query buffer limit"):
        for i in range(0, len(data), 100):
            reader.feed(data[i : i + 100])
    assert not any(kind == "stream" for kind, _, _ in seen.out)
