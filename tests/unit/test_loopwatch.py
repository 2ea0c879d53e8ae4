"""The event loop's lag and the garbage collector's pauses (proxy.loopwatch), on a loop of the
test's own."""

from __future__ import annotations

import asyncio
import gc
import time

from proxy.loopwatch import LAG_EVERY, LoopWatch
from proxy.stats import Stats


def test_a_blocked_loop_and_a_collection_are_seen() -> None:
    stats = Stats()

    async def run() -> None:
        watch = LoopWatch(stats)
        watch.start(asyncio.get_running_loop())
        try:
            await asyncio.sleep(5 * LAG_EVERY)  # (turns that come on time)
            time.sleep(0.2)  # the loop held for 200 ms, as a long burst of work would
            await asyncio.sleep(3 * LAG_EVERY)
            gc.collect()
        finally:
            watch.close()

    asyncio.run(run())
    figures = stats.snapshot()
    assert stats.loop_lag.total >= 5
    assert figures["event_loop_lag_p999_us"] >= 150_000  # (the one late turn: the highest sample)
    assert figures["gc_pauses"] >= 1 and figures["gc_pause_p50_us"] > 0
    # Closed: no more turns, no more collections seen.
    seen, pauses = stats.loop_lag.total, stats.gc_pause.total
    gc.collect()
    assert (stats.loop_lag.total, stats.gc_pause.total) == (seen, pauses)
