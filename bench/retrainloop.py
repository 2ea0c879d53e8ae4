"""How long the model takes to recover after the traffic changes: drift, retraining, promotion and
hot swap, timed on a running proxy (issue 22's goal).

    python -m bench.retrainloop [--reads 4000] [--pace 0.004] [--epochs 12] [--fine-tune]

A `predis serve` process (its own process, as in production) runs a model arm that names a
registry (`ml:REG::fallback=none:min_confidence=0`: the model alone prefetches), records reads and
measures drift. A client reads pairs ``user:N:profile`` then ``user:N:orders`` (pattern A, each N
new), paced, for ``--reads`` reads: the model, trained on A beforehand, names each second key. Then
the pattern changes to ``acct:N:login`` then ``acct:N:prefs`` (B, templates the model never saw)
and the client goes on reading B while this script, as ``predis retrain --watch`` would on the
drift alert, runs one retraining round on what the proxy recorded (the gate decides): a model
trained from scratch, or with ``--fine-tune`` the current model fine-tuned. The client's
hit ratio is sampled every second throughout. At the end a model trained from scratch on B alone
(as many reads) is swapped in and read for the same count: the reference the recovery is judged
against (within 2 points).

Prints the timeline (seconds from the change: the drift alert, the round's start and end, the swap,
the first 5-second window within 2 points of the reference) and the hit ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from accesslog.log import AccessLog, make_table
from bench.loadtest import ProxyProcess
from proxy.embedded import EmbeddedRedis

A = ("user:{}:profile", "user:{}:orders")
B = ("acct:{}:login", "acct:{}:prefs")
# The tier holds about this many entries; the gate replays at that size, as the proxy will run the model.
TIER_ENTRIES = 200


def pairs(pattern: tuple[str, str], n: int, first: int) -> list[str]:
    out: list[str] = []
    for number in range(first, first + (n + 1) // 2):
        out += [pattern[0].format(number), pattern[1].format(number)]
    return out[:n]


def log_of(keys: list[str]) -> AccessLog:
    n = len(keys)
    return AccessLog(
        make_table(np.arange(n) * 0.004, keys, "GET", 16, "pairs", client=np.zeros(n, np.int64)), {}
    )


class Reader(threading.Thread):
    """Reads its queue of keys, paced, and samples the arm's GETs and hits every second."""

    def __init__(self, port: int, pace: float) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis(port=port, socket_timeout=20)
        self.admin = redis.Redis(port=port, socket_timeout=20)
        self.pace = pace
        self.keys: list[str] = []
        self.at = 0
        self.lock = threading.Lock()
        self.samples: list[tuple[float, int, int]] = []  # (time, gets, hits)
        self.errors = 0
        self.latency: list[tuple[float, float]] = []  # (when, seconds) per read
        self.stop = threading.Event()

    def feed(self, keys: list[str]) -> None:
        with self.lock:
            self.keys += keys

    def arm(self) -> dict[str, Any]:
        return json.loads(self.admin.execute_command("PREDIS", "AB", "JSON"))["arms"][0]  # type: ignore[no-any-return]

    def run(self) -> None:
        last = 0.0
        while not self.stop.is_set():
            with self.lock:
                key = self.keys[self.at] if self.at < len(self.keys) else None
            if key is None:
                time.sleep(0.01)
            else:
                try:
                    started = time.monotonic()
                    if self.client.get(key) != f"v-{key}".encode():
                        self.errors += 1
                    self.latency.append((started, time.monotonic() - started))
                except redis.RedisError:
                    self.errors += 1
                self.at += 1
                time.sleep(self.pace)
            now = time.monotonic()
            if now - last >= 1.0:
                a = self.arm()
                self.samples.append((now, a["gets"], a["hits"]))
                last = now

    def drained(self) -> bool:
        with self.lock:
            return self.at >= len(self.keys)


def window_ratio(samples: list[tuple[float, int, int]], start: float, end: float) -> float | None:
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2 or inside[-1][1] == inside[0][1]:
        return None
    return (inside[-1][2] - inside[0][2]) / (inside[-1][1] - inside[0][1])


def wait(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrainloop", description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=4_000, help="reads per phase")
    parser.add_argument("--pace", type=float, default=0.004, help="seconds between a client's reads")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument(
        "--new-reads", type=int, default=2_000, help="reads of the new pattern before the round"
    )
    parser.add_argument(
        "--recent", type=int, default=3_000, help="the round trains on the newest this many (0: all)"
    )
    parser.add_argument(
        "--fine-tune",
        action="store_true",
        help="the round fine-tunes the current model (predis retrain --fine-tune) instead of training from scratch",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds tried (each after --new-reads more reads) until one promotes",
    )
    parser.add_argument("--keep", help="copy the registry and the recorded logs here at the end")
    args = parser.parse_args(argv)
    import torch

    from ml.training.retrain import RetrainConfig, retrain_once
    from ml.training.train import TrainConfig, train

    torch.set_num_threads(1)  # (the proxy, Redis and its engine share the other core)
    quick = {
        "epochs": args.epochs,
        "patience": 12,  # (its validation loss rises for a few epochs before it learns the new templates)
        "batch": 16,
        "length": 32,
        "lr": 1e-2,
        "max_keys": 1_024,
        "precision": "fp32",
    }
    tmp = Path(tempfile.mkdtemp(prefix="predis-retrainloop-"))
    registry, logs = tmp / "registry", tmp / "logs"
    n = args.reads
    train(log_of(pairs(A, n, 0)), registry, TrainConfig(progress=False, **quick), registry=True)
    phases = {"a": pairs(A, n, 10**6), "b": pairs(B, 3 * n, 2 * 10**6), "ref": pairs(B, n, 3 * 10**6)}
    os.environ["PREDIS_DRIFT_WINDOW"] = "500"
    os.environ["PREDIS_ACCESS_LOG_ROTATE_ROWS"] = "500"  # (retraining reads closed files: close them often)
    with EmbeddedRedis() as upstream:
        up = redis.Redis(port=upstream.port)
        for keys in phases.values():
            up.mset({key: f"v-{key}" for key in keys})
        proxy = ProxyProcess(
            upstream.url,
            [
                "--prefetch",
                f"ml:{registry}::fallback=none:min_confidence=0",
                "--device",
                "cpu",
                "--prefetch-engine-priority",
                "normal",
                "--hot-tier-bytes",
                str(TIER_ENTRIES * 700),
                "--access-log-dir",
                str(logs),
            ],
        )
        reader = Reader(proxy.port, args.pace)
        try:
            wait(lambda: proxy.stats().get("prefetch_engine_up") == 1, 180)
            reader.start()
            reader.feed(phases["a"])
            wait(reader.drained, 600)
            t_change = time.monotonic()
            reader.feed(phases["b"])
            wait(lambda: proxy.stats().get("alerts_fired_drift_max", 0) >= 1, 120)
            t_alert = time.monotonic()
            # A round needs reads of the new pattern to learn from and to judge on: as predis
            # retrain --watch --every-reads would, it waits for --new-reads of them, recorded.
            wait(lambda: proxy.stats().get("prefetch_access_log_recorded", 0) >= n + args.new_reads, 600)
            t_data = time.monotonic()
            os.nice(10)  # (as predis retrain --watch runs: the proxy first)
            rounds = []
            for attempt in range(args.rounds):
                if attempt:  # (as --watch would: another round once as many new reads again came)
                    more = n + args.new_reads * (attempt + 1)
                    wait(lambda more=more: proxy.stats().get("prefetch_access_log_recorded", 0) >= more, 600)
                decision = retrain_once(
                    logs,
                    registry,
                    RetrainConfig(
                        min_reads=1_000,
                        holdout=0.2,
                        cache=str(TIER_ENTRIES),
                        recent=args.recent,
                        fine_tune=args.fine_tune,
                        train=TrainConfig(progress=False, max_seconds=300, **quick),
                    ),
                )
                rounds.append(time.monotonic())
                print(
                    json.dumps({k: v for k, v in decision.items() if k != "config"}, sort_keys=True),
                    flush=True,
                )
                if decision.get("promote"):
                    break
            t_promoted = time.monotonic()
            version = str(decision.get("version", ""))
            if not decision.get("promote"):
                raise SystemExit(f"retrainloop: the gate promoted no candidate in {args.rounds} rounds")
            wait(lambda: reader.arm()["predictor"]["model_version"].startswith(version + "@"), 120)
            t_swapped = time.monotonic()
            wait(reader.drained, 900)
            t_end_b = time.monotonic()
            after_b = reader.arm()
            # The reference: a model trained from scratch on B alone, swapped in, read as long.
            train(
                log_of(pairs(B, n, 4 * 10**6)), registry, TrainConfig(progress=False, **quick), registry=True
            )
            scratch = sorted(p.name for p in registry.iterdir() if p.name.startswith("v"))[-1]
            wait(lambda: reader.arm()["predictor"]["model_version"].startswith(scratch + "@"), 120)
            t_ref = time.monotonic()
            reader.feed(phases["ref"])
            wait(reader.drained, 600)
            t_end = time.monotonic()
        finally:
            reader.stop.set()
            proxy.close()
    samples = reader.samples
    hit_a = window_ratio(samples, t_change - 10, t_change)
    hit_b_old = window_ratio(samples, t_change, t_promoted)
    hit_b_new = window_ratio(samples, t_swapped, t_end_b)
    hit_ref = window_ratio(samples, t_ref, t_end)
    recovered = None
    if hit_ref is not None:
        for s in samples:
            if s[0] >= t_swapped:
                r = window_ratio(samples, s[0], s[0] + 5)
                if r is not None and r >= hit_ref - 0.02:
                    recovered = s[0] - t_change
                    break
    print(
        f"hit ratio: pattern A {hit_a:.3f}; after the change, old model {hit_b_old:.3f}; new model {hit_b_new:.3f}; "
        f"a model trained from scratch on B {hit_ref:.3f}"
    )
    print(
        "the arm after B: "
        + json.dumps(
            {k: after_b.get(k) for k in ("gets", "hits", "prefetches", "shed", "late", "prefetch_fills")}
        )
        + " "
        + json.dumps(
            {k: after_b["predictor"].get(k) for k in ("model_version", "swaps", "model_reads", "live_recall")}
        )
    )

    def p99(start: float, end: float) -> str:
        got = sorted(d for t, d in reader.latency if start <= t < end)
        return f"{1e3 * got[int(0.99 * (len(got) - 1))]:.2f} ms ({len(got)} reads)" if got else "-"

    print(
        f"GET latency p99: the 10 s before the change {p99(t_change - 10, t_change)}; from the end of the round "
        f"to 2 s after the swap (loading, warming, swapping) {p99(t_promoted, t_swapped + 2)}; the 10 s after "
        f"that {p99(t_swapped + 2, t_swapped + 12)}"
    )
    back = f"{recovered:.1f}" if recovered is not None else "never"
    print(
        f"seconds from the change: drift alert {t_alert - t_change:.1f}, {args.new_reads} reads of B recorded "
        f"{t_data - t_change:.1f}, retraining rounds {t_data - t_change:.1f} -> "
        f"{', '.join(f'{r - t_change:.1f}' for r in rounds)} "
        f"({decision.get('train_seconds')} s training), "
        f"swapped in {t_swapped - t_change:.1f}, within 2 points of the reference from {back}"
    )
    rates = [s[1] for s in samples]
    print(
        f"reads {rates[-1] if rates else 0}, failed {reader.errors}; median sample gap "
        f"{statistics.median(np.diff([s[0] for s in samples])):.2f} s"
    )
    if args.keep:
        shutil.copytree(tmp, args.keep, dirs_exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
