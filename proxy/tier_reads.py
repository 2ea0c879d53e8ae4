"""The hot tier's reads: ``TierReads`` decides, for one client connection, which reads of GETs the
tier serves, which it misses (and fills), and drops what writes change (see ``proxy.reads`` for
the verdicts and the access sink).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from proxy.framing import (
    GET_PREFIXES,
    SET_PREFIXES,
    get_run_keys,
    set_run_keys,
    single_get_key,
    single_set_key,
)
from proxy.keyspace import FLUSH_DB, KEYS, CommandTable
from proxy.reads import AccessSink, ForwardReads, worth_serving
from proxy.session import SPECIAL, Session
from proxy.slots import Run, Slot
from proxy.stats import Stats

if TYPE_CHECKING:
    from prefetch.tier import HotTier

_now = time.perf_counter
GET_NAMES = frozenset((b"GET", b"get", b"Get"))
SET_NAMES = frozenset((b"SET", b"set", b"Set"))
Effects = list[tuple[tuple[str, Any], int]]


class TierReads(ForwardReads):
    """The hot tier on: reads it can serve are served, misses ask for fills, writes drop keys."""

    def __init__(
        self,
        session: Session,
        stats: Stats,
        pending: deque[Slot],
        access: AccessSink | None,
        stream: int,
        fast_framing: bool,
        tier: HotTier,
        filler: Any,  # proxy.backchannel.Filler (or None: nothing is filled)
        command_table: Callable[[], CommandTable | None],
        max_batch: int,
    ) -> None:
        super().__init__(session, stats, pending, access, stream, fast_framing)
        self.tier = tier
        self.filler = filler
        self.command_table = command_table  # Redis's, once loaded (which writes touch which keys)
        self.max_batch = max_batch
        self.multi_effects: Effects = []  # keys written by commands queued in MULTI
        self._served = 0
        self._user = "default"
        self._user_of: Any = ()  # the credentials ``_user`` was computed from (() before the first)
        # The tier's request index for the session's db (HotTier.request_index): a hit is the one
        # lookup of the client's read in it.
        self.hit_index = tier.request_index(session.db)

    def db_changed(self, db: int) -> None:
        self.hit_index = self.tier.request_index(db)

    def _user_name(self) -> str:
        """The ACL user this connection reads as (an entry is served to that user only)."""
        auth = self.session.auth
        if auth is not self._user_of:  # cached per credentials: the hit path asks on every read
            self._user = self.session.reader()[1]
            self._user_of = auth
        return self._user

    def decide(self, data: bytes) -> bytes | Run | None:
        """The tier's request fast path, before hiredis: a read made only of GETs is served when
        every one is a hit, or forwarded as one plain run with fills asked for when most miss; a
        read that is one plain SET, or a run of them, is forwarded with its keys dropped.
        Anything else (a mix of hits and misses included) is left to the general path, which
        recounts it. Kept lean: on a hit this is all the proxy does, and against Redis's C every
        statement shows in throughput (bench/HISTORY.md)."""
        tier = self.tier
        s = self.session
        if (
            not tier.active
            or not s.verified
            or s.state_pending
            or s.in_multi
            or s.passthrough_req
            or s.reply_mode != b"ON"
            or not self.fast_framing
        ):
            return None
        entry = self.hit_index.get(data)
        if entry is not None:
            # One canonical GET of a key the tier holds (see HotTier.requests): served here if
            # the entry is fresh and this user's, and no reply is owed before it.
            if self.pending:
                return None  # a hit must wait for the replies ahead of it: the general path orders them
            now = tier.clock()
            if (
                entry.user != (self._user if s.auth is self._user_of else self._user_name())
                or now >= entry.until
                or (tier.epochs is not None and tier.written_elsewhere(entry))
            ):
                return None
            if tier.hit(entry, now):
                self._request_fill(s.db, [entry.key[1]], entry.user, refresh=True)
            frame = entry.handle if tier.host_values else tier.store.frame(entry.handle)
            self.stats.commands_local += 1
            self._served += 1
            if not self._served & 7:  # latency: one read in eight is enough for percentiles
                tier.served_latency.record(tier.clock() - now)
            if self.access is not None:
                self.access(self.stream, s.db, (entry.key[1],), True)
            return frame  # type: ignore[no-any-return]
        if not data.startswith(GET_PREFIXES):
            if data.startswith(SET_PREFIXES):
                # (SET's key is its first argument.) One SET, whatever its value; or a run of
                # plain SETs with values under 64 KiB and free of CRLF, as pipelines send them.
                if (written := single_set_key(data)) is not None:
                    return self._writes_run((written,), 1)
                if (keys := set_run_keys(data)) is not None:
                    return self._writes_run(keys, len(keys))
            return None  # (another write, say: the general path finds its keys)
        name = single_get_key(data)
        if name is None:
            keys = get_run_keys(data)
            return None if keys is None else self._decide_get_run(keys)
        db = s.db
        if not data.startswith(b"GET", 8) and (db, name) in tier.entries:
            # Held, but the request index holds only the spelling GET (not get, Get): the
            # general path serves it. (A GET that missed the index is not in the tier.)
            return None
        # The miss path: forwarded as one plain run with a fill asked for, as the general path
        # would after hiredis, canonical sizes and _plain_run_writes; skipping them keeps a miss
        # through the tier as cheap as a GET through the core.
        tier.misses += 1
        self._request_fill(db, [name], self._user_name())
        if self.access is not None:
            self.access(self.stream, db, (name,), False)
        return Run(1, _now())

    def _writes_run(self, keys: Any, count: int) -> Run:
        """A run of ``count`` commands writing ``keys``, forwarded as it is. The keys are dropped
        now, and again before any read of replies to this run reaches the client (the run's
        ``on_reply`` fires on every partial consumption too) if a fill began meanwhile: it may
        have read the value from before the write."""
        tier = self.tier
        tier.invalidate(keys)
        return Run(count, _now(), partial(tier.invalidate_if_filled, keys, tier.fills_begun))

    def _decide_get_run(self, names: list[bytes]) -> bytes | Run | None:
        """``decide`` for a read of several GETs (``names``, parsed by ``get_run_keys``)."""
        tier = self.tier
        db = self.session.db
        count = len(names)
        if count > self.max_batch:
            tier.bypassed += count  # a long read of GETs: forwarded whole
            self.on_access(db, names, False)
            return Run(count, _now())
        keys = list(zip(repeat(db), names))
        found: list[Any] = list(map(tier.entries.get, keys))  # (Entry or None)
        present = count - found.count(None)
        if present < count:
            if worth_serving(present, count):
                return None  # (the general path serves the hits among the misses)
            tier.misses += count
            self._request_fill(db, names, self._user_name())
            self.on_access(db, names, False)
            return Run(count, _now())
        if self.pending:
            return None
        user = self._user_name()
        now = tier.clock()
        for entry in found:
            if entry.user != user or now >= entry.until:
                return None  # (before any hit is counted: the general path counts them)
        hit = tier.hit
        for key, entry in zip(keys, found, strict=True):
            if hit(entry, now):
                self._request_fill(db, [key[1]], user, refresh=True)
        if tier.host_values:
            replies = [entry.handle for entry in found]
        else:
            frame_of = tier.store.frame
            replies = [frame_of(entry.handle) for entry in found]
        self.stats.commands_local += count
        self.on_access(db, names, True)
        self._served += 1
        if not self._served & 7:
            tier.served_latency.record(tier.clock() - now)
        return b"".join(replies)

    def decide_commands(self, cmds: list[Any]) -> Run | None:
        """Commands parsed by hiredis: one plain run if ``_plain_run_writes`` finds they can be
        forwarded as one (with the keys they write dropped), else the general path."""
        s = self.session
        if not s.verified and not s.verify_pending:
            return None  # (the general path asks Redis whether it accepts this connection)
        written = self._plain_run_writes(cmds)
        if written is None:
            return None
        if written:
            return self._writes_run(written, len(cmds))
        return Run(len(cmds), _now())

    def _plain_run_writes(self, cmds: list[Any]) -> list[bytes] | None:
        """The keys these commands write, if they can be forwarded as one plain run: none special,
        writes only of named keys (not in MULTI), and every GET a miss (fills requested here).
        None sends them through the general path."""
        tier = self.tier
        s = self.session
        table = self.command_table()
        if s.in_multi:
            return None  # queued writes happen at EXEC: the general path drops their keys then too
        names = set(map(itemgetter(0), cmds))
        if len(cmds) > self.max_batch and names <= GET_NAMES:
            tier.bypassed += len(cmds)  # a long read of GETs only: forwarded whole (checked at C speed)
            self.on_access(s.db, [args[1] for args in cmds if len(args) == 2], False)
            return []
        if names <= SET_NAMES:
            try:
                return list(map(itemgetter(1), cmds))  # SETs only: each writes its first argument
            except IndexError:
                pass  # (a SET without a key: the loop below finds nothing for it, Redis refuses it)
        gets: list[bytes] = []
        written: list[bytes] = []
        if table is None:
            return None
        simple = table.simple
        for args in cmds:
            name = args[0].upper()
            if name == b"GET" and len(args) == 2:
                gets.append(args[1])
                continue
            if name in SPECIAL or name == b"MGET":
                return None
            keys = simple.get(name)  # (SET, DEL, INCR...: table.effect's first case, inlined)
            if keys is not None:
                written += args[keys[0] : keys[1] : keys[2]]
                continue
            effect = table.effect(name, args)
            if effect is not None:
                if effect[0] != KEYS:
                    return None
                written += effect[1]
        if not gets:
            return written
        db = s.db
        if len(gets) > self.max_batch:
            tier.bypassed += len(gets)
            self.on_access(db, gets, False)
            return written
        if s.state_pending or not tier.active:
            self.on_access(db, gets, False)
            return written
        user = self._user_name()
        if s.verified:
            # (Presence only: the general path's lookups count the hits and check expiry, so a
            # lookup here would note every hit twice.)
            entries = tier.entries
            if worth_serving(sum(1 for key in gets if (db, key) in entries), len(gets)):
                return None
        tier.misses += len(gets)
        if not written:
            self._request_fill(db, gets, user)  # (a read that also writes fills nothing)
        self.on_access(db, gets, False)
        return written

    def read(self, name: bytes, args: list[bytes], now: float) -> bytes | None:
        """Serve GET/MGET from the tier (the reply), or schedule fills for what is missing.

        Fills are always safe to ask for: the filler reads with this connection's credentials on
        its own connection. Serving needs more: the db and user known on the request side (no
        SELECT/AUTH/HELLO in flight), not inside MULTI, replies on (no CLIENT REPLY OFF/SKIP), and
        Redis having accepted this connection as it is (``verified``), so a connection that must
        AUTH first gets NOAUTH from Redis.
        """
        if len(args) < 2 or (name == b"GET" and len(args) != 2):
            return None  # (an arity error from Redis, not a read)
        db = self.session.db
        keys = args[1:]
        reply = self._reply(name, keys, db, now)
        self.on_access(db, keys, reply is not None)
        return reply

    def _reply(self, name: bytes, keys: list[bytes], db: int, now: float) -> bytes | None:
        """``read``'s reply for well-formed ``keys``: the frames, or None with fills asked for."""
        tier = self.tier
        s = self.session
        if s.state_pending or s.in_multi or s.reply_mode != b"ON" or not tier.active:
            return None
        user = self._user_name()
        if not s.verified:
            self._request_fill(db, keys, user)
            return None
        if tier.due:  # (left by an earlier lookup whose caller did not serve)
            tier.due.clear()
        if name == b"GET":
            frame = tier.get_frame(db, keys[0], user)
            if frame is None:
                self._request_fill(db, keys, user)
                return None
            self._after_serving(db, user, now)
            return frame
        # An MGET is served whole or forwarded whole: only when every key can be served are they
        # looked up (and counted as hits); otherwise every key is a miss, and the ones the tier
        # cannot serve are filled.
        frames, unservable = tier.frames_of_all(db, keys, user)
        if frames is None:
            tier.misses += len(keys)
            self._request_fill(db, unservable, user)
            return None
        self._after_serving(db, user, now)
        return b"*%d\r\n" % len(frames) + b"".join(frames)

    def _after_serving(self, db: int, user: str, now: float) -> None:
        """After a served read: the refreshes its lookups found due are asked for, its latency noted."""
        tier = self.tier
        if tier.due:
            self._request_fill(db, tier.due, user, refresh=True)
            tier.due = []
        tier.served_latency.record(_now() - now)

    def _request_fill(self, db: int, keys: list[bytes], user: str, refresh: bool = False) -> None:
        """Ask the filler to read keys in; a refresh (of an entry being hit) skips admission."""
        filler = self.filler
        if filler is None:
            return
        if refresh:
            self.tier.refreshes += len(keys)
        elif not self.tier.admit():
            return
        identity = self.session.reader()[0]
        if refresh:
            filler.request_later(db, keys, identity, user)
        else:
            filler.request(db, keys, identity, user)

    def write(self, name: bytes, args: list[bytes]) -> Callable[[], None] | None:
        """Drop what a write may change now; return the action that drops it again on its reply."""
        table = self.command_table()
        if table is None:
            return None
        effect = table.effect(name, args)
        if effect is None:
            return None
        effects = [(effect, self.session.db)]
        self._apply_effects(effects)
        if self.session.in_multi and name != b"EXEC":
            self.multi_effects.extend(effects)  # queued: it runs at EXEC
        return partial(self._apply_effects, effects)

    def exec_action(self) -> Callable[[], None] | None:
        if not self.multi_effects:
            return None
        effects, self.multi_effects = self.multi_effects, []
        return partial(self._apply_effects, effects)

    def discard(self) -> None:
        self.multi_effects = []

    def _apply_effects(self, effects: Effects) -> None:
        tier = self.tier
        for (kind, keys), db in effects:
            if kind == KEYS:
                tier.invalidate(keys)
            elif kind == FLUSH_DB:
                tier.flush(db, local=True)
            else:
                tier.flush(local=True)
