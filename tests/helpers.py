"""What the tests share: reading raw RESP off a socket, waiting for a condition (with a hang
guard, never a duration), and a clock the tests move by hand."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from proxy.resp import encode_command
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


def exchange(sock: socket.socket, *commands: list[bytes] | list[bytes | str]) -> list[bytes]:
    """Send ``commands`` in one write and read their reply frames."""
    sock.sendall(b"".join(encode_command(c) for c in commands))
    return read_frames(sock, len(commands))


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


def no_retry() -> dict[str, Any]:
    """redis-py client settings for a client whose command is meant to fail: redis-py retries a
    connection error three times with backoff (an AuthenticationError is one), which is 3-5 s of
    waiting per refusal, the same against Redis as through the proxy."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {"retry": Retry(NoBackoff(), 0)}


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


# The planted sequence the model tests train on: each client walks these 12 keys in order.
CYCLE = [f"page:{i * 7 % 97}:body" for i in range(12)]


def walk(cycle: list[str], n: int, starts: list[int], rng: Any, source: str) -> Any:
    """Clients (one per start) each walk ``cycle`` from their own place, interleaved at random."""
    import numpy as np

    from accesslog.log import AccessLog, make_table

    pos = list(starts)
    keys, client = [], []
    for _ in range(n):
        c = int(rng.integers(len(pos)))
        keys.append(cycle[pos[c] % len(cycle)])
        pos[c] += 1
        client.append(c)
    return AccessLog(
        make_table(np.arange(n) * 0.01, keys, "GET", 100, source, client=np.array(client)),
        {"source": source},
    )


def planted_log(n: int = 6000, clients: int = 4) -> Any:
    """Each client walks the planted cycle of 12 keys, starting at its own place, interleaved."""
    import numpy as np

    return walk(CYCLE, n, list(range(clients)), np.random.default_rng(0), "planted")


def profiles_log() -> Any:
    """Clients (4) each reading user:N:profile then user:N:orders for a random N among 3,000: the
    orders key is named only by its template filled with the profile's number."""
    import numpy as np

    from accesslog.log import AccessLog, make_table

    rng = np.random.default_rng(5)
    keys, client = [], []
    for c in rng.integers(0, 4, 3000).tolist():
        n = int(rng.integers(3000))
        keys += [f"user:{n}:profile", f"user:{n}:orders"]
        client += [c, c]
    return AccessLog(
        make_table(np.arange(len(keys)) * 0.01, keys, "GET", 100, "profiles", client=np.array(client)),
        {"source": "profiles"},
    )


def phase_keys(phases: int, seed: int = 3) -> list[str]:
    """Reads in phases that alternate between a scan of 300 numbers (OBL's next number is right)
    and 150 pairs n, n+1 each followed by a jump learned from the pair (Markov's successor is
    right): no single heuristic is right in both, a ranker over the two can be."""
    import random

    rng = random.Random(seed)
    jump = {n: rng.randrange(2000) * 2 for n in range(0, 4002)}
    keys: list[str] = []
    for phase in range(phases):
        if phase % 2 == 0:
            start = rng.randrange(2000) * 2
            keys += [f"k:{n}" for n in range(start, start + 300)]
        else:
            n = rng.randrange(2000) * 2
            for _ in range(150):
                keys += [f"k:{n}", f"k:{n + 1}"]
                n = jump[n + 1]
    return keys


def small_training(**settings: Any) -> Any:
    """The training settings of the tests' small models (ml.training.train.TrainConfig): windows of
    32 reads in batches of 16, a high learning rate, fp32, no progress bar and no ranker replays
    (the tests of the ranker as a fallback ask for them), with ``settings`` over these."""
    from ml.training.train import TrainConfig

    base: dict[str, Any] = {
        "batch": 16,
        "length": 32,
        "lr": 1e-2,
        "progress": False,
        "precision": "fp32",
        "ranker_replays": "never",
    }
    return TrainConfig(**{**base, **settings})
