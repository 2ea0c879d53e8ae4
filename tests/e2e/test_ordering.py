"""Randomised pipelines mixing forwarded commands, proxy-answered ones and captured replies, sent
in random fragments: every reply must arrive whole and in order. This drives the reply side's
switches between counting frames (fast) and finding their offsets (slow), including the sync
marker, whatever the read boundaries."""

from __future__ import annotations

import json
import random
import socket
import time
from typing import Any

import pytest

from proxy.resp import encode_command
from tests.helpers import read_frames, wait_for


def build(rng: random.Random, n: int) -> tuple[bytes, list[Any]]:
    payload, expect = b"", []
    for i in range(n):
        kind = rng.choice(["set", "get", "get", "echo", "stats", "info", "ping", "multi"])
        key = b"o%d" % rng.randrange(20)
        if kind == "set":
            value = bytes([rng.randrange(256)]) * rng.choice([0, 1, 50, 3000, 70000])
            payload += encode_command([b"SET", key, value])
            expect.append(("set", key, value))
        elif kind == "get":
            payload += encode_command([b"GET", key])
            expect.append(("get", key))
        elif kind == "echo":
            msg = b"e%d\r\n" % i
            payload += encode_command([b"ECHO", msg])
            expect.append(("exact", b"$%d\r\n%s\r\n" % (len(msg), msg)))
        elif kind == "stats":
            payload += encode_command([b"PREDIS", b"STATS", b"JSON"])
            expect.append(("json",))
        elif kind == "info":
            payload += encode_command([b"INFO", b"predis"])
            expect.append(("info",))
        elif kind == "multi":
            payload += encode_command([b"MULTI"]) + encode_command([b"PREDIS", b"STATS"])
            payload += encode_command([b"ECHO", b"in-tx"]) + encode_command([b"EXEC"])
            expect += [
                ("exact", b"+OK\r\n"),
                ("error",),
                ("exact", b"+QUEUED\r\n"),
                ("exact", b"*1\r\n$5\r\nin-tx\r\n"),
            ]
        else:
            payload += b"PING\r\n" if rng.random() < 0.3 else encode_command([b"PING"])
            expect.append(("exact", b"+PONG\r\n"))
    return payload, expect


@pytest.mark.parametrize("tier", ["cpu", "off"])
@pytest.mark.parametrize("seed", range(5))
def test_random_pipelines_in_random_fragments(
    make_proxy: Any, redis_server: Any, direct: Any, seed: int, tier: str
) -> None:
    proxy = make_proxy(redis_server.url, hot_tier=tier)
    rng = random.Random(seed)
    payload, expect = build(rng, 150)
    if tier == "cpu":  # the tier arm runs with the tier serving, or not at all
        wait_for(lambda: proxy.server.tier.active, timeout=20)
    with socket.create_connection((proxy.host, proxy.port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(10)
        pos = 0
        while pos < len(payload):
            step = rng.choice([1, 7, 100, 4096, 65536])
            s.sendall(payload[pos : pos + step])
            pos += step
            if rng.random() < 0.05:
                time.sleep(0.002)
        frames = read_frames(s, len(expect))
    store: dict[bytes, bytes] = {}
    for frame, want in zip(frames, expect, strict=True):
        if want[0] == "set":
            assert frame == b"+OK\r\n"
            store[want[1]] = want[2]
        elif want[0] == "get":
            value = store.get(want[1])
            assert frame == (b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value))
        elif want[0] == "exact":
            assert frame == want[1]
        elif want[0] == "error":
            assert frame.startswith(b"-ERR PREDIS is not allowed inside MULTI")
        elif want[0] == "json":
            assert "commands_forwarded" in json.loads(frame.split(b"\r\n", 1)[1][:-2])
        else:
            assert frame.startswith(b"$") and b"# Predis" in frame
