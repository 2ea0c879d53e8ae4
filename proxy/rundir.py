"""The run directory (``run_dir`` setting): what a running proxy leaves for ``predis report``.

* ``history.jsonl``: one line a second, the dashboard's sample (``proxy.history``): per arm its GETs
  and hits so far, hit ratio, precision, prediction p99 and model; the A/B test's figures; the tier.
* ``latency.json``: the latency histograms (the forwarded commands', the tier's served reads', each
  arm's read-to-prefetch), as non-empty ``LatencyHistogram`` buckets, rewritten every ``every``
  samples and at shutdown, and the last ``PREDIS STATS`` snapshot beside them.

The files are small (a line of a few hundred bytes a second), written from the once-a-second look
on the event loop; an error writing them is logged once and stops the run directory, never the
proxy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import structlog

from common.histogram import LatencyHistogram

log = structlog.get_logger("predis.rundir")

HISTORY = "history.jsonl"
LATENCY = "latency.json"


def histogram_json(hist: LatencyHistogram) -> dict[str, Any]:
    """A histogram as its non-empty buckets: bucket i holds [2**(i/SUB), 2**((i+1)/SUB)) us."""
    return {
        "sub": hist.SUB,
        "buckets": {str(i): c for i, c in enumerate(hist.counts) if c},
        "total": hist.total,
        "sum_seconds": hist.sum,
    }


class RunDirectory:
    def __init__(self, path: str | os.PathLike[str], every: int = 10) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.every = every
        self.samples = 0
        self.failed = False
        # Open for the proxy's life, a line at a time; closed by close().
        self._history = open(self.path / HISTORY, "a", buffering=1)  # noqa: SIM115

    def add(self, sample: dict[str, Any], figures: Any) -> None:
        """One look's sample; every ``every`` samples the histograms too (``figures``:
        proxy.metrics.Figures)."""
        if self.failed:
            return
        try:
            self._history.write(json.dumps(sample, separators=(",", ":")) + "\n")
            self.samples += 1
            if self.samples % self.every == 0:
                self.write_latency(figures)
        except OSError as exc:
            self.failed = True
            log.error("run directory not written any more", path=str(self.path), error=str(exc))

    def write_latency(self, figures: Any) -> None:
        doc = {
            "histograms": {name: histogram_json(hist) for name, (_, hist) in figures.histograms.items()},
            "arms": {name: histogram_json(hist) for name, hist in figures.arm_latency.items()},
            "stats": figures.snapshot,
        }
        tmp = self.path / (LATENCY + ".tmp")
        tmp.write_text(json.dumps(doc, default=str))
        os.replace(tmp, self.path / LATENCY)  # (a reader never sees half a file)

    def close(self, figures: Any) -> None:
        if not self.failed:
            try:
                self.write_latency(figures)
            except OSError as exc:
                log.error("run directory: latency not written", path=str(self.path), error=str(exc))
        self._history.close()
