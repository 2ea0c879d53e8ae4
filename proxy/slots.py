"""The reply queue's slots: one per reply (or run of replies) the client is owed, in request order.

  Run      a run of ``count`` forwarded requests, one reply each, passed through as Redis sends
           them; ``sent`` is when the run went upstream (0.0: blocking, exempt from the timeout);
           ``on_reply`` (a write's) runs before any of its replies reaches the client
  Capture  a forwarded request whose reply the proxy reads or rewrites (``fn``)
  Sync     the proxy's own ECHO, sent to find a reply boundary; its reply is discarded
  bytes    a reply the proxy made itself, written when it reaches the head
  CLOSE, PASSTHROUGH   markers acted upon when they reach the head

What ``Session.special`` returns but is never queued: ``NO_SLOT`` (forwarded, no reply comes),
``RAW`` (SYNC/PSYNC: the connection becomes a raw byte pipe) and ``Answer`` (answered by the
proxy, not forwarded).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

log = structlog.get_logger("predis.slots")


class Run:
    __slots__ = ("count", "sent", "on_reply")

    def __init__(self, count: int, sent: float, on_reply: Callable[[], None] | None = None) -> None:
        self.count = count
        self.sent = sent
        self.on_reply = on_reply

    def __repr__(self) -> str:
        return f"Run({self.count}, {self.sent}, {self.on_reply})"


class Capture:
    __slots__ = ("sent", "fn")

    def __init__(self, sent: float, fn: Callable[[bytes], bytes | None]) -> None:
        self.sent = sent
        self.fn = fn  # receives the reply frame, returns what the client gets (None: nothing)


class Sync(Capture):
    __slots__ = ()


class Answer:
    """A command the proxy answers itself: ``reply`` (None: no reply, as under CLIENT REPLY OFF),
    then, if ``close``, the connection closes once its replies are out."""

    __slots__ = ("reply", "close")

    def __init__(self, reply: bytes | None, close: bool = False) -> None:
        self.reply = reply
        self.close = close


class Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CLOSE = Marker("CLOSE")
PASSTHROUGH = Marker("PASSTHROUGH")
NO_SLOT = Marker("NO_SLOT")
RAW = Marker("RAW")

Slot = Run | Capture | bytes | Marker


def discard_reply(frame: bytes) -> None:
    """The reply to a command the proxy sent itself (a sync ECHO, a replayed prelude): never the
    client's; an error is logged."""
    if frame.startswith(b"-"):
        log.warning("proxy-issued command failed", reply=frame[:200])
    return None
