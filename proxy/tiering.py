"""The hot tier's side of a client connection: serving GET/MGET hits, asking for fills, and
dropping what writes change. Mixed into ``ClientConnection``; the rules themselves live in
``prefetch.tier.HotTier`` and the command table in ``proxy.keyspace``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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
from proxy.keyspace import FLUSH_DB, KEYS
from proxy.resp import as_str
from proxy.session import SPECIAL

if TYPE_CHECKING:
    from prefetch.tier import HotTier
    from proxy.server import ProxyServer

_now = time.perf_counter
GET_NAMES = frozenset((b"GET", b"get", b"Get"))
SET_NAMES = frozenset((b"SET", b"set", b"Set"))


def worth_serving(present: int, count: int) -> bool:
    """Whether a read of ``count`` GETs, ``present`` of them held by the tier, is worth serving in
    part. Serving a few hits among misses costs more than it saves: interleaving local replies
    with forwarded ones needs the reply side to find frame offsets. So only when at least half
    the GETs can be served does the general path do it; otherwise the read is forwarded whole."""
    return 2 * present >= count


class TierMixin:
    # Provided by ClientConnection / SessionState.
    tier: HotTier | None
    server: ProxyServer
    stats: Any
    pending: Any
    verified: bool
    state_pending: int
    in_multi: bool
    passthrough_req: bool
    reply_mode: bytes
    req_parser: Any
    db: int
    auth: Any
    max_batch: int
    fast_framing: bool
    multi_effects: list[Any]
    access: Any  # server.AccessSink or None
    stream: int
    _served: int
    transport: Any
    paused: set[str]
    _user: str = "default"
    _user_of: Any = ()  # the credentials ``_user`` was computed from (() before the first call)
    # The tier's request index for this connection's db (HotTier.request_index): a hit is the one
    # lookup of the client's read in it.
    hit_index: dict[bytes, Any] = {}  # noqa: RUF012 (never written: replaced per connection)

    def db_changed(self) -> None:
        if self.tier is not None:
            self.hit_index = self.tier.request_index(self.db)

    def _check_output_limit(self) -> None:
        raise NotImplementedError

    def _send_upstream(self, data: bytes) -> None:
        raise NotImplementedError

    def _forward_plain(self, count: int, raw: bytes) -> None:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _accessed(self, db: int, keys: Sequence[bytes], hit: bool) -> None:
        """Tell the access sink (if any) the fate of a read's keys: every GET and MGET key passes
        here, or through the same call inlined where a read of GETs is decided before hiredis, once."""
        if self.access is not None:
            self.access(self.stream, db, keys, hit)

    def _user_name(self) -> str:
        """The ACL user this connection reads as (an entry is served to that user only)."""
        auth = self.auth
        if auth is not self._user_of:  # cached per credentials: the hit path asks on every read
            self._user = as_str(auth[0]) if auth is not None else "default"
            self._user_of = auth
        return self._user

    def _serve_gets(self, data: bytes) -> bool:
        """The tier's request fast path, before hiredis: a read made only of GETs is served when
        every one is a hit, or forwarded as one plain run with fills asked for when most miss; a
        read that is one plain SET, or a run of them, is forwarded with its keys dropped
        (``_forward_writes``).
        Anything else (a mix of hits and misses included) returns False and takes the general
        path, which recounts it. Kept lean: on a hit this is all the proxy does, and against
        Redis's C every statement shows in throughput (bench/HISTORY.md)."""
        tier = self.tier
        assert tier is not None
        if (
            not tier.active
            or not self.verified
            or self.state_pending
            or self.in_multi
            or self.passthrough_req
            or self.reply_mode != b"ON"
            or self.req_parser is not None
            or not self.fast_framing
        ):
            return False
        entry = self.hit_index.get(data)
        if entry is not None:
            # One canonical GET of a key the tier holds (see HotTier.requests): served here if
            # the entry is fresh and this user's, and no reply is owed before it.
            if self.pending:
                return False  # a hit must wait for the replies ahead of it: the general path orders them
            now = tier.clock()
            auth = self.auth
            if (
                entry.user != (self._user if auth is self._user_of else self._user_name())
                or now >= entry.until
            ):
                return False
            if tier.hit(entry, now):
                self._request_fill(self.db, [entry.key[1]], entry.user, refresh=True)
            frame = entry.handle if tier.host_values else tier.store.frame(entry.handle)
            stats = self.stats
            stats.commands_local += 1
            stats.bytes_out += len(frame)
            self.transport.write(frame)
            if self.paused:
                self._check_output_limit()
            self._served += 1
            if not self._served & 7:  # latency: one read in eight is enough for percentiles
                tier.served_latency.record(tier.clock() - now)
            if self.access is not None:
                self.access(self.stream, self.db, (entry.key[1],), True)
            return True
        if not data.startswith(GET_PREFIXES):
            if data.startswith(SET_PREFIXES):
                # (SET's key is its first argument.) One SET, whatever its value; or a run of
                # plain SETs with values under 64 KiB and free of CRLF, as pipelines send them.
                if (written := single_set_key(data)) is not None:
                    self._forward_writes((written,), 1, data)
                    return True
                if (keys := set_run_keys(data)) is not None:
                    self._forward_writes(keys, len(keys), data)
                    return True
            return False  # (another write, say: the general path finds its keys)
        name = single_get_key(data)
        if name is None:
            keys = get_run_keys(data)
            return keys is not None and self._serve_get_run(data, keys, tier)
        key = (self.db, name)
        if not data.startswith(b"GET", 8) and key in tier.entries:
            # Held, but the request index holds only the spelling GET (not get, Get): the
            # general path serves it. (A GET that missed the index is not in the tier.)
            return False
        # The miss path: forward the client's bytes as one plain run and ask for a fill, as
        # the general path would after hiredis, canonical sizes and _plain_run_writes; skipping
        # them keeps a miss through the tier as cheap as a GET through the core.
        tier.misses += 1
        self._request_fill(key[0], [name], self._user_name())
        self._forward_plain(1, data)
        if self.access is not None:
            self.access(self.stream, key[0], (name,), False)
        return True

    def _forward_writes(self, keys: Any, count: int, raw: bytes) -> None:
        """Forward ``raw`` (``count`` commands writing ``keys``) as one plain run. The keys are
        dropped now, and again before any read of replies to this run reaches the client (the
        run's action fires on every partial consumption too) if a fill began meanwhile: it may have
        read the value from before the write."""
        tier = self.tier
        assert tier is not None
        tier.invalidate(keys)
        self.pending.append([count, _now(), partial(tier.invalidate_if_filled, keys, tier.fills_begun)])
        self.stats.commands_forwarded += count
        self._send_upstream(raw)

    def _serve_get_run(self, data: bytes, names: list[bytes], tier: HotTier) -> bool:
        """``_serve_gets`` for a read of several GETs (``names``, parsed by ``get_run_keys``)."""
        count = len(names)
        if count > self.max_batch:
            tier.bypassed += count  # a long read of GETs: forwarded whole
            self._forward_plain(count, data)
            if self.access is not None:
                self.access(self.stream, self.db, names, False)
            return True
        db = self.db
        keys = list(zip(repeat(db), names))
        found: list[Any] = list(map(tier.entries.get, keys))  # (Entry or None)
        present = count - found.count(None)
        if present < count:
            if worth_serving(present, count):
                return False  # (the general path serves the hits among the misses)
            tier.misses += count
            self._request_fill(db, names, self._user_name())
            self._forward_plain(count, data)
            if self.access is not None:
                self.access(self.stream, db, names, False)
            return True
        if self.pending:
            return False
        user = self._user_name()
        now = tier.clock()
        for entry in found:
            if entry.user != user or now >= entry.until:
                return False  # (before any hit is counted: the general path counts them)
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
        self._write(b"".join(replies))
        if self.access is not None:
            self.access(self.stream, db, names, True)
        self._served += 1
        if not self._served & 7:
            tier.served_latency.record(tier.clock() - now)
        return True

    def _plain_run_writes(self, cmds: list[Any]) -> list[bytes] | None:
        """The keys these commands write, if they can be forwarded as one plain run: none special,
        writes only of named keys (not in MULTI), and every GET a miss (fills requested here).
        None sends them through the general path."""
        tier = self.tier
        table = self.server.command_table
        assert tier is not None
        if self.in_multi:
            return None  # queued writes happen at EXEC: the general path drops their keys then too
        names = set(map(itemgetter(0), cmds))
        if len(cmds) > self.max_batch and names <= GET_NAMES:
            tier.bypassed += len(cmds)  # a long read of GETs only: forwarded whole (checked at C speed)
            if self.access is not None:
                self.access(self.stream, self.db, [args[1] for args in cmds if len(args) == 2], False)
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
        if len(gets) > self.max_batch:
            tier.bypassed += len(gets)
            self._accessed(self.db, gets, False)
            return written
        if self.state_pending or not tier.active:
            self._accessed(self.db, gets, False)
            return written
        db = self.db
        user = self._user_name()
        if self.verified:
            # (Presence only: the general path's lookups count the hits and check expiry, so a
            # lookup here would note every hit twice.)
            entries = tier.entries
            if worth_serving(sum(1 for key in gets if (db, key) in entries), len(gets)):
                return None
        tier.misses += len(gets)
        if not written:
            self._request_fill(db, gets, user)  # (a read that also writes fills nothing)
        self._accessed(db, gets, False)
        return written

    def _tier_read(self, name: bytes, args: list[bytes], now: float) -> bytes | None:
        """Serve GET/MGET from the tier (the reply), or schedule fills for what is missing.

        Fills are always safe to ask for: the filler reads with this connection's credentials on
        its own connection. Serving needs more: the db and user known on the request side (no
        SELECT/AUTH/HELLO in flight), not inside MULTI, and Redis having accepted this connection
        as it is (``verified``), so a connection that must AUTH first gets NOAUTH from Redis.
        """
        tier = self.tier
        assert tier is not None
        if len(args) < 2 or (name == b"GET" and len(args) != 2):
            return None  # (an arity error from Redis, not a read)
        db = self.db
        keys = args[1:]
        reply = self._tier_reply(tier, name, keys, db, now)
        self._accessed(db, keys, reply is not None)
        return reply

    def _tier_reply(self, tier: HotTier, name: bytes, keys: list[bytes], db: int, now: float) -> bytes | None:
        """``_tier_read``'s reply for well-formed ``keys``: the frames, or None with fills asked for."""
        if self.state_pending or self.in_multi or not tier.active:
            return None
        user = self._user_name()
        if not self.verified:
            self._request_fill(db, keys, user)
            return None
        if tier.due:  # (left by an earlier lookup whose caller did not serve)
            tier.due.clear()
        if name == b"GET":
            frame = tier.get_frame(db, keys[0], user)
            if frame is None:
                self._request_fill(db, keys, user)
                return None
            if tier.due:
                self._request_fill(db, tier.due, user, refresh=True)
                tier.due = []
            tier.served_latency.record(_now() - now)
            return frame
        # An MGET is served whole or forwarded whole: only when every key can be served are they
        # looked up (and counted as hits); otherwise every key is a miss, and the ones the tier
        # cannot serve are filled.
        frames, unservable = tier.frames_of_all(db, keys, user)
        if frames is None:
            tier.misses += len(keys)
            self._request_fill(db, unservable, user)
            return None
        if tier.due:
            self._request_fill(db, tier.due, user, refresh=True)
            tier.due = []
        tier.served_latency.record(_now() - now)
        return b"*%d\r\n" % len(frames) + b"".join(frames)

    def _request_fill(self, db: int, keys: list[bytes], user: str, refresh: bool = False) -> None:
        """Ask the filler to read keys in; a refresh (of an entry being hit) skips admission."""
        filler = self.server.filler
        if filler is None or self.tier is None:
            return
        if refresh:
            self.tier.refreshes += len(keys)
        elif not self.tier.admit():
            return
        identity = None
        if self.auth is not None:
            identity = (as_str(self.auth[0]), as_str(self.auth[1]))
        if refresh:
            filler.request_later(db, keys, identity, user)
        else:
            filler.request(db, keys, identity, user)

    def _tier_write(self, name: bytes, args: list[bytes], table: Any) -> Any:
        """Drop what a write may change now; return the action that drops it again on its reply."""
        effect = table.effect(name, args)
        if effect is None:
            return None
        effects = [(effect, self.db)]
        self._apply_effects(effects)
        if self.in_multi and name != b"EXEC":
            self.multi_effects.extend(effects)  # queued: it runs at EXEC
        return self._effects_action(effects)

    def _effects_action(self, effects: list[tuple[tuple[str, Any], int]]) -> Callable[[], None]:
        return partial(self._apply_effects, effects)

    def _apply_effects(self, effects: list[tuple[tuple[str, Any], int]]) -> None:
        tier = self.tier
        if tier is None:
            return
        for (kind, keys), db in effects:
            if kind == KEYS:
                tier.invalidate(keys)
            elif kind == FLUSH_DB:
                tier.flush(db)
            else:
                tier.flush()
