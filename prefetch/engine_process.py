"""The prediction engine's process: ``python -m prefetch.engine_process --fd N --config JSON``.

Started by the proxy (``proxy.prediction``) with one end of a socket pair as ``--fd``. Messages
both ways are frames: a 4-byte big-endian length, then a pickled tuple. In: ``("reads",
(batch time, [(stream, db, keys, hit), ...]))``, ``("reset", None)`` (the experiment's figures start again), ``("resize", ([entries per arm], [entries each arm's part holds when full]))`` (the
live tier's, which the engine's shadows of it follow). Out: ``("ready", report)`` once the arms' predictors are built, ``("error", line)``
if they cannot be (then it exits), ``("hints", [(db, key, (keys named after it...)), ...])`` when
what the arms name after a key with some confidence changed (empty: nothing now), ``("rules",
[(arm, template, template named after it with the same numbers), ...])`` when a shape-aware arm
(the model) has taught one, ``("prefetch", [(db, key, arm, read time, read stream), ...])``
after each batch that asks for any, ``("report", report)`` at most every ``REPORT_EVERY`` seconds. It exits when the
proxy closes its end. Only the proxy writes to the socket's other end, so pickle carries nothing
that another party made.

With ``access_log`` in the config (``accesslog.recorder.AccessRecorder``'s arguments), every read
that comes is also recorded, here and not on the proxy's event loop, and the report carries the
recorder's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import struct
import sys
import time
from typing import Any

from accesslog.recorder import AccessRecorder
from common.errors import ConfigError
from prefetch.engine import Engine, Record

REPORT_EVERY = 0.2
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


def serve(sock: socket.socket, engine: Engine, recorder: AccessRecorder | None = None) -> None:
    """Answer batches until the proxy closes the socket; with a recorder, record every read that
    comes (before any is shed from prediction) and write them every ``RECORD_EVERY`` seconds."""
    try:
        _serve(sock, engine, recorder)
    finally:
        if recorder is not None:
            recorder.close()


def _report(engine: Engine, recorder: AccessRecorder | None) -> dict[str, Any]:
    report = engine.report()
    if recorder is not None:
        report["access_log"] = recorder.figures()
    return report


def _serve(sock: socket.socket, engine: Engine, recorder: AccessRecorder | None) -> None:
    sock.sendall(frame(("ready", _report(engine, recorder))))
    # The proxy's batch times are its monotonic clock (the same clock here); the log's are epoch.
    to_epoch = time.time() - time.monotonic()
    last_write = time.monotonic()
    sock.settimeout(REPORT_EVERY)  # (an idle engine still reports what changed)
    frames = Frames()
    last_report = time.monotonic()
    changed = False
    while True:
        out: list[Any] = []
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            data = None
        if data == b"":
            return
        if data:
            data += drain(sock)
        # The batches that arrived while the last step ran are stepped together: a model's step
        # costs about as much for one read as for dozens, so an engine that fell behind catches
        # up in one larger step instead of many small ones.
        pending: list[Record] = []
        for kind, payload in frames.feed(data or b""):
            changed = True
            if kind == "reads":
                pending += expand(*payload)
                if recorder is not None:
                    recorder.add(payload[0] + to_epoch, payload[1])
                    if len(recorder.keys) >= recorder.buffer_rows // 2:
                        recorder.flush()  # (under heavy reads, before the buffer fills)
                continue
            if pending:
                out += engine.step(pending, time.monotonic())
                pending = []
            if kind == "reset":
                engine.reset()
            elif kind == "resize":
                engine.resize(*payload)
        if pending:
            out += engine.step(pending, time.monotonic())
        if engine.tick():
            changed = True
        now = time.monotonic()
        if recorder is not None and now - last_write >= RECORD_EVERY:
            if recorder.keys:
                recorder.flush()
                changed = True  # (its figures moved: the next report carries them)
            else:
                recorder.flush()  # (a file past its age is closed even when nothing waits)
            last_write = now
        message = b""
        rules = engine.take_rules()
        if rules:
            message += frame(("rules", rules))
        hints = engine.take_hints()
        if hints:  # (before the prefetches: the proxy's table is current when they come)
            message += frame(("hints", hints))
        if out:
            message += frame(("prefetch", out))
        if changed and now - last_report >= REPORT_EVERY:
            message += frame(("report", _report(engine, recorder)))
            last_report = now
            changed = False
        if message:
            sock.settimeout(None)
            sock.sendall(message)
            sock.settimeout(REPORT_EVERY)


def set_priority(priority: str) -> None:
    """``idle``: only CPU time nothing else wants (SCHED_IDLE): under load the proxy, Redis and
    their clients are served first and the engine falls behind and sheds, but its prefetches come
    late even under light load. ``low``: nice 19. ``normal``: as the proxy."""
    try:
        if priority == "idle":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        elif priority == "low":
            os.nice(19)
    except (AttributeError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefetch.engine_process")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--config", required=True, help="JSON: arms, shares, seed, budget, max_age")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
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
        )
        recorder = AccessRecorder(**config["access_log"]) if config.get("access_log") else None
    except (ConfigError, ValueError, OSError) as exc:
        sock.sendall(frame(("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)))
        return 2
    try:
        serve(sock, engine, recorder)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
