"""The GPU checks, as one prepared script for the GPU machine (run there on an H100 on 2026-11-27,
through bench/gpu_machine.sh; figures in bench/RESULTS.md): torch features equal to the numpy ones
on CUDA, batched incremental inference at batch 64, 1024 and 8192, training throughput, a real
``train()`` on a million reads within a time budget, and the CuPy value store's put, get and
gathers against dict lookups.

    python -m bench.gpu_check                          # on the GPU machine: $OUT/gpu_check.txt
    python -m bench.gpu_check --only store             # one section (or several, comma-separated)
    python -m bench.gpu_check --device cpu --quick     # the same steps, small, on the CPU (CI runs it)

Device time is scarce (15 minutes a task, start included), so the script is built not to waste it:
every line goes to the report as soon as it is measured (a run killed at its limit still returns
what it had), each section runs on its own (one failing prints its error and the next one runs),
and it needs only what the GPU image holds (torch, numpy, pyarrow, cupy: no redis-py, structlog,
zstandard or libcachesim, which that image lacks; ``tests/data/test_gpu_check.py`` runs the CPU
dry run with those blocked). On a lent machine, ``bash bench/gpu_machine.sh`` runs it with the
tier's GPU tests and benchmarks (which need the Redis binaries and wheels that script carries).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np


class Report:
    """Prints each line and appends it to ``$OUT/gpu_check.txt`` at once."""

    def __init__(self, out_dir: str | None, name: str = "gpu_check.txt") -> None:
        self.path = os.path.join(out_dir, name) if out_dir else None
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            open(os.path.join(out_dir, name), "w").close()
        self.failed: list[str] = []

    def say(self, text: str) -> None:
        print(text, flush=True)
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(text + "\n")

    def section(self, name: str, fn: Callable[[], None]) -> None:
        start = time.perf_counter()
        self.say(f"== {name}")
        try:
            fn()
        except Exception as exc:  # one section's failure must not cost the others' figures
            self.failed.append(name)
            self.say(f"FAILED {name}: {type(exc).__name__}: {exc}")
            for line in traceback.format_exc().strip().splitlines()[-6:]:
                self.say("  " + line)
        self.say(f"   ({name}: {time.perf_counter() - start:.1f} s)")


SECTIONS = ("environment", "features", "inference", "training", "store")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes: a dry run of every step")
    ap.add_argument("--train-seconds", type=float, default=240.0, help="budget of the real training run")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="report folder (default: $OUT)")
    ap.add_argument("--report", default="gpu_check.txt", help="report file name in the folder")
    ap.add_argument(
        "--only",
        help=f"comma-separated sections to run (default: all): {', '.join(SECTIONS)}",
    )
    args = ap.parse_args(argv)
    only = SECTIONS if args.only is None else args.only.split(",")
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"--only: no section {', '.join(unknown)} (sections: {', '.join(SECTIONS)})")
    device, quick = args.device, args.quick
    report = Report(args.out, args.report)
    say = report.say
    state: dict[str, Any] = {}

    import torch

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def environment() -> None:
        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-"
        say(
            f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.cuda.is_available()}, device {name}"
        )
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no GPU")

    def features() -> None:
        from accesslog.generators import generate
        from ml.features.offline import features as features_np
        from ml.features.offline import features_torch

        n = 8_000 if quick else 1_000_000
        log = generate("gaming", n, seed=1)
        state["log"] = log
        codes, _ = log.key_codes()
        ts = log.timestamps()
        t0 = time.perf_counter()
        reference = features_np(codes, ts)
        t1 = time.perf_counter()
        features_torch(codes, ts, device=device)  # warm-up (kernels, allocator)
        sync()
        t2 = time.perf_counter()
        on_device = features_torch(codes, ts, device=device)
        sync()
        t3 = time.perf_counter()
        diff = float(np.abs(reference - np.asarray(on_device)).max())
        say(
            f"features, {n:,} reads: numpy {t1 - t0:.2f} s, torch {device} {t3 - t2:.3f} s "
            f"(first call {t2 - t1:.2f} s), max abs difference {diff:.2e}"
        )
        if not diff <= 1e-4:
            raise AssertionError(f"torch features differ from numpy's by {diff}")

    def inference() -> None:
        batches = (64,) if quick else (64, 1024, 8192)
        vocabs = (1_000,) if quick else (10_000, 100_000)
        for batch in batches:
            for vocab in vocabs:
                cmd = [sys.executable, "-m", "bench.mlbench", "--device", device, "--batch", str(batch)]
                cmd += [
                    "--vocab",
                    str(vocab),
                    "--steps",
                    "15" if quick else "60",
                    "--train-steps",
                    "5" if quick else "10",
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                if out.returncode:
                    raise RuntimeError(
                        f"{' '.join(cmd[2:])}: {(out.stderr.strip().splitlines() or ['?'])[-1]}"
                    )
                for line in out.stdout.strip().splitlines():
                    say(line)

    def training() -> None:
        from ml.training.train import TrainConfig, train

        log = state.get("log")
        if log is None:
            from accesslog.generators import generate

            log = generate("gaming", 8_000 if quick else 1_000_000, seed=1)  # features was not run
        cfg = TrainConfig(
            epochs=1 if quick else 20,
            batch=32,
            lr=5e-3,
            device=device,
            max_seconds=60 if quick else args.train_seconds,
            max_keys=512 if quick else 8_192,
            progress=False,
            # (the learned ranker's replays run on the CPU workers, not the device; in a dry run
            # they would be most of its time)
            ranker_replays="never" if quick else "auto",
        )
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            metrics = train(log, os.path.join(tmp, "model"), cfg)
            whole = time.perf_counter() - start
        model = metrics["model"]
        epochs = metrics["history"]
        say(
            f"train() on {len(log):,} gaming reads, {device} ({metrics['precision']}), budget {cfg.max_seconds:.0f} s: "
            f"whole call {whole:.1f} s, loop {metrics['train_seconds']:.1f} s, {len(epochs)} epochs "
            f"({', '.join(str(e['seconds']) for e in epochs)} s cumulative), validation top-1 {model['top1']:.3f}, "
            f"recall@10 within 10 {model.get('recall@10_within_10', float('nan')):.3f}, ECE {model.get('calibration_ece', float('nan')):.3f}"
        )

    def store() -> None:
        from prefetch.store import DeviceStore, to_host

        if device == "cuda":
            from prefetch.store import load_cupy

            xp: Any = load_cupy()
        else:
            xp = np
        count = 1_000 if quick else 10_000
        values = [os.urandom(512) for _ in range(count)]
        store = DeviceStore(64 << 20 if quick else 256 << 20, xp=xp)
        handles = [store.put(v) for v in values]
        host = dict(enumerate(values))
        spare = handles[-200:]
        for handle in spare:
            store.free(handle)
        start = time.perf_counter()
        handles[-200:] = [store.put(v) for v in values[-200:]]
        if device == "cuda":
            xp.cuda.Stream.null.synchronize()
        say(
            f"DeviceStore put of a 512-byte value (a fill): {(time.perf_counter() - start) / 200 * 1e6:.1f} us"
        )
        rng = np.random.default_rng(0)
        for size in (1, 64, 1024) if quick else (1, 64, 1024, 8192):
            idx = rng.integers(0, count, size).tolist()
            picks = [handles[i] for i in idx]
            if size == 1:
                got = [store.get(picks[0])]
            else:
                flat, offsets = store.gather(picks)
                flat = bytes(to_host(flat))
                ends = to_host(offsets).tolist()
                got = [flat[a:b] for a, b in zip(ends, ends[1:], strict=False)]
            if got != [values[i] for i in idx]:
                raise AssertionError(f"the store returned other bytes than were put (size {size})")
            spans = []
            for _ in range(50):
                start = time.perf_counter()
                if size == 1:
                    store.get(picks[0])
                else:
                    store.gather(picks)
                    if device == "cuda":
                        xp.cuda.Stream.null.synchronize()
                spans.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(50):
                [host[k] for k in idx]
            dict_us = (time.perf_counter() - start) / 50 * 1e6
            what = "get" if size == 1 else f"gather of {size}"
            say(
                f"DeviceStore ({'cupy' if device == 'cuda' else 'numpy'}) {what}: {np.median(spans) * 1e6:.1f} us; "
                f"dict lookups of as many: {dict_us:.1f} us"
            )

    steps = {
        "environment": ("environment", environment),
        "features": ("features", features),
        "inference": ("inference and training steps (bench.mlbench)", inference),
        "training": ("train() on the gaming log", training),
        "store": ("hot-tier value store", store),
    }
    for name in SECTIONS:
        if name in only:
            report.section(*steps[name])
    say(f"failed sections: {', '.join(report.failed) or 'none'}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
