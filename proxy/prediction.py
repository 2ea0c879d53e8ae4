"""Live prefetching: the proxy's side of the prediction engine.

``LivePrefetcher`` is the access sink (``proxy.reads.AccessSink``): for every read of GET and MGET
keys it appends a record (stream, db, keys, hit) to a bounded buffer and returns; that is all a
hit pays. A timer drains the buffer in batches (at most ``max_batch`` records or ``max_wait``
seconds) to the engine process (``prefetch.engine_process``) over a socket pair; its answers (keys
to prefetch, per arm) go to the tier's filler as the reading client's ACL user, after the keys the
tier already holds or is filling are dropped. Its answers land milliseconds after their read, so
the engine also sends what can be applied without it: hints (the likely next keys after a key) and
template rules (the model's "after a key of template T, the key of template U with its numbers"),
which a miss applies at once, its reads going out beside its own fill. One token bucket per arm
bounds all of them. Nothing here ever waits for the engine:

* the buffer full, or the socket's send buffer past its bound (the engine behind, stalled or
  dead), or the engine pausing to keep to its share of a core (``prefetch_engine_cpu``, which it
  says): the records are dropped from prediction and counted (``predict_shed``);
* the engine process dies, or stops answering for ``stall_after`` seconds while records wait: it
  is killed if need be and started again with backoff, and every such fallback is counted by
  reason. While it is down the arms prefetch nothing and the proxy serves as without prediction.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

import structlog

from common.histogram import LatencyHistogram
from common.keyshape import fill_bytes, shape_of
from prefetch.abtest import SequentialTest
from prefetch.abtest import report as ab_report
from prefetch.engine import ArmSplit
from prefetch.engine_process import Frames, frame
from prefetch.tier import HotTier
from proxy.upstream import UpstreamOpener

log = structlog.get_logger("predis.prediction")

_mono = time.monotonic
SEND_BUFFER_LIMIT = 1 << 20  # bytes waiting for the engine past which batches are shed
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 30.0
# The engine's per-arm counts that a restarted engine starts again from nothing: carried over.
CARRIED = ("prefetches", "shed", "predict_errors")
# The engine's per-arm counts a reset or a restart sets to nothing.
COUNTS = ("gets", "hits", "misses", *CARRIED)


_keys_of = itemgetter(2)


def silence(now: float, ready: bool, last_sent: float, last_heard: float, waiting_since: float) -> float:
    """How long the engine has kept silent that counts against it: while starting, since it was
    started (``last_heard``); running, since records began to wait for it (``waiting_since``) or
    it last spoke, whichever is later; 0 when nothing waits for it."""
    if not ready:
        return now - last_heard
    if last_sent <= last_heard:
        return 0.0
    return now - max(last_heard, waiting_since)


class EngineProtocol(asyncio.Protocol):
    """The socket to the engine process: frames in, handed to the prefetcher."""

    def __init__(self, owner: LivePrefetcher) -> None:
        self.owner = owner
        self.frames = Frames()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.owner.last_heard = _mono()
        for message in self.frames.feed(data):
            self.owner.on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.engine_lost(self)


class LivePrefetcher:
    def __init__(
        self,
        arms: Sequence[tuple[str, str]],
        tier: HotTier,
        filler: Any,  # proxy.backchannel.Filler
        opener: UpstreamOpener,
        shares: Sequence[float] | None = None,
        seed: int = 0,
        budget: float = 1.0,
        max_batch: int = 256,
        max_wait: float = 0.001,
        buffer_limit: int = 65_536,
        stall_after: float = 2.0,
        start_within: float = 120.0,
        hint_limit: int = 65_536,
        engine_config: str = "",
        hints: bool = True,
        rules: bool = True,
    ) -> None:
        """``engine_config``: the engine process's ``--config`` (``proxy.config.Settings.
        engine_config``: its arms, budget, staleness bound, priority, device, access log...)."""
        self.arms = list(arms)
        self.shares = list(shares) if shares else [1.0 / len(arms)] * len(arms)
        self.seed = seed
        self.config = engine_config
        # With --workers: the Unix socket of the engine every worker shares (the supervisor's);
        # None: this proxy starts an engine of its own.
        self.engine_address: str | None = None
        self.tier = tier
        self.filler = filler
        self.identity = opener.identity()
        self.user = opener.address.username or "default"
        # stream -> (credentials, ACL user) of its client, while connected (the server sets it).
        self.reader_of: Callable[[int], tuple[Any, str] | None] | None = None
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.buffer_limit = buffer_limit
        self.stall_after = stall_after
        self.start_within = start_within
        self.buffer: list[tuple[int, int, Sequence[bytes], bool]] = []
        self.scheduled = False
        self.batch_started = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.proto: EngineProtocol | None = None
        self.ready = False
        self.closed = False
        self.last_sent = 0.0  # when records last went to the engine
        self.last_heard = 0.0  # when the engine last said anything
        # When records began to wait for the engine's answer (the first sent after it last spoke):
        # its silence counts from here, not from when it last spoke. (An engine idle for a minute
        # is silent for a minute; the watchdog must not take the moment before it answers the
        # next batch for a stall.)
        self.waiting_since = 0.0
        self.backoff = BACKOFF_FIRST
        self.engine_report: dict[str, Any] = {"arms": []}
        self.sequential = SequentialTest()
        # Figures.
        self.records = 0
        self.sent = 0
        self.shed = 0
        self.requested = 0  # prefetch keys the engine asked for
        self.already_held = 0  # ...of which the tier held already (from before the read they follow)
        # ...of which the key was read (and missed) first: its fill in flight, or done since
        self.late = [0] * len(self.arms)
        self.latency = [LatencyHistogram() for _ in self.arms]  # read received -> prefetch sent
        self.answer_read = LatencyHistogram()  # the engine's prefetches sent -> read here (the loop's wait)
        self.starts = 0
        self.fallbacks: dict[str, int] = {"engine_died": 0, "engine_stalled": 0, "engine_error": 0}
        self.killing: str | None = None  # why the engine is being killed (its loss is counted so)
        self.watchdog: asyncio.Task[None] | None = None
        # Hints: for a key the engine predicted from, the likely next keys it named then (a few
        # per arm). A miss of that key reads them beside its own fill, from the access sink,
        # without waiting for the engine: its answer lands milliseconds after a read, and in a
        # burst of reads (a page's product, inventory and reviews, 0.5 ms apart) the next read
        # comes sooner than that; the fills land together, before the client can ask for the
        # next key. (On a miss only: a hit's path pays nothing for hints.) Bounded (least recently
        # named key dropped). Hinted fetches and the engine's prefetches spend one token bucket
        # per arm that gains ``budget`` per GET of the arm's keys (the simulator's rule), so hints
        # add no upstream reads past the budget.
        self.hints: OrderedDict[tuple[int, bytes], tuple[bytes, ...]] = OrderedDict()
        self.hint_limit = hint_limit
        # Whether the engine's hints and template rules are used at all (prefetch_hints,
        # prefetch_rules: off, a miss reads only its own key, and prefetches come only from the
        # engine's answers, as in the simulator).
        self.use_hints, self.use_rules = hints, rules
        self.budget = budget
        self.cap_tokens = max(2.0, 4 * budget)
        self.tokens = [0.0] * len(self.arms)
        self.arm_of = ArmSplit(self.shares, seed).arm_of if len(self.arms) > 1 else None
        self.hinted = [0] * len(self.arms)  # keys fetched on a hint
        # Template rules an arm's model taught (prefetch.engine): after a miss of a key of template
        # T, the keys of templates U with its numbers. A few per template, kept for the proxy's life
        # (the engine teaches each once).
        self.rules: dict[bytes, list[tuple[int, bytes]]] = {}
        self.ruled = 0  # keys a rule named (fetched when not held and the arm had a token)
        self.over_budget = [0] * len(self.arms)  # prefetches the engine asked for without a token left
        self.fetched = [0] * len(self.arms)  # keys read upstream ahead of a read: prefetches and hints
        # The tier's per-arm prefetch counts when the experiment's figures last started again.
        self.fills_base = [0] * len(self.arms)
        self.prefetched_hits_base = [0] * len(self.arms)
        # An arm's GETs and hits are the engine's (counted in the order its peers' batches and
        # resets reach it), and besides them, counted here at each batch's flush, so that they are
        # every read the proxy served: the reads shed here, which the engine never saw...
        n = len(self.arms)
        self.shed_gets, self.shed_hits = [0] * n, [0] * n
        # ...and those sent to the engine now running: when it dies they are carried (a restarted
        # engine counts from nothing), with its own counts of prefetches, shed and errors.
        self.sent_gets, self.sent_hits = [0] * n, [0] * n
        self.carried: list[dict[str, int]] = [dict.fromkeys(("gets", "hits", *CARRIED), 0) for _ in self.arms]
        # Until when (this clock) the engine said it pauses, keeping to its CPU share; 0: it does not.
        self.paused_until = 0.0

    # ------------------------------------------------------------------ the request path

    def __call__(self, stream: int, db: int, keys: Sequence[bytes], hit: bool) -> None:
        """The access sink: record and return. One record per call (a read's keys together), no
        clock read: a batch carries the time its first record came (``batch_started``), which is
        what the engine's staleness bound and the latency figures need."""
        buffer = self.buffer
        if len(buffer) < self.buffer_limit:
            buffer.append((stream, db, keys, hit))
            if not self.scheduled:
                self.scheduled = True
                self.batch_started = _mono()
                self.loop.call_later(self.max_wait, self.flush)  # type: ignore[union-attr]
            elif len(buffer) >= self.max_batch:
                self.flush()
        else:
            self.shed += len(keys)
            self._count_shed(keys, hit)
        if not hit and self.hints:  # a miss: its hinted keys are read beside its own fill
            hints = self.hints
            for key in keys:
                hinted = hints.get((db, key))
                if hinted is not None:
                    self._fetch_hinted(stream, db, hinted)
        if not hit and self.rules:  # ...and the keys its shape's rules name
            for key in keys:
                self._apply_rules(stream, db, key)

    def _count_shed(self, keys: Sequence[bytes], hit: bool) -> None:
        """Count a read shed before it reached a batch (the buffer full) in its keys' arms."""
        for key in keys:
            arm = self.arm_of(key) if self.arm_of is not None else 0
            self.shed_gets[arm] += 1
            self.shed_hits[arm] += hit

    def flush(self) -> None:
        """Send the buffered records to the engine, or shed them if it cannot take them now."""
        self.scheduled = False
        records, self.buffer = self.buffer, []
        if not records:
            return
        count = sum(map(len, map(_keys_of, records)))
        # The arms' token buckets gain ``budget`` per GET of their keys (here, once per batch:
        # nothing on a hit's path).
        tokens, budget, cap = self.tokens, self.budget, self.cap_tokens
        transport = self.proto.transport if self.proto is not None and self.ready else None
        shed = (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > SEND_BUFFER_LIMIT
            or (self.paused_until and self._engine_paused())
        )
        gets, hits = (self.shed_gets, self.shed_hits) if shed else (self.sent_gets, self.sent_hits)
        if self.arm_of is None:
            have = tokens[0] + budget * count
            tokens[0] = cap if have > cap else have
            gets[0] += count
            hits[0] += sum(len(record[2]) for record in records if record[3])
        else:
            arm_of = self.arm_of
            for record in records:
                hit = record[3]
                for key in record[2]:
                    arm = arm_of(key)
                    have = tokens[arm] + budget
                    tokens[arm] = cap if have > cap else have
                    gets[arm] += 1
                    if hit:
                        hits[arm] += 1
        self.records += count
        if shed or transport is None:
            self.shed += count
            return
        transport.write(frame(("reads", (self.batch_started, records))))
        self.sent += count
        now = _mono()
        if self.last_sent <= self.last_heard:
            self.waiting_since = now
        self.last_sent = now

    # ------------------------------------------------------------------ the engine's answers

    def _engine_paused(self) -> bool:
        """Whether the engine said it pauses now (its CPU share spent): batches are shed meanwhile."""
        if _mono() < self.paused_until:
            return True
        self.paused_until = 0.0
        return False

    def on_message(self, message: tuple[str, Any]) -> None:
        kind, payload = message
        if kind == "prefetch":
            sent, prefetches = payload
            self.answer_read.record(_mono() - sent)
            self._prefetch(prefetches)
        elif kind == "hints":
            if self.use_hints:
                self._hints(payload)
        elif kind == "rules":
            if self.use_rules:
                self._rules(payload)
        elif kind == "pause":  # (the engine keeps to its CPU share: prefetch.cpubudget)
            self.paused_until = payload
        elif kind == "report":
            self.engine_report = payload
        elif kind == "reset":  # (a shared engine's: a worker's PREDIS AB RESET, for every worker)
            self._reset_figures()
        elif kind == "ready":
            self.ready = True
            self.backoff = BACKOFF_FIRST
            self.engine_report = payload
            log.info("prediction engine ready", arms=[f"{n}={s}" for n, s in self.arms])
        elif kind == "error":
            self.fallbacks["engine_error"] += 1
            log.error("prediction engine failed to start", error=payload)

    def _fetch_hinted(self, stream: int, db: int, hinted: tuple[bytes, ...]) -> None:
        """Fetch the keys hinted after a read of a key, those the tier neither holds nor is
        filling, as the arm's tokens allow."""
        tier = self.tier
        entries, inflight, tokens = tier.entries, tier.inflight, self.tokens
        arm_of = self.arm_of
        # (The GETs buffered since the last flush, this miss's included, bring their arms their
        # tokens when the batch is flushed: they may be spent now, ahead of it. With several arms
        # this lends one arm what another's GETs bring until the flush settles it.)
        floor = 1.0 - self.budget * len(self.buffer)
        wanted = []
        for key in hinted:
            name = (db, key)
            if name in entries or name in inflight:
                continue
            arm = arm_of(key) if arm_of is not None else 0
            if tokens[arm] < floor:
                continue
            tokens[arm] -= 1.0
            self.hinted[arm] += 1
            self.fetched[arm] += 1
            wanted.append(key)
        if wanted and self.filler is not None:
            identity, user = self.reader(stream)
            self.filler.request(db, wanted, identity, user, prefetched=True)

    def reader(self, stream: int) -> tuple[Any, str]:
        """Whom a prefetch for a read of ``stream`` reads as: that client's ACL identity (its entry
        then serves that user, as a fill of its own miss would), or the upstream URL's when the
        client has gone."""
        found = self.reader_of(stream) if self.reader_of is not None else None
        return found if found is not None else (self.identity, self.user)

    def _apply_rules(self, stream: int, db: int, key: bytes) -> None:
        """A missed key's template rules: the keys of the templates an arm's model names after
        this one, filled with its numbers, each fetched when it is that arm's."""
        template, numbers = shape_of(key)
        targets = self.rules.get(template)
        if targets is None:
            return
        arm_of = self.arm_of
        named = []
        for arm, target in targets:
            other = fill_bytes(target, numbers)
            if other is not None and (arm_of is None or arm_of(other) == arm):
                named.append(other)
        if named:
            self.ruled += len(named)
            self._fetch_hinted(stream, db, tuple(named))

    def _rules(self, rules: list[tuple[int, str, str]]) -> None:
        for arm, source, target in rules:
            rule = (arm, target.encode())
            known = self.rules.setdefault(source.encode(), [])
            if rule not in known:  # (a restarted engine teaches its rules again)
                known.append(rule)

    def _hints(self, hints: list[tuple[int, bytes, tuple[bytes, ...]]]) -> None:
        table = self.hints
        for db, source, keys in hints:
            name = (db, source)
            if not keys:  # (nothing likely follows it now)
                table.pop(name, None)
                continue
            table[name] = keys
            table.move_to_end(name)
        while len(table) > self.hint_limit:
            table.popitem(last=False)

    def _prefetch(self, prefetches: list[tuple[int, bytes, int, float, int]]) -> None:
        tier = self.tier
        entries, inflight, tokens = tier.entries, tier.inflight, self.tokens
        by_reader: dict[tuple[int, int], list[bytes]] = {}
        now = _mono()
        for db, key, arm, t, stream in prefetches:
            self.requested += 1
            entry = entries.get((db, key))
            if entry is not None:
                if not entry.prefetched and entry.filled >= t:
                    # Read, missed and filled on demand after the read this was predicted from,
                    # before this came: late (the simulator's --prefetch-delay counts the same).
                    self.late[arm] += 1
                else:
                    self.already_held += 1
                continue
            if (db, key) in inflight:
                # Being filled already: a read of it came first and missed (or a prefetch of it
                # is still on its way); this prefetch is too late to be of use.
                self.late[arm] += 1
                continue
            if tokens[arm] < 1.0:  # (hinted fetches spent them)
                self.over_budget[arm] += 1
                continue
            tokens[arm] -= 1.0
            self.fetched[arm] += 1
            self.latency[arm].record(now - t)
            by_reader.setdefault((stream, db), []).append(key)
        if self.filler is None:
            return
        for (stream, db), keys in by_reader.items():
            identity, user = self.reader(stream)
            self.filler.request(db, keys, identity, user, prefetched=True)

    # ------------------------------------------------------------------ the engine's life

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            await self._spawn()
        except OSError as exc:
            self._retry(exc)
        self.watchdog = self.loop.create_task(self._watch())

    async def _spawn(self) -> None:
        assert self.loop is not None
        if self.engine_address is not None:  # the shared engine: connect to it
            self.ready = False
            self.last_heard = _mono()
            _, proto = await self.loop.create_unix_connection(
                lambda: EngineProtocol(self), path=self.engine_address
            )
            self.starts += 1
            self.proto = proto
            return
        ours, theirs = socket.socketpair()
        try:
            env = dict(os.environ)
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prefetch.engine_process",
                    "--fd",
                    str(theirs.fileno()),
                    "--config",
                    self.config,
                ],
                pass_fds=(theirs.fileno(),),
                env=env,
            )
        finally:
            theirs.close()
        self.starts += 1
        self.ready = False
        self.last_heard = _mono()
        assert self.loop is not None
        _, proto = await self.loop.create_unix_connection(lambda: EngineProtocol(self), sock=ours)
        self.proto = proto

    def engine_lost(self, proto: EngineProtocol) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        self.ready = False
        self.paused_until = 0.0  # (its successor has not paused)
        if self.closed:
            return
        self.fallbacks[self.killing or "engine_died"] += 1
        self.killing = None
        self._carry()
        log.warning("prediction engine gone; prefetching paused until it is back", backoff=self.backoff)
        self._reap()
        assert self.loop is not None
        self._later()

    def _later(self) -> None:
        """Start (or reach) the engine again after the backoff, which doubles each time."""
        assert self.loop is not None
        self.loop.call_later(self.backoff, lambda: self.loop.create_task(self._respawn()))  # type: ignore[union-attr]
        self.backoff = min(BACKOFF_MAX, self.backoff * 2)

    def _retry(self, exc: OSError) -> None:
        what = "reach the shared" if self.engine_address is not None else "start the"
        log.error(f"cannot {what} prediction engine; trying again", error=str(exc), backoff=self.backoff)
        self._later()

    async def _respawn(self) -> None:
        if self.closed or self.proto is not None:
            return
        try:
            await self._spawn()
        except OSError as exc:
            self._retry(exc)

    async def _watch(self) -> None:
        """Tell the engine how many entries each arm's part of the tier holds (its shadows of
        them follow), and kill an engine that has records to answer but has said nothing for
        ``stall_after``."""
        told: list[int] = []
        while not self.closed:
            await asyncio.sleep(min(0.5, self.stall_after / 2))
            if self.proto is None or (self.proc is None and self.engine_address is None):
                told = []
                continue
            entries = list(self.tier.part_entries)
            transport = self.proto.transport
            if self.ready and entries != told and transport is not None and not transport.is_closing():
                tier = self.tier
                # Entries each part holds when full: its bytes over the mean entry's (0 while empty).
                full = [
                    round(cap * n / used) if used else 0
                    for cap, n, used in zip(tier.part_capacity, entries, tier.part_used, strict=False)
                ]
                transport.write(frame(("resize", (entries, full))))
                told = entries
            now = _mono()
            # Starting, the engine imports its predictors (torch and a model: seconds): it has
            # ``start_within`` to say it is ready; running, ``stall_after`` to answer records.
            bound = self.stall_after if self.ready else max(self.stall_after, self.start_within)
            silent = silence(now, self.ready, self.last_sent, self.last_heard, self.waiting_since)
            if silent > bound:
                self.killing = "engine_stalled"  # (counted when the loss follows)
                log.warning("prediction engine stalled; restarting it", seconds=round(silent, 2))
                if self.proc is not None:
                    self.proc.kill()
                elif transport is not None:
                    # (a shared engine is the supervisor's to restart: this worker leaves it and
                    # comes back, shedding its reads meanwhile)
                    transport.abort()

    def _reap(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.kill()
                proc.wait(timeout=1)
            except (OSError, subprocess.TimeoutExpired):
                pass

    async def close(self, grace: float = 5.0) -> None:
        """Close the engine's socket and give its process ``grace`` seconds to finish on its own
        (its access recorder writes what waits and closes its file), then kill it."""
        self.closed = True
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()
        proc = self.proc
        deadline = _mono() + grace
        while proc is not None and proc.poll() is None and _mono() < deadline:
            await asyncio.sleep(0.01)
        self._reap()

    # ------------------------------------------------------------------ figures

    def figures(self) -> dict[str, Any]:
        arms = self.engine_report.get("arms", [])
        engine_shed = sum(int(arm.get("shed", 0)) for arm in arms) + sum(c["shed"] for c in self.carried)
        out: dict[str, Any] = {
            "engine_up": int(self.ready),
            "engine_starts": self.starts,
            "records": self.records,
            "records_sent": self.sent,
            "predict_shed": self.shed + engine_shed,
            "prefetch_requested": self.requested,
            "prefetch_already_held": self.already_held,
            "prefetch_late": sum(self.late),
            "prefetch_hinted": sum(self.hinted),
            "prefetch_rules": sum(map(len, self.rules.values())),
            "prefetch_ruled": self.ruled,
            # (with --workers, the one engine's: every worker names the same)
            "engine_pid": int(self.engine_report.get("pid", 0)),
        }
        for reason, count in self.fallbacks.items():
            out[f"fallback_{reason}"] = count
        for key, value in self.engine_report.get("access_log", {}).items():
            out[f"access_log_{key}"] = value
        out.update(self.engine_report.get("drift", {}))
        for key, value in self.engine_report.get("stages", {}).items():
            out[f"engine_{key}"] = value
        cpu = self.engine_report.get("cpu", {})
        out["engine_cpu_seconds"] = float(cpu.get("seconds", 0.0))  # (the running engine's, since its start)
        out["engine_paused_seconds"] = float(cpu.get("paused_seconds", 0.0))
        for p in (50, 99):  # (the last stage: from the engine's answer to this loop reading it)
            out[f"engine_answer_read_p{p}_us"] = self.answer_read.percentile(p)
        return out

    def reset_ab(self) -> None:
        """Start the experiment's figures again (PREDIS AB RESET); the engine's too (a shared
        engine tells every worker to start theirs again)."""
        self._reset_figures()
        transport = self.proto.transport if self.proto is not None else None
        if transport is not None and not transport.is_closing():
            transport.write(frame(("reset", None)))

    def _carry(self) -> None:
        """The engine is gone (its successor counts from nothing): the reads sent to it are kept
        here, those it had not reported yet included, with its last report's counts of prefetches,
        shed reads and errors; that report's counts are zeroed, so none is counted twice."""
        arms = self.engine_report.get("arms", [])
        for i, carried in enumerate(self.carried):
            carried["gets"] += self.sent_gets[i]
            carried["hits"] += self.sent_hits[i]
            if i < len(arms):
                for name in CARRIED:
                    carried[name] += int(arms[i].get(name, 0))
        n = len(self.arms)
        self.sent_gets, self.sent_hits = [0] * n, [0] * n
        self.engine_report = {
            **self.engine_report,
            "arms": [{**arm, **dict.fromkeys(COUNTS, 0)} for arm in arms],
        }

    def _reset_figures(self) -> None:
        self.sequential.reset()
        n = len(self.arms)
        self.late, self.hinted, self.over_budget, self.fetched = [0] * n, [0] * n, [0] * n, [0] * n
        self.shed_gets, self.shed_hits, self.sent_gets, self.sent_hits = [0] * n, [0] * n, [0] * n, [0] * n
        self.carried = [dict.fromkeys(("gets", "hits", *CARRIED), 0) for _ in self.arms]
        self.latency = [LatencyHistogram() for _ in self.arms]
        self.answer_read = LatencyHistogram()
        if len(self.tier.policies) == n:
            self.fills_base = list(self.tier.part_prefetch_fills)
            self.prefetched_hits_base = list(self.tier.part_prefetched_hits)
        self.engine_report = {
            **self.engine_report,
            "arms": [{**arm, **dict.fromkeys(COUNTS, 0)} for arm in self.engine_report.get("arms", [])],
        }

    def arm_figures(self) -> list[dict[str, Any]]:
        """Per arm: its GETs, hits and misses (every read the proxy served: the engine's, its
        earlier lives' and those shed here), the reads the engine got, the engine's figures
        (prefetches asked, shed, predictor errors, over all its lives) with the
        proxy's (reads shed here, prefetches filled, their first hits and precision, late ones,
        hinted reads, upstream reads per GET, prediction latency from the read to the prefetch's
        send, p50 and p99 in microseconds), all since the experiment's figures last started."""
        tier = self.tier
        partitioned = len(tier.policies) == len(self.arms)
        out = []
        for i, arm in enumerate(self.engine_report.get("arms", [])):
            fills = tier.part_prefetch_fills[i] - self.fills_base[i] if partitioned else None
            first_hits = tier.part_prefetched_hits[i] - self.prefetched_hits_base[i] if partitioned else None
            carried = self.carried[i]
            engine_reads = int(arm.get("gets", 0)) + carried["gets"]
            gets = engine_reads + self.shed_gets[i]
            hits = int(arm.get("hits", 0)) + carried["hits"] + self.shed_hits[i]
            upstream = gets - hits + self.fetched[i]
            out.append(
                {
                    **arm,
                    "gets": gets,
                    "hits": hits,
                    "misses": gets - hits,
                    # (the reads the engine got: those it predicted from and those it shed)
                    "engine_reads": engine_reads,
                    "prefetches": int(arm.get("prefetches", 0)) + carried["prefetches"],
                    "shed": int(arm.get("shed", 0)) + carried["shed"] + self.shed_gets[i],
                    "predict_errors": int(arm.get("predict_errors", 0)) + carried["predict_errors"],
                    "prefetch_fills": fills,
                    "prefetched_hits": first_hits,
                    "precision": round(first_hits / fills, 4) if fills and first_hits is not None else None,
                    "late": self.late[i],
                    "hinted": self.hinted[i],
                    "over_budget": self.over_budget[i],
                    "fetched": self.fetched[i],
                    # Upstream reads per GET: its misses' and those read ahead (no arm wins by more).
                    "upstream_per_get": round(upstream / gets, 4) if gets else None,
                    "prediction_p50_us": self.latency[i].percentile(50),
                    "prediction_p99_us": self.latency[i].percentile(99),
                }
            )
        return out

    def ab(self, arms: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The A/B report over the arms' latest figures (this proxy's, or ``arms``: every worker's,
        ``proxy.workers.merge_arms``), and the split (so that a client can tell which arm a key is
        in: ``predis replay`` measures each arm's GET latency so)."""
        rules = [
            {"arm": self.arms[arm][0], "from": source.decode(), "to": target.decode()}
            for source, targets in self.rules.items()
            for arm, target in targets
        ]
        return {
            **ab_report(self.arm_figures() if arms is None else arms, self.sequential),
            "split": {"shares": self.shares, "seed": self.seed},
            "rules": rules,  # the template rules the arms' models taught (see _apply_rules)
        }
