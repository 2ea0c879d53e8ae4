"""The prediction engine's process: ``python -m prefetch.engine_process --fd N --config JSON``.

Started by the proxy (``proxy.prediction``) with one end of a socket pair as ``--fd``; or, for
``predis serve --workers N``, by the supervisor (``proxy.workers``) with a listening Unix socket as
``--listen-fd``, which every worker connects to: one engine for all the workers, each a peer
(``prefetch.engine``), until SIGTERM. The socket is the supervisor's, so workers reach a restarted
engine at the same place. Messages
both ways are frames: a 4-byte big-endian length, then a pickled tuple. In: ``("reads",
(batch time, [(stream, db, keys, hit), ...]))``, ``("reset", None)`` (the experiment's figures start again), ``("resize", ([entries per arm], [entries each arm's part holds when full]))`` (the
live tier's, which the engine's shadows of it follow). Out: ``("ready", report)`` once the arms' predictors are built, ``("error", line)``
if they cannot be (then it exits), ``("hints", [(db, key, (keys named after it...)), ...])`` when
what the arms name after a key with some confidence changed (empty: nothing now), ``("rules",
[(arm, template, template named after it with the same numbers), ...])`` when a shape-aware arm
(the model) has taught one, ``("prefetch", (sent at, [(db, key, arm, read time, read stream),
...]))`` after each batch that asks for any (sent at: this process's monotonic clock, the proxy's), ``("report", report)`` at most every ``REPORT_EVERY`` seconds. It exits when the
proxy closes its end; ``("reset", None)`` also goes to every peer when one asks for it (the
experiment's figures start again in every worker). Only the proxy writes to the socket's other end, so pickle carries nothing
that another party made.

With ``access_log`` in the config (``accesslog.recorder.AccessRecorder``'s arguments), every read
that comes is also recorded, here and not on the proxy's event loop, and the report carries the
recorder's figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from accesslog.recorder import AccessRecorder
from common.errors import ConfigError
from common.histogram import LatencyHistogram
from prefetch.cpubudget import CpuBudget
from prefetch.engine import Engine, Prefetch, Record, peer_db, peer_of_db, peer_of_stream, peer_stream

REPORT_EVERY = 0.2
CHUNK = 256  # reads stepped between two looks at the CPU share, when the engine is held to one
_LEN = struct.Struct(">I")


def frame(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


class Frames:
    """Splits a byte stream into messages."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self.buffer += data
        out = []
        buf = self.buffer
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if len(buf) - pos - 4 < size:
                break
            out.append(pickle.loads(bytes(buf[pos + 4 : pos + 4 + size])))
            pos += 4 + size
        del buf[:pos]
        return out


def expand(t: float, reads: list[tuple[int, int, Any, bool]]) -> list[Record]:
    """A batch as the proxy sends it (its time, then one (stream, db, keys, hit) per read) as the
    engine's records, one per key."""
    return [(stream, db, key, t, hit) for stream, db, keys, hit in reads for key in keys]


def drain(sock: socket.socket, limit: int = 8 << 20) -> bytes:
    """What else the socket holds now, without waiting (at most ``limit`` bytes)."""
    chunks: list[bytes] = []
    size = 0
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while size < limit:
            try:
                chunk = sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break  # (the proxy closed its end: the next blocking recv says so)
            chunks.append(chunk)
            size += len(chunk)
    finally:
        sock.settimeout(timeout)
    return b"".join(chunks)


RECORD_EVERY = 1.0  # seconds between the access recorder's writes
OUT_LIMIT = 64 << 20  # bytes waiting for a peer past which it is dropped (it stopped reading)


class Peer:
    """A proxy the engine serves: its socket, what it sent that is not yet a whole frame, what
    waits to be sent to it, and the tier sizes it last told."""

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.frames = Frames()
        self.out = bytearray()
        self.sizes: tuple[list[int], list[float]] | None = None
        self.changed = True  # (its next report is due)
        self.last_report = 0.0  # (so a peer's first batch after a quiet spell is answered at once)


def serve(
    sock: socket.socket | None,
    engine: Engine,
    recorder: AccessRecorder | None = None,
    listener: socket.socket | None = None,
    cpu: CpuBudget | None = None,
) -> None:
    """Answer batches; with a recorder, record every read that comes (before any is shed from
    prediction) and write them every ``RECORD_EVERY`` seconds. ``sock``: the one proxy this engine
    serves, until it closes its end. ``listener``: a listening socket every proxy of a ``--workers``
    set connects to; served until SIGTERM or until the process that started it is gone. ``cpu``:
    the share of a core it keeps to (``prefetch.cpubudget``; none: no bound)."""
    try:
        Hub(engine, recorder, listener, cpu or CpuBudget(1.0)).run(sock)
    finally:
        if recorder is not None:
            recorder.close()


class Hub:
    """The engine's side of its sockets: one or more peers (``prefetch.engine``'s), each a proxy.
    Their reads are stepped together; each prefetch and hint goes to the peer whose read it
    followed, a template rule to every peer, a report to each peer with its own arms' figures."""

    def __init__(
        self,
        engine: Engine,
        recorder: AccessRecorder | None,
        listener: socket.socket | None,
        cpu: CpuBudget,
    ) -> None:
        self.engine = engine
        self.cpu = cpu
        self.recorder = recorder
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.peers: dict[int, Peer] = {}
        self.ids = itertools.count()
        self.rules: list[tuple[int, str, str]] = []  # every rule taught (a peer that comes later gets them)
        self.parent = os.getppid()
        # Where prediction latency goes, per batch, from its first read at the proxy: to the
        # engine's read of it (the proxy's wait and loop, the socket, the engine's wake-up), and to
        # the engine's answer written (that, the batches ahead of it and its step).
        self.arrived = LatencyHistogram()
        self.answered = LatencyHistogram()

    def report(self, peer: int) -> dict[str, Any]:
        report = self.engine.report(peer)
        report["pid"] = os.getpid()
        report["peers"] = len(self.peers)
        report["cpu"] = {
            "seconds": round(time.process_time(), 3),
            "paused_seconds": round(self.cpu.paused, 3),
        }
        report["stages"] = {
            f"{name}_p{p}_us": histogram.percentile(p)
            for name, histogram in (("arrived", self.arrived), ("answered", self.answered))
            for p in (50, 99)
        }
        if self.recorder is not None:
            report["access_log"] = self.recorder.figures()
        return report

    def add(self, sock: socket.socket) -> Peer:
        peer = Peer(next(self.ids), sock)
        self.peers[peer.index] = peer
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, peer)
        self.send(peer, frame(("ready", self.report(peer.index))))
        if self.rules:
            self.send(peer, frame(("rules", self.rules)))
        return peer

    def drop(self, peer: Peer) -> None:
        if self.peers.pop(peer.index, None) is None:
            return
        self.selector.unregister(peer.sock)
        peer.sock.close()
        self.engine.forget(peer.index)
        self._resize()

    def send(self, peer: Peer, data: bytes) -> None:
        if peer.out:
            peer.out += data
        else:
            try:
                sent = peer.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.drop(peer)
                return
            if sent < len(data):
                peer.out += data[sent:]
                self.selector.modify(peer.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, peer)
        if len(peer.out) > OUT_LIMIT:
            self.drop(peer)  # (it stopped reading: it reconnects, or its proxy is gone)

    def _write(self, peer: Peer) -> None:
        try:
            sent = peer.sock.send(peer.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop(peer)
            return
        del peer.out[:sent]
        if not peer.out:
            self.selector.modify(peer.sock, selectors.EVENT_READ, peer)

    def _resize(self) -> None:
        """The shadows follow every peer's tier: the entries each arm's part holds summed over the
        peers (each peer's keys are its own in them), and the entries a part holds when full as a
        peer's does on average (the cache size the model's gate is chosen for)."""
        told = [peer.sizes for peer in self.peers.values() if peer.sizes is not None]
        if not told:
            return
        arms = len(self.engine.names)
        entries = [sum(int(t[0][a]) for t in told if a < len(t[0])) for a in range(arms)]
        full = [sum(float(t[1][a]) for t in told if a < len(t[1])) / len(told) for a in range(arms)]
        self.engine.resize(entries, full)

    def run(self, sock: socket.socket | None) -> None:
        engine, recorder, selector = self.engine, self.recorder, self.selector
        if self.listener is not None:
            self.listener.setblocking(False)
            selector.register(self.listener, selectors.EVENT_READ, None)
        if sock is not None:
            self.add(sock)
        # The proxy's batch times are its monotonic clock (the same clock here); the log's are epoch.
        to_epoch = time.time() - time.monotonic()
        last_write = time.monotonic()
        while True:
            if self.listener is None and not self.peers:
                return  # (the one proxy closed its end)
            if self.listener is not None and os.getppid() != self.parent:
                return  # (the supervisor is gone)
            out: list[Prefetch] = []
            # The batches that arrived while the last step ran are stepped together: a model's
            # step costs about as much for one read as for dozens, so an engine that fell behind
            # catches up in one larger step instead of many small ones.
            pending: list[Record] = []
            started: list[float] = []  # (the batches of this round: when their first read came)
            for key, mask in selector.select(REPORT_EVERY):  # (an idle engine still reports)
                peer = key.data
                if peer is None:
                    self._accept()
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._write(peer)
                if mask & selectors.EVENT_READ and peer.index in self.peers:
                    data = self._read(peer)
                    if data is None:
                        self.drop(peer)
                        continue
                    for kind, payload in peer.frames.feed(data):
                        peer.changed = True
                        if kind == "reads":
                            t, reads = payload
                            self.arrived.record(time.monotonic() - t)
                            started.append(t)
                            if peer.index:  # (its clients are streams of their own in the log too)
                                p = peer.index
                                reads = [(peer_stream(p, st), db, k, h) for st, db, k, h in reads]
                            if recorder is not None:
                                recorder.add(t + to_epoch, reads)
                                if recorder.waiting >= recorder.buffer_rows // 2:
                                    recorder.flush()  # (under heavy reads, before the buffer fills)
                            if peer.index:
                                reads = [(st, peer_db(p, db), k, h) for st, db, k, h in reads]
                            pending += expand(t, reads)
                            continue
                        if pending:
                            out += self._step(pending)
                            pending = []
                        if kind == "reset":
                            engine.reset()
                            self.arrived, self.answered = LatencyHistogram(), LatencyHistogram()
                            for other in list(self.peers.values()):  # (the experiment's, in every worker)
                                other.changed = True
                                self.send(other, frame(("reset", None)))
                        elif kind == "resize":
                            peer.sizes = payload
                            self._resize()
            if pending:
                out += self._step(pending)
            changed = engine.tick()
            now = time.monotonic()
            if recorder is not None and now - last_write >= RECORD_EVERY:
                changed |= bool(recorder.waiting)  # (its figures moved: the next report carries them)
                recorder.flush()  # (a file past its age is closed even when nothing waits)
                last_write = now
            if changed:
                for peer in self.peers.values():
                    peer.changed = True
            self._answer(out, now)
            if started:
                done = time.monotonic()
                for t in started:
                    self.answered.record(done - t)
            # Past its share of a core, the engine pauses, and the proxies shed their reads until
            # it ends (no batch is built for nothing); what they sent before they knew is shed
            # here, stale, without being observed. Not while recording: every read must still
            # come, to be recorded, so the engine never pauses then, and its share bounds only its
            # predicting (``_step`` sheds the rest; recording's CPU counts against the share).
            if self.cpu.bounded and recorder is None:
                pause = self.cpu.pause_after(time.monotonic(), time.process_time())
                if pause:
                    message = frame(("pause", time.monotonic() + pause))
                    for peer in list(self.peers.values()):
                        self.send(peer, message)
                    time.sleep(pause)

    def _step(self, records: list[Record]) -> list[Prefetch]:
        """The engine's step over a round's reads. Held to a share of a core, it spends nothing on
        reads it cannot predict from (stale ones are counted, not observed), and works a chunk at
        a time: once its share is spent, the rest of the round is shed."""
        engine, cpu = self.engine, self.cpu
        if not cpu.bounded:
            return engine.step(records, time.monotonic())
        out: list[Prefetch] = []
        for at in range(0, len(records), CHUNK):
            if cpu.over(time.monotonic(), time.process_time()):
                engine.shed(records[at:])
                break
            out += engine.step(records[at : at + CHUNK], time.monotonic(), observe_stale=False)
        return out

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.add(sock)

    def _read(self, peer: Peer) -> bytes | None:
        """What the peer sent (b"" when nothing now), None when it closed its end."""
        try:
            data = peer.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            return None
        if not data:
            return None
        return data + drain(peer.sock)

    def _answer(self, out: list[Prefetch], now: float) -> None:
        """Each peer's messages of this round, in one write: the rules (every peer's), its hints
        (before the prefetches: its table is current when they come), its prefetches, its report."""
        engine = self.engine
        rules = engine.take_rules()
        self.rules += rules
        hints: dict[int, list[Any]] = {}
        for db, key, named in engine.take_hints():
            index, own = peer_of_db(db)
            hints.setdefault(index, []).append((own, key, named))
        prefetches: dict[int, list[Any]] = {}
        for db, key, arm, t, stream in out:
            index, own = peer_of_db(db)
            prefetches.setdefault(index, []).append((own, key, arm, t, peer_of_stream(stream)[1]))
        for peer in list(self.peers.values()):
            message = b""
            if rules:
                message += frame(("rules", rules))
            if peer.index in hints:
                message += frame(("hints", hints[peer.index]))
            if peer.index in prefetches:
                message += frame(("prefetch", (time.monotonic(), prefetches[peer.index])))
            if peer.changed and now - peer.last_report >= REPORT_EVERY:
                message += frame(("report", self.report(peer.index)))
                peer.changed = False
                peer.last_report = now
            if message:
                self.send(peer, message)


def config_json(
    arms: Sequence[tuple[str, str]],
    shares: Sequence[float],
    seed: int,
    budget: float,
    max_age: float,
    priority: str,
    device: str,
    access_log: dict[str, Any] | None,
    drift_window: int,
    cpu_share: float = 1.0,
    hints: bool = True,
    rules: bool = True,
) -> str:
    """The engine process's ``--config`` (``prefetch.engine_process``)."""
    return json.dumps(
        {
            "arms": list(arms),
            "shares": list(shares),
            "seed": seed,
            "budget": budget,
            "max_age": max_age,
            "priority": priority,
            "device": device,
            "access_log": access_log,
            "drift_window": drift_window,
            "cpu_share": cpu_share,
            "hints": hints,
            "rules": rules,
        }
    )


def set_priority(priority: str) -> None:
    """``idle``: only CPU time nothing else wants (SCHED_IDLE): under load the proxy, Redis and
    their clients are served first and the engine falls behind and sheds, but its prefetches come
    late even under light load. ``low``: nice 19. ``normal``: as the proxy. ``realtime``: the
    lowest real-time priority (SCHED_RR 1): a batch is stepped as soon as it arrives, ahead of
    every ordinary process, which bounds prediction latency where the cores are busy; the engine's
    work is bounded by shedding, and the kernel keeps 5% of each second for ordinary processes
    whatever real-time ones do. It needs CAP_SYS_NICE (root, or a raised RLIMIT_RTPRIO): refused,
    the engine says so on stderr and runs at normal priority."""
    try:
        if priority == "idle":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        elif priority == "low":
            os.nice(19)
        elif priority == "realtime":
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    except (AttributeError, OSError) as exc:
        if priority == "realtime":
            print(
                f"prediction engine: realtime priority refused ({exc}): running at normal priority",
                file=sys.stderr,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefetch.engine_process")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="a connected socket: the one proxy served")
    where.add_argument("--listen-fd", type=int, help="a listening Unix socket: every worker connects")
    parser.add_argument("--config", required=True, help="JSON: arms, shares, seed, budget, max_age")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd) if args.fd is not None else None
    listener = socket.socket(fileno=args.listen_fd) if args.listen_fd is not None else None
    if listener is not None:
        # (SIGTERM from the supervisor: the recorder writes what waits and closes its file)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    config = json.loads(args.config)
    set_priority(config.get("priority", "low"))
    try:
        engine = Engine(
            [tuple(arm) for arm in config["arms"]],
            shares=config.get("shares"),
            seed=config.get("seed", 0),
            budget=config.get("budget", 1.0),
            max_age=config.get("max_age", 0.05),
            loader_defaults={"device": config.get("device", "auto")},
            drift_window=config.get("drift_window", 10_000),
            hints=config.get("hints", True),
            rules=config.get("rules", True),
        )
        cpu = CpuBudget(float(config.get("cpu_share", 1.0)))
        recorder = AccessRecorder(**config["access_log"]) if config.get("access_log") else None
    except (ConfigError, ValueError, OSError) as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if sock is not None:
            sock.sendall(frame(("error", line)))
        else:
            print(f"prediction engine: {line}", file=sys.stderr)
        return 2
    try:
        serve(sock, engine, recorder, listener, cpu)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
