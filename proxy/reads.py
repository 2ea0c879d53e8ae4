"""Where a GET's fate is decided: served from the hot tier, forwarded, bypassed, filled. One object
per client connection decides every read of GETs and MGETs, whichever path the read takes through
the connection, and reports every key, hit or miss, tier on or off, through ``on_access`` (where
the live prediction engine and the A/B split attach). The tier's own rules (what is held, fresh,
whose, and the hit and miss counters) stay in ``prefetch.tier.HotTier``; this module asks them.

A verdict is one of: the reply frames to write (served, already counted as local commands), a
``Run`` slot to queue with the read forwarded upstream as it is (fills already asked for), or
None: not decided here, the connection's general path takes the read command by command.

``ForwardReads`` here is the tier-off case (every read forwarded); ``proxy.tier_reads.TierReads``
is the tier's.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from proxy.framing import GET_PREFIXES, SET_PREFIXES, get_run_keys, set_run_keys
from proxy.session import SPECIAL, Session
from proxy.slots import Run, Slot
from proxy.stats import Stats

_now = time.perf_counter

# Told of every read of GET/MGET keys, once per key, where its fate is decided: (the client
# connection's stream id, db, the keys, whether the hot tier served them). Called on the event
# loop: it must only record.
AccessSink = Callable[[int, int, Sequence[bytes], bool], None]


def worth_serving(present: int, count: int) -> bool:
    """Whether a read of ``count`` GETs, ``present`` of them held by the tier, is worth serving in
    part. Serving a few hits among misses costs more than it saves: interleaving local replies
    with forwarded ones needs the reply side to find frame offsets. So only when at least half
    the GETs can be served does the general path do it; otherwise the read is forwarded whole."""
    return 2 * present >= count


class ForwardReads:
    """The hot tier off: every read is forwarded, and reported to the access sink as a miss."""

    def __init__(
        self,
        session: Session,
        stats: Stats,
        pending: deque[Slot],
        access: AccessSink | None,
        stream: int,
        fast_framing: bool,
    ) -> None:
        self.session = session
        self.stats = stats
        self.pending = pending  # the connection's reply queue: a hit must not overtake a reply owed
        self.access = access
        self.stream = stream  # this connection's stream id, for the access sink
        self.fast_framing = fast_framing  # the GET and SET run parsers may be used (see connection)

    def on_access(self, db: int, keys: Sequence[bytes], hit: bool) -> None:
        """Tell the access sink (if any) the fate of a read's keys: every GET and MGET key passes
        here once (inlined on the hit path, where a method call shows)."""
        if self.access is not None:
            self.access(self.stream, db, keys, hit)

    def decide(self, data: bytes) -> bytes | Run | None:
        """A client's read, before hiredis: a read made only of GETs, or only of plain SETs, is
        forwarded as one run, parsed by ``get_run_keys`` or ``set_run_keys`` (the same checks,
        in half the time for 16 GETs and three quarters for 16 SETs)."""
        s = self.session
        if s.passthrough_req or s.reply_mode != b"ON" or not self.fast_framing:
            return None
        if data.startswith(GET_PREFIXES):
            keys = get_run_keys(data)
            if keys is None:
                return None
            if self.access is not None:
                self.access(self.stream, s.db, keys, False)
            return Run(len(keys), _now())
        if data.startswith(SET_PREFIXES) and (keys := set_run_keys(data)) is not None:
            return Run(len(keys), _now())
        return None

    def decide_commands(self, cmds: list[Any]) -> Run | None:
        """Commands parsed by hiredis: one plain run if none is special."""
        for args in cmds:
            if args[0].upper() in SPECIAL:
                return None
        if self.access is not None:
            db = self.session.db
            for args in cmds:
                name = args[0].upper()
                if (name == b"GET" and len(args) == 2) or (name == b"MGET" and len(args) > 1):
                    self.access(self.stream, db, args[1:], False)
        return Run(len(cmds), _now())

    def read(self, name: bytes, args: list[bytes], now: float) -> bytes | None:
        """One GET or MGET on the general path: the reply frames if served, else None."""
        if len(args) >= 2 and (name == b"MGET" or len(args) == 2):  # (else an arity error, not a read)
            self.on_access(self.session.db, args[1:], False)
        return None

    def write(self, name: bytes, args: list[bytes]) -> Callable[[], None] | None:
        """One command that may write, on the general path: what to do again at its reply."""
        return None

    def exec_action(self) -> Callable[[], None] | None:
        """EXEC: what the queued writes' replies must do (nothing without a tier)."""
        return None

    def discard(self) -> None:
        """DISCARD: the queued writes never happen."""
