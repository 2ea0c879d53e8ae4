"""What the tests share: reading raw RESP off a socket, waiting for a condition (with a hang
guard, never a duration), and a clock the tests move by hand."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from proxy.scanner import ReplyScanner


def read_frames(sock: socket.socket, count: int) -> list[bytes]:
    """Read exactly ``count`` reply frames (pushes included) from a raw socket."""
    scanner, buf, frames = ReplyScanner(), bytearray(), []
    while len(frames) < count:
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("closed")
        base = len(buf)
        buf += data
        consumed = 0
        for end, _ in scanner.feed(data):
            frames.append(bytes(buf[consumed : base + end]))
            consumed = base + end
        del buf[:consumed]
    return frames


def read_until(sock: socket.socket, tail: bytes) -> bytes:
    """Read until the stream ends with ``tail`` (a reply that closes a round)."""
    got = b""
    while not got.endswith(tail):
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError(f"closed after {got[-200:]!r}")
        got += data
    return got


def split_frames(data: bytes) -> list[bytes]:
    """Top-level frames of a whole stream (an attribute stays with the reply it precedes)."""
    at, frames = 0, []
    for end, _ in ReplyScanner().feed(data):
        frames.append(data[at:end])
        at = end
    return frames


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


class ShiftedClock:
    """The tier's clock plus an offset the test moves: the tier's time jumps forward without the
    test sleeping, so bounds are crossed (or not) whatever the machine's speed."""

    def __init__(self, base: Callable[[], float]) -> None:
        self.base = base
        self.offset = 0.0

    def __call__(self) -> float:
        return self.base() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
