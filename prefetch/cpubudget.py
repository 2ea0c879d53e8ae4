"""The prediction engine's share of a core (``prefetch_engine_cpu``), kept by pausing it.

On a host whose cores the proxy, Redis and their clients already fill, any other busy process costs
them throughput, whatever its priority: it runs in the gaps while they wait on each other, and
each of them then waits for the core at its next wake-up (bench/RESULTS.md, "Why: any process at
nice 19 costs as much on these two cores"). A share below 1 bounds what the engine takes: after
each round of batches it is told how long to pause, and it tells its proxies when the pause ends.
They shed the reads that come meanwhile without sending them, and the reads sent before they knew
are counted and shed, unobserved, when the engine reaches them: as when the engine falls behind
for any other reason, nothing on the request path waits for it.

The engine runs ahead of its share by at most ``burst`` CPU seconds, then pauses until it is back
within half of that: it works and rests in stretches of a few tens of milliseconds, not a pause
after every batch, so the processes it shares the cores with are woken into a busy core in a few
stretches, not at every batch.

An engine that records reads for retraining (``access_log_dir``) never pauses: every read must
still reach it to be recorded; its share then bounds only its predicting, and what recording
costs counts against it.

Within a round, the engine works through its reads a chunk at a time and sheds the rest once
``over`` says its share is spent, so no round runs far past it (a backlog of a megabyte of reads
would otherwise take seconds, and the proxy would take the engine for stalled).

Sans-I/O: ``over`` and ``pause_after`` take the clock readings and say what to do; the engine's
process reads its clocks and sleeps.
"""

from __future__ import annotations

BURST = 0.02  # CPU seconds the engine may run past its share before it pauses
MAX_PAUSE = 0.5  # at most this long at a time (the proxy's stall check waits 2 s for an answer)


class CpuBudget:
    """``share``: the part of one core the engine may use on average, in (0, 1]; 1 is no bound
    (one core is all a single-threaded engine takes)."""

    def __init__(self, share: float, burst: float = BURST, max_pause: float = MAX_PAUSE) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"the engine's CPU share must be in (0, 1], got {share}")
        self.share = share
        self.burst = burst
        self.max_pause = max_pause
        self.credit = burst  # CPU seconds the engine may still use ahead of its share
        self.wall: float | None = None
        self.cpu = 0.0
        self.paused = 0.0  # seconds paused in all (reported)

    @property
    def bounded(self) -> bool:
        return self.share < 1.0

    def over(self, wall: float, cpu: float) -> bool:
        """Whether the engine has spent its share, given the wall clock and the process's CPU
        time (seconds): what it has not yet worked on this round is shed."""
        if not self.bounded:
            return False
        if self.wall is None:
            self.wall, self.cpu = wall, cpu
            return False
        earned = self.share * (wall - self.wall)
        self.credit = min(self.burst, self.credit + earned - (cpu - self.cpu))
        self.wall, self.cpu = wall, cpu
        return self.credit < 0.0

    def pause_after(self, wall: float, cpu: float) -> float:
        """The pause to take now, at the end of a round (the same readings as ``over``)."""
        if not self.over(wall, cpu):
            return 0.0
        pause = min(self.max_pause, (self.burst / 2 - self.credit) / self.share)
        self.paused += pause
        return pause
