"""A GET server in a plain dict: the floor any Python server answering GETs from memory stands on.

    python -m bench.dictserver LISTEN_PORT UPSTREAM_PORT

It copies every string key of the upstream Redis into a dict at start, then answers unpipelined
``GET`` (and ``PING``, so bench/loadtest.py can wait for it) with one regex match, one dict lookup
and one write per read: no coherence, no statistics, no pipelining. bench/tierbench.py runs it
beside Predis's hot tier, so what the tier's own bookkeeping costs shows as the gap between the
two, measured in the same run.
"""

from __future__ import annotations

import asyncio
import re
import sys

import redis

from bench.copyproxy import serve

GET = re.compile(rb"\*2\r\n\$3\r\nGET\r\n\$(\d+)\r\n", re.IGNORECASE)


class DictServer(asyncio.Protocol):
    def __init__(self, values: dict[bytes, bytes]) -> None:
        self.values = values
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        m = GET.match(data)
        if m is not None:
            start = m.end()
            value = self.values.get(data[start : start + int(m.group(1))])
            self.transport.write(b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value))
        elif b"PING" in data.upper():
            self.transport.write(b"+PONG\r\n")
        else:
            self.transport.write(b"-ERR dictserver answers GET and PING only\r\n")


def load(upstream_port: int) -> dict[bytes, bytes]:
    client = redis.Redis(port=upstream_port)
    keys = [k for k in client.scan_iter(count=1000) if client.type(k) == b"string"]
    values: dict[bytes, bytes] = {}
    for i in range(0, len(keys), 1000):
        chunk = keys[i : i + 1000]
        values.update((k, v) for k, v in zip(chunk, client.mget(chunk), strict=True) if v is not None)
    return values


def main() -> None:
    listen, upstream = int(sys.argv[1]), int(sys.argv[2])
    values = load(upstream)
    serve(lambda: DictServer(values), listen)


if __name__ == "__main__":
    main()
