"""The access sink (proxy.reads.AccessSink, where the live prediction engine will attach): every GET
and MGET key a client reads passes it exactly once, hit or miss, tier on or off, whichever path
the read takes through the proxy."""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

import pytest
import redis

from proxy.resp import encode_command
from tests.helpers import read_frames, wait_for


class Recorder:
    """The sink: (stream, db, key, hit) per key, appended on the proxy's loop thread."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, bytes, bool]] = []

    def __call__(self, stream: int, db: int, keys: Any, hit: bool) -> None:
        self.seen.extend((stream, db, key, hit) for key in keys)

    def keys(self) -> Counter[bytes]:
        return Counter(key for _, _, key, _ in self.seen)


def roundtrip(proxy: Any, payload: bytes, replies: int) -> list[bytes]:
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.settimeout(10)
        s.sendall(encode_command([b"PING"]))  # (Redis accepts the connection: the tier may serve it)
        assert read_frames(s, 1) == [b"+PONG\r\n"]
        s.sendall(payload)
        return read_frames(s, replies)


# Reads of every shape, with the GET/MGET keys each reads. Each runs on a fresh connection.
READS: list[tuple[bytes, int, list[bytes]]] = [
    (encode_command([b"GET", b"k0"]), 1, [b"k0"]),  # one canonical GET (the hit path's shape)
    (encode_command([b"get", b"k1"]), 1, [b"k1"]),  # another spelling
    (b"".join(encode_command([b"GET", b"k%d" % i]) for i in range(4)), 4, [b"k%d" % i for i in range(4)]),
    (b"".join(encode_command([b"GET", b"k%d" % i]) for i in range(40)), 40, [b"k%d" % i for i in range(40)]),
    (encode_command([b"MGET", b"k0", b"k1", b"nope"]), 1, [b"k0", b"k1", b"nope"]),
    (encode_command([b"SET", b"w", b"1"]) + encode_command([b"GET", b"k2"]), 2, [b"k2"]),  # writes and reads
    (
        encode_command([b"PING"]) + encode_command([b"GET", b"k3"]) + encode_command([b"INFO", b"server"]),
        3,
        [b"k3"],
    ),
    (b"GET k4\r\nGET k5\r\n", 2, [b"k4", b"k5"]),  # inline
    (encode_command([b"MULTI"]) + encode_command([b"GET", b"k6"]) + encode_command([b"EXEC"]), 3, [b"k6"]),
    (encode_command([b"GET", b"k7", b"extra"]) + encode_command([b"MGET"]), 2, []),  # arity errors: no read
]


@pytest.mark.parametrize("tier", ["off", "cpu"])
def test_every_get_key_passes_the_access_sink_once(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, tier: str
) -> None:
    recorder = Recorder()
    proxy = make_proxy(redis_server.url, hot_tier=tier, access=recorder)
    direct.mset({f"k{i}": i for i in range(40)})
    if tier == "cpu":
        wait_for(lambda: proxy.server.tier.active, timeout=20)
    want: Counter[bytes] = Counter()
    for _ in range(3):  # (with the tier, later rounds are served from it)
        for payload, replies, keys in READS:
            roundtrip(proxy, payload, replies)
            want.update(keys)
        if tier == "cpu":  # (the first round's fills land before the next round reads)
            wait_for(lambda: (0, b"k0") in proxy.server.tier.entries, timeout=30)
    assert recorder.keys() == want
    hits = sum(1 for *_, hit in recorder.seen if hit)
    streams = {stream for stream, *_ in recorder.seen}
    assert len(streams) == sum(1 for *_, keys in READS if keys) * 3  # one stream id per connection
    if tier == "off":
        assert hits == 0
    else:
        # The keys served from the tier are exactly the hits the tier counted (a partly held MGET
        # is forwarded whole, and counted as misses by both).
        assert 0 < hits == proxy.server.tier.hits
