"""RESP replies without I/O.

``ReplyScanner`` finds where each top-level reply from Redis ends, without decoding it and without
buffering bulk payloads (a 512 MB value passes through in chunks). It tells replies from RESP3 push
frames, which answer no request.

Decoding a reply that the proxy needs to read (INFO, HELLO) is done by ``decode_reply`` with
``hiredis.Reader``; hiredis cannot report byte offsets, which is why framing is done here.
"""

from __future__ import annotations

from typing import Any

import hiredis

from proxy.resp import MAX_INLINE_LEN

_CRLF = b"\r\n"

# Reply frame kinds reported by ReplyScanner.
REPLY = 0
PUSH = 1

_LEN_PREFIXED = frozenset(b"$!=")  # bulk string, blob error, verbatim string
_AGGREGATES = frozenset(b"*%~>|")  # array, map, set, push, attribute
_SIMPLE = frozenset(b"+-:_,#(")


class ReplyScanner:
    """Finds the ends of top-level reply frames in a stream of RESP2/RESP3 bytes.

    ``feed(chunk)`` returns ``[(end, kind), ...]``: offsets in ``chunk`` where a top-level frame ends
    and whether it was a reply or a push. Bulk payloads are skipped by length, so a large value costs
    one arithmetic step per chunk. Only an unfinished header line (a few bytes) is ever carried over.
    ``in_push`` tells whether the unfinished frame at the end of the last chunk is a push.
    """

    __slots__ = ("_partial", "_skip", "_stack", "_kind", "_max_line")

    def __init__(self, max_line: int = MAX_INLINE_LEN) -> None:
        self._partial = b""
        self._skip = 0  # payload bytes (+CRLF) of a bulk still to pass over
        # Open aggregates: [remaining elements, is_attribute]
        self._stack: list[list[int]] = []
        self._kind = REPLY
        self._max_line = max_line

    @property
    def in_push(self) -> bool:
        return self._kind == PUSH and (bool(self._stack) or self._skip > 0 or bool(self._partial))

    @property
    def at_boundary(self) -> bool:
        return not self._stack and not self._skip and not self._partial

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        ends: list[tuple[int, int]] = []
        shift = 0
        if self._partial:
            shift = len(self._partial)
            data = self._partial + data
            self._partial = b""
        n = len(data)
        pos = 0
        stack = self._stack
        if self._skip:
            if self._skip > n:
                self._skip -= n
                return ends
            pos = self._skip
            self._skip = 0
            if self._element_done(stack):
                ends.append((pos - shift, self._kind))
        while pos < n:
            t = data[pos]
            if not stack:
                self._kind = PUSH if t == 62 else REPLY
            nl = data.find(_CRLF, pos)
            if nl < 0:
                if n - pos > self._max_line:
                    raise ValueError("reply header line too long")
                self._partial = data[pos:]
                break
            if t in _LEN_PREFIXED:
                size = int(data[pos + 1 : nl])
                if size < 0:
                    pos = nl + 2
                else:
                    end = nl + 4 + size
                    if end > n:
                        self._skip = end - n
                        break
                    pos = end
            elif t in _AGGREGATES:
                count = int(data[pos + 1 : nl])
                pos = nl + 2
                if t == 37 or t == 124:  # map, attribute: key/value pairs
                    count *= 2
                if count > 0:
                    stack.append([count, t == 124])
                    continue
            elif t in _SIMPLE:
                pos = nl + 2
            else:
                raise ValueError(f"unknown RESP type byte {t!r}")
            if not stack or self._element_done(stack):
                ends.append((pos - shift, self._kind))
        return ends

    @staticmethod
    def _element_done(stack: list[list[int]]) -> bool:
        """Count one finished element; True if that finished a top-level frame."""
        while stack:
            top = stack[-1]
            top[0] -= 1
            if top[0]:
                return False
            stack.pop()
            if top[1]:
                # An attribute is metadata for the element that follows; it completes nothing.
                return False
        return True


def decode_reply(frame: bytes) -> Any:
    """Decode one complete reply frame (RESP2 or RESP3) with hiredis.

    Error replies come back as ``hiredis.ReplyError`` values, never raised.
    """
    reader = hiredis.Reader()
    reader.feed(frame)
    return reader.gets()
