"""Request dispatch: what the proxy does with each command a client sends, given the session's
state. Whole reads go upstream as one run of plain requests where they can (the reads decider
says when); otherwise the general path takes them one command at a time: special commands
through ``Session.special``, every GET and MGET through ``reads.read``, every write through
``reads.write`` (which drops the keys it changes), each with the reply slot it needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import hiredis

from proxy.framing import split_commands
from proxy.reads import ForwardReads
from proxy.replies import ReplyStream
from proxy.session import SPECIAL, Session
from proxy.slots import NO_SLOT, RAW, Answer, Capture, Marker, Run
from proxy.stats import Stats
from proxy.tier_reads import TierReads

_now = time.perf_counter
_pack = hiredis.pack_command
_PLAIN = Marker("PLAIN")  # a command that is no special one: it joins the current run
_UNKNOWN = b"\x00predis: the argument still arriving\x00"  # (stands for it when keys are found)


class Dispatcher:
    """Sends a client's commands upstream with their reply slots, or answers them locally.
    ``on_close``: the client is to close once its replies are out (QUIT); ``on_raw``: SYNC/PSYNC
    made the connection a raw pipe from these bytes on."""

    def __init__(
        self,
        session: Session,
        reads: ForwardReads,
        replies: ReplyStream,
        stats: Stats,
        send: Callable[[bytes, int], None],
        on_close: Callable[[], None],
        on_raw: Callable[[bytes], None],
        before_special: Callable[[bytes, list[bytes]], None] | None = None,
        can_stream: Callable[[], bool] | None = None,
    ) -> None:
        """``send(data, frames)``: requests upstream, and how many replies they ask for;
        ``before_special``: told of each special command before it is decided (the pool pins
        the client there, proxy.multiplex)."""
        self.session = session
        self.reads = reads
        self.replies = replies
        self.pending = replies.pending
        self.stats = stats
        self.send = send
        self.on_close = on_close
        self.on_raw = on_raw
        self.before_special = before_special
        self.can_stream = can_stream  # (the pool: whether pieces would reach the client's own connection)
        self.streamed: Any = None  # the slot of the command being streamed (proxy.requests)

    def forward_run(self, run: Run, raw: bytes) -> None:
        """Forward ``raw`` (``run.count`` commands, none special) with one slot for their replies."""
        self.pending.append(run)
        self.stats.commands_forwarded += run.count
        self.send(raw, run.count)

    def stream(self, args: list[bytes], head: bytes) -> bool:
        """A command whose large last argument is still arriving (``args`` with that one empty,
        ``head`` the bytes so far): True if it goes upstream now, its slot queued as the general
        path queues it and its later bytes through ``stream_bytes``. Only a plain command in the
        default state whose keys do not include the last argument (the tier drops them by
        name, which must be known now): anything else is held and parsed whole, as before."""
        session = self.session
        name = args[0].upper()
        if (
            name in SPECIAL
            or name == b"GET"
            or name == b"MGET"
            or session.passthrough_req
            or session.reply_mode != b"ON"
            or session.in_multi
            or self.replies.closing
            or (self.can_stream is not None and not self.can_stream())
        ):
            return False
        reads = self.reads
        if isinstance(reads, TierReads):
            table = reads.command_table()
            if table is None:
                return False
            effect = table.effect(name, [*args[:-1], _UNKNOWN])
            if effect is not None and effect[1] is not None and _UNKNOWN in effect[1]:
                return False  # (the arriving argument is a key the tier must drop)
        self.each([args], [head])
        self.stats.commands_streamed += 1
        self.streamed = self.pending[-1] if self.pending else None
        if self.streamed is not None:
            self.streamed.sent = 0.0  # (its clock waits for its last byte: no timeout, no sample)
        return True

    def stream_bytes(self, data: bytes, done: bool) -> None:
        """More of a streamed command's last argument: straight upstream, asking no reply. Its
        slot's clock (the command timeout's, the latency sample's) starts at its last byte, as
        it would for a command held whole: a slow upload is no slow reply."""
        self.send(data, 0)
        if done and self.streamed is not None:
            self.streamed.sent = _now()
            self.streamed = None

    def commands(self, cmds: list[Any], raw: bytes) -> bool:
        """Forward ``raw`` (the bytes of exactly ``cmds``) as one run if the reads decider says it
        can go so, else take the general path. True if the connection became a raw pipe."""
        session = self.session
        if not session.passthrough_req and session.reply_mode == b"ON":
            run = self.reads.decide_commands(cmds)
            if run is not None:
                self.forward_run(run, raw)
                return False
        return self.each(cmds, split_commands(cmds, raw))

    def each(self, cmds: list[Any], encoded: list[bytes | None]) -> bool:
        """The general path: one command at a time, specials and the hot tier handled.
        ``encoded``: each command's bytes (None: encode it). True if the connection became a raw
        pipe (SYNC/PSYNC)."""
        now = _now()
        pending = self.pending
        session = self.session
        replies = self.replies
        reads = self.reads
        send = self.send
        # With the tier: writes drop what they change, and Redis must accept the connection
        # before the tier serves it. Without, neither applies.
        tiered = isinstance(reads, TierReads)
        pieces: list[bytes] = []  # requests to send upstream, in order
        served: list[bytes] = []  # tier replies not yet written (nothing is in flight before them)
        run: Run | None = None  # the slot run that consecutive plain commands join
        forwarded = 0
        for i, args in enumerate(cmds):
            name = args[0].upper()
            action = None
            if not session.passthrough_req:
                if name == b"GET" or name == b"MGET":
                    reply = reads.read(name, args, now)
                    if reply is not None:
                        if pending or pieces:
                            if pieces:
                                send(b"".join(pieces), len(pieces))
                                pieces = []
                            replies.queue_local(reply)
                        else:
                            served.append(reply)
                        self.stats.commands_local += 1
                        run = None
                        continue
                elif tiered:
                    action = reads.write(name, args)
            if served and (pieces or name in SPECIAL):
                replies.write(b"".join(served))
                served = []
            slot: Any = _PLAIN
            if name in SPECIAL or session.passthrough_req or session.reply_mode != b"ON":
                if pieces:  # what came before goes first: a sync ECHO may be sent next
                    send(b"".join(pieces), len(pieces))
                    pieces = []
                if self.before_special is not None:
                    self.before_special(name, args)
                slot = session.special(name, args, now)
                if slot is RAW:
                    # This command and every one after it go as they are, once the replies
                    # before them are in; the tier neither serves nor learns from the stream.
                    rest = (encoded[j] or _pack(tuple(cmds[j])) for j in range(i, len(cmds)))
                    self.stats.commands_forwarded += forwarded + 1
                    self.on_raw(b"".join(rest))  # (pieces before it were sent above)
                    return True
                if type(slot) is Answer:  # answered by the proxy, not forwarded
                    if slot.reply is not None:  # (an Answer has one only while replies are on)
                        self.stats.commands_local += 1
                        replies.queue_local(slot.reply)
                    if slot.close:
                        self.on_close()
                    run = None
                    if replies.closing:
                        break
                    continue
                if replies.fast and (session.in_multi or session.reply_mode != b"ON"):
                    # Inside MULTI a sync ECHO would be queued, under CLIENT REPLY OFF unanswered:
                    # find frame offsets from before this command on.
                    sync = replies.leave_fast_mode()
                    if sync is not None:
                        pieces.append(sync)
                        run = None  # this command's slot goes after the sync's
                if name == b"EXEC":
                    action = reads.exec_action() or action
                elif name == b"DISCARD":
                    reads.discard()
            if served:
                replies.write(b"".join(served))
                served = []
            if (
                action is not None
                and slot is _PLAIN
                and tiered
                and not session.verified
                and not session.verify_pending
            ):
                # A write that also tells whether Redis accepts this connection as it is.
                session.verify_pending = True
                sync = replies.leave_fast_mode()
                if sync is not None:
                    pieces.append(sync)
                pending.append(Capture(now, partial(_then, action, session.on_verify)))
                run = None
            elif action is not None and (slot is _PLAIN or type(slot) is Run):
                # A write: its own run, so its reply can drop the keys again before the client
                # sees it (a fill that read the old value meanwhile must not survive the ack).
                pending.append(Run(1, slot.sent if type(slot) is Run else now, action))
                run = None
            elif (
                tiered
                and not session.verified
                and not session.verify_pending
                and (slot is _PLAIN or (type(slot) is Run and slot.sent and slot.on_reply is None))
            ):
                # The first reply tells whether Redis takes this connection as it is (not NOAUTH).
                session.verify_pending = True
                sync = replies.leave_fast_mode()
                if sync is not None:
                    pieces.append(sync)
                pending.append(Capture(now, session.on_verify))
                run = None
            elif slot is _PLAIN or (type(slot) is Run and slot.sent):
                if run is None:
                    run = Run(0, now)
                    pending.append(run)
                run.count += 1
            elif slot is NO_SLOT:
                run = None
            elif type(slot) is Run:  # a blocking command: its own run, exempt from timeouts
                pending.append(slot)
                run = None
            else:  # a reply to read, or markers: the reply side must find frame offsets
                sync = replies.leave_fast_mode()
                if sync is not None:
                    pieces.append(sync)
                if type(slot) is tuple:
                    pending.extend(slot)
                else:
                    pending.append(slot)
                run = None
            raw = encoded[i]
            pieces.append(raw if raw is not None else _pack(tuple(args)))
            forwarded += 1
            if name == b"EXEC" and (after := session.after_exec(now)) is not None:
                # (the proxy's own CLIENT INFO behind it: the database and user it left)
                sync = replies.leave_fast_mode()
                if sync is not None:
                    pieces.append(sync)
                pieces.append(after[0])
                pending.append(after[1])
                run = None
            if replies.closing:
                break
        if served:
            replies.write(b"".join(served))
        self.stats.commands_forwarded += forwarded
        if pieces:
            send(b"".join(pieces), len(pieces))
        return False


def _then(first: Callable[[], None], then: Callable[[bytes], bytes], frame: bytes) -> bytes:
    first()
    return then(frame)
