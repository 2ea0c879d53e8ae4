"""Micro-benchmark of the protocol core, no sockets: cost per command of each request-framing path
and per reply frame of each reply path, on a pipeline of 16 GETs and their 64-byte replies.

    python -m bench.micro_resp
"""

from __future__ import annotations

import timeit
from itertools import chain

import hiredis

from proxy.framing import canonical_size
from proxy.resp import RequestParser, encode_command
from proxy.scanner import ReplyScanner

PIPELINE = 16


def main() -> None:
    requests = b"".join(encode_command([b"GET", b"key:%012d" % i]) for i in range(PIPELINE))
    replies = (b"$64\r\n" + b"x" * 64 + b"\r\n") * PIPELINE
    number = 20_000

    def per(fn: object) -> float:
        return timeit.timeit(fn, number=number) / number / PIPELINE * 1e6  # type: ignore[arg-type]

    reader = hiredis.Reader()

    def hiredis_frame() -> None:
        reader.feed(requests)
        cmds = []
        while (c := reader.gets()) is not False:
            cmds.append(c)
        args = list(chain.from_iterable(cmds))
        sizes = list(map(len, args))
        b"".join(args)
        canonical_size(cmds, args, sizes)

    parser = RequestParser()

    def own_parser() -> None:
        parser.feed(requests)
        parser.parse()
        parser.consume()

    def pack_each() -> None:
        reader.feed(requests)
        while (c := reader.gets()) is not False:
            hiredis.pack_command(tuple(c))

    counter = hiredis.Reader()

    def count_replies() -> None:
        counter.feed(replies)
        while counter.gets() is not False:
            pass

    scanner = ReplyScanner()
    rows = [
        ("requests: hiredis + canonical sizes (fast path)", per(hiredis_frame)),
        ("requests: hiredis + pack_command each (rejected)", per(pack_each)),
        ("requests: pure-Python RequestParser (inline path)", per(own_parser)),
        ("replies: hiredis frame count (fast mode)", per(count_replies)),
        ("replies: ReplyScanner offsets (slow mode)", per(lambda: scanner.feed(replies))),
    ]
    for name, us in rows:
        print(f"{name:<52} {us:6.3f} us per command/frame")


if __name__ == "__main__":
    main()
