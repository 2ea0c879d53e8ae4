"""How long the event loop keeps everything waiting: a timer due every ``LAG_EVERY`` seconds, and
how late the loop runs it (a client's burst, a sweep, a garbage collection: whatever ran between
two turns), and the garbage collector's pauses (``gc.callbacks``). Every request and every
prediction waits for these beyond its own work; ``Stats`` reports their percentiles."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from proxy.stats import Stats

LAG_EVERY = 0.01  # (a hundred timers a second: a few microseconds each)


class LoopWatch:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.loop: asyncio.AbstractEventLoop | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.due = 0.0
        self.gc_started = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due = loop.time() + LAG_EVERY
        self.handle = loop.call_at(self.due, self._tick)
        gc.callbacks.append(self._on_gc)

    def _tick(self) -> None:
        loop = self.loop
        assert loop is not None
        now = loop.time()
        self.stats.loop_lag.record(max(0.0, now - self.due))
        self.due = now + LAG_EVERY
        self.handle = loop.call_at(self.due, self._tick)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.gc_started = time.perf_counter()
        elif self.gc_started:
            self.stats.gc_pause.record(time.perf_counter() - self.gc_started)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
