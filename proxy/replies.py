"""The reply side of one client connection: the queue of reply slots (``proxy.slots``) and the
matching of Redis's reply frames to them, in order.

While every slot in flight is a plain ``Run``, hiredis only counts reply frames and the bytes go
straight through ("fast" mode). When a reply must be read, rewritten or interleaved with a local
one, the scanner (``ReplyScanner``) finds frame offsets ("slow" mode). The switch happens at a
known frame boundary: at once if nothing is in flight, otherwise after the reply to an
``ECHO <random token>`` sent ahead of the special command (a ``Sync`` slot).

No I/O of its own: bytes for the client go to ``write``, the sync ECHO to ``send``; a reply
stream that cannot be followed goes to ``on_bad_reply``, a CLOSE marker at the head to
``on_close``.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable

import hiredis
import structlog

from proxy.resp import encode_command, encode_error
from proxy.scanner import PUSH, ReplyScanner
from proxy.session import RESET_FRAME, Session
from proxy.slots import CLOSE, PASSTHROUGH, Capture, Run, Slot, Sync, discard_reply
from proxy.stats import Stats

log = structlog.get_logger("predis.replies")

_now = time.perf_counter
_Push = hiredis.PushNotification


class ReplyStream:
    def __init__(
        self,
        session: Session,
        stats: Stats,
        write: Callable[[bytes], None],
        send: Callable[[bytes, int], None],
        on_bad_reply: Callable[[str], None],
        on_close: Callable[[], None],
    ) -> None:
        self.session = session
        self.stats = stats
        self.write = write  # to the client
        self.send = send  # upstream
        self.on_bad_reply = on_bad_reply
        self.on_close = on_close
        self.pending: deque[Slot] = deque()
        self.fast = False  # mode: True = hiredis counts frames; False = the scanner finds offsets
        self.fast_resp3 = False  # fast mode began on a RESP3 connection (see fast_replies)
        self.rep_reader = hiredis.Reader()
        self.scanner = ReplyScanner()
        self.sync_token: bytes | None = None  # the ECHO payload that ends fast mode
        self.sync_frame = b""
        self.sync_tail = b""  # tail bytes kept while a sync reply may be split across reads
        self.capture_parts: list[bytes] = []  # start of a captured reply frame split across reads
        self.closing = False  # no more requests come: never re-enter fast mode
        self.peer = ""

    # ------------------------------------------------------------------ the queue

    def queue_local(self, reply: bytes) -> None:
        """A reply the proxy made: written now if nothing is owed before it, else queued."""
        if self.pending:
            self.leave_fast_mode_now()
            self.pending.append(reply)
        else:
            self.write(reply)

    def close_after(self) -> bool:
        """Queue the connection's close behind the replies owed; False if none are (close now)."""
        self.closing = True
        if not self.pending:
            return False
        self.leave_fast_mode_now()
        self.pending.append(CLOSE)
        return True

    def at_boundary(self) -> bool:
        """Whether no frame is half read."""
        return not self.rep_reader.has_data() if self.fast else self.scanner.at_boundary

    def head_sent(self) -> float:
        """When the request owed the oldest reply was sent (0.0: nothing owed, or exempt)."""
        if not self.pending or self.session.passthrough_rep:
            return 0.0
        head = self.pending[0]
        return head.sent if isinstance(head, Run | Capture) else 0.0

    # ------------------------------------------------------------------ upstream's bytes

    def restart(self, prelude: int) -> None:
        """A new upstream connection: it starts at a frame boundary, in slow mode, and its first
        ``prelude`` replies answer the replayed state's commands, not the client's."""
        self.fast = False
        self.scanner = ReplyScanner()
        self.sync_token = None
        self.sync_tail = b""
        for _ in range(prelude):
            self.pending.appendleft(Capture(_now(), discard_reply))

    def switch_connection(self, prelude: int) -> None:
        """``restart``, for a client whose requests move to a connection of its own while its
        stream is at a frame boundary (pinned from a pool): bytes kept back in case they began a
        sync reply go out first (the sync was sent on the new connection, so they did not)."""
        if self.sync_tail:
            self.write(self.sync_tail)
            self.sync_tail = b""
        self.restart(prelude)

    def fast_replies(self, data: bytes) -> None:
        """Upstream's bytes in fast mode (``fast``; else ``slow_replies``): count reply frames in C
        and pass the bytes through.

        On a RESP3 connection hiredis skips push frames by their type, but returns an attribute
        (metadata before a reply, which answers nothing) as a plain list, so a read that may hold
        one (a ``|`` byte anywhere in it) is scanned instead. That needs a frame boundary where
        the read starts, so there every read starts at one: fast mode begins at a boundary, and a
        read that ends inside a frame hands over to the scanner, which is given that frame's
        state. No sync is needed either: at a boundary the scanner simply takes over, and
        discards the sync's reply as the capture it is."""
        resp3 = self.fast_resp3
        if resp3 and (self.sync_token is not None or b"|" in data):
            self._scan_from_boundary(data)
            return
        reader = self.rep_reader
        try:
            reader.feed(data)
            count = 0
            token = self.sync_token
            if token is None and not self.session.resp3 and not resp3:
                gets = reader.gets
                while gets() is not False:
                    count += 1
            else:
                while (frame := reader.gets()) is not False:
                    if type(frame) is _Push:
                        continue
                    if token is not None and frame == token:
                        self._consume_runs(count)
                        self._sync_reached(data)
                        return
                    count += 1
            if resp3 and reader.has_data():
                # The read ends inside a frame: the scanner, fed the read from its boundary,
                # knows where that frame stands and reads on from there.
                scanner = ReplyScanner()
                scanner.feed(data)
                self.fast = False
                self.scanner = scanner
        except (hiredis.ProtocolError, ValueError) as exc:  # (ValueError: the scanner's)
            self.on_bad_reply(str(exc))
            return
        if count:
            self._consume_runs(count)
        if token is None:
            self.write(data)
        else:
            # Keep back a sync frame's length of tail: the sync reply may straddle two reads.
            buf = self.sync_tail + data
            keep = len(self.sync_frame) - 1
            self.write(buf[:-keep])
            self.sync_tail = buf[-keep:]

    def counted_replies(self, data: bytes, count: int) -> bool:
        """``count`` whole reply frames, counted already (by a pooled connection's scanner):
        passed through uncounted in fast mode on a RESP2 connection with no frame half read and
        no sync awaited. False if they must take ``fast_replies`` or ``slow_replies``."""
        if (
            not self.fast
            or self.sync_token is not None
            or self.fast_resp3
            or self.session.resp3
            or self.rep_reader.has_data()
        ):
            return False
        self._consume_runs(count)
        self.write(data)
        return True

    def _scan_from_boundary(self, data: bytes) -> None:
        """Leave fast mode at the start of ``data`` (a frame boundary) and scan it."""
        self.fast = False
        self.sync_token = None  # (its Sync slot stays queued: the scanner discards its reply)
        self.scanner = ReplyScanner()
        self.slow_replies(data)

    def _consume_runs(self, count: int) -> None:
        pending = self.pending
        now = _now()
        record = self.stats.forward_latency.record
        while count and pending:
            head = pending[0]
            if type(head) is not Run:
                log.error("reply count ran past the plain requests in flight", peer=self.peer)
                return
            n = head.count
            if n <= count:
                count -= n
                pending.popleft()
                if head.sent:
                    record(now - head.sent)  # one sample per run (per client read)
                if head.on_reply is not None:
                    head.on_reply()  # a write's reply: drop its keys from the tier again
            else:
                head.count = n - count
                if head.on_reply is not None:
                    head.on_reply()  # some of its replies are about to be written: drop the keys now
                return
        if count:
            log.error("reply with no request pending", peer=self.peer, count=count)

    def _sync_reached(self, data: bytes) -> None:
        buf = self.sync_tail + data
        at = buf.find(self.sync_frame)
        if at < 0:  # cannot happen: hiredis just returned this frame
            self.on_bad_reply("sync reply not found")
            return
        if not self.pending or not isinstance(self.pending[0], Sync):
            # The reply count went wrong before it: nothing later on this stream can be matched.
            self.on_bad_reply("the sync reply came when another reply was due")
            return
        self.pending.popleft()
        self.write(buf[:at])
        rest = buf[at + len(self.sync_frame) :]
        self.fast = False
        self.sync_token = None
        self.sync_tail = b""
        self.scanner = ReplyScanner()
        if not self.drain_markers():
            return
        if rest:
            self.slow_replies(rest)
        else:
            self._maybe_enter_fast_mode()

    def slow_replies(self, data: bytes) -> None:
        """Find each frame's end and give every slot its reply."""
        try:
            ends = self.scanner.feed(data)
        except ValueError as exc:
            self.on_bad_reply(str(exc))
            return
        pending = self.pending
        if not ends:
            self._partial_frame(data)
            return
        session = self.session
        start = 0  # start of the current frame in data
        run = 0  # start of bytes not yet written
        now = _now()
        record = self.stats.forward_latency.record
        for end, kind in ends:
            if kind == PUSH:
                start = end
                continue
            if session.passthrough_rep:
                if pending and isinstance(pending[0], Capture) and data[start:end] == RESET_FRAME:
                    self.write(data[run:start])
                    head = pending.popleft()
                    self.write(head.fn(RESET_FRAME) or b"")  # type: ignore[union-attr]
                    run = end
                    if not self.drain_markers():
                        return
                start = end
                continue
            if not pending:
                log.error("reply with no request pending", peer=self.peer)
                start = end
                continue
            head = pending[0]
            if type(head) is Run:
                head.count -= 1
                if head.on_reply is not None:
                    head.on_reply()  # a write's reply is in this read: drop its keys before it is written
                if head.count == 0:
                    pending.popleft()
                    if head.sent:
                        record(now - head.sent)
                    if pending and type(pending[0]) is not Run:
                        self.write(data[run:end])
                        run = end
                        if not self.drain_markers():
                            return
                start = end
                continue
            # A captured reply: hand it to its handler, write what it returns.
            assert isinstance(head, Capture)
            pending.popleft()
            self.write(data[run:start])
            frame = data[start:end]
            if self.capture_parts:
                self.capture_parts.append(frame)
                frame = b"".join(self.capture_parts)
                self.capture_parts = []
            if head.sent:
                record(now - head.sent)
            out = head.fn(frame)
            if out:
                self.write(out)
            run = start = end
            if not self.drain_markers():
                return
        # Bytes after the last complete frame begin a frame that continues in the next read.
        if start < len(data) and not session.passthrough_rep:
            if pending and isinstance(pending[0], Capture) and not self.scanner.in_push:
                self.write(data[run:start])
                self.capture_parts.append(data[start:])
                return
        self.write(data if run == 0 else data[run:])
        if start == len(data):
            self._maybe_enter_fast_mode()

    def _partial_frame(self, data: bytes) -> None:
        pending = self.pending
        if (
            not self.session.passthrough_rep
            and pending
            and isinstance(pending[0], Capture)
            and not self.scanner.in_push
        ):
            self.capture_parts.append(data)
        else:
            self.write(data)

    def drain_markers(self) -> bool:
        """Write proxy-made replies and act on markers that have reached the head of the queue.
        False once a CLOSE marker closed the connection (nothing more is to be written)."""
        pending = self.pending
        while pending:
            head = pending[0]
            if type(head) is bytes:
                pending.popleft()
                self.write(head)
            elif head is CLOSE:
                pending.clear()
                self.on_close()
                return False
            elif head is PASSTHROUGH:
                pending.popleft()
                self.session.passthrough_rep = True
            else:
                break
        return True

    def fail_all(self, message: str) -> bool:
        """Answer every request in flight with an error, keeping proxy-made replies in order.
        False once a CLOSE marker closed the connection."""
        error = encode_error(message)
        pending = self.pending
        self.capture_parts = []
        while pending:
            head = pending.popleft()
            if type(head) is Run:
                if head.on_reply is not None:
                    head.on_reply()  # the write may have run: drop its keys anyway
                self.write(error * head.count)
            elif isinstance(head, Sync):
                continue
            elif isinstance(head, Capture):
                self.write(head.fn(error) or b"")
            else:
                pending.appendleft(head)
                if not self.drain_markers():
                    return False
        return True

    def lost(self) -> bool:
        """The upstream connection is gone: True if a reply was cut in the middle of a frame
        (the client's stream cannot be finished with an error). A sync reply never finished is
        not the client's: the tail kept for it goes out without it."""
        mid_frame = self.rep_reader.has_data() if self.fast else not self.scanner.at_boundary
        if self.fast and self.sync_tail and self.sync_token is not None:
            self.write(_strip_prefix_of(self.sync_tail, self.sync_frame))
        self.sync_tail = b""
        self.sync_token = None
        self.session.passthrough_rep = False
        return mid_frame

    # ------------------------------------------------------------------ modes

    def leave_fast_mode(self) -> bytes | None:
        """Make the reply side find frame offsets from the next boundary on.

        Returns an ECHO to send upstream before the command that needs it, or None if no sync is
        needed (already slow, a sync already queued, or nothing in flight).
        """
        if not self.fast or self.sync_token is not None:
            return None
        if not self.pending and not self.rep_reader.has_data():
            self.fast = False
            self.scanner = ReplyScanner()
            return None
        token = b"predis-sync-" + os.urandom(12).hex().encode()
        self.sync_token = token
        self.sync_frame = b"$%d\r\n%s\r\n" % (len(token), token)
        self.pending.append(Sync(0.0, discard_reply))
        return encode_command([b"ECHO", token])

    def leave_fast_mode_now(self) -> None:
        sync = self.leave_fast_mode()
        if sync is not None:
            self.send(sync, 1)

    def leave_fast_mode_raw(self) -> None:
        """SYNC/PSYNC: from here on the replies are a raw stream, never parsed."""
        self.fast = False

    def _maybe_enter_fast_mode(self) -> None:
        session = self.session
        if (
            self.scanner.at_boundary
            and not self.capture_parts
            and not session.passthrough_rep
            and not session.passthrough_req
            and not session.in_multi
            and session.reply_mode == b"ON"
            and not self.closing
            and all(type(slot) is Run for slot in self.pending)
        ):
            self.fast = True
            self.fast_resp3 = session.resp3
            self.rep_reader = hiredis.Reader()


def _strip_prefix_of(tail: bytes, frame: bytes) -> bytes:
    """Drop the end of ``tail`` that could be the start of ``frame`` (a sync reply never finished)."""
    for k in range(min(len(tail), len(frame)), 0, -1):
        if tail.endswith(frame[:k]):
            return tail[:-k]
    return tail
