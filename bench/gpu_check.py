"""The GPU checks, as one prepared script for the GPU machine (not run on this project's CPU-only
machines so far): torch features equal to the numpy ones on CUDA, batched incremental inference at
batch 1024 and 8192, training throughput, and the CuPy hot-tier gather. Writes its report to
$OUT/gpu_check.txt (or stdout).

    python -m bench.gpu_check
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np


def main() -> None:
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    import torch

    say(
        f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}"
    )
    from ml.data.generators import generate
    from ml.features.offline import features, features_torch

    log = generate("gaming", 1_000_000, seed=1)
    codes, _ = log.key_codes()
    ts = log.timestamps()
    t0 = time.perf_counter()
    cpu = features(codes, ts)
    t1 = time.perf_counter()
    gpu = features_torch(codes, ts, device="cuda")
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    say(
        f"features, 1M reads: numpy {t1 - t0:.2f} s, torch cuda {t2 - t1:.2f} s, max abs difference {np.abs(cpu - gpu).max():.2e}"
    )
    for batch in (64, 1024, 8192):
        for vocab in (10_000, 100_000):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.mlbench",
                    "--device",
                    "cuda",
                    "--batch",
                    str(batch),
                    "--vocab",
                    str(vocab),
                    "--steps",
                    "60",
                    "--train-steps",
                    "10",
                ],
                capture_output=True,
                text=True,
            )
            say(out.stdout.strip() or out.stderr.strip().splitlines()[-1])
    # The GPU hot tier's value store: one get, and gathers of 64 and 1024 values, against a dict.
    from prefetch.store import DeviceStore, load_cupy

    cp = load_cupy()
    store = DeviceStore(256 << 20, xp=cp)
    handles = [store.put(os.urandom(512)) for _ in range(10_000)]
    host = {i: os.urandom(512) for i in range(10_000)}
    rng = np.random.default_rng(0)
    for size in (1, 64, 1024):
        picks = [handles[i] for i in rng.integers(0, 10_000, size)]
        spans = []
        for _ in range(50):
            start = time.perf_counter()
            if size == 1:
                store.get(picks[0])
            else:
                store.gather(picks)
                cp.cuda.Stream.null.synchronize()
            spans.append(time.perf_counter() - start)
        keys = rng.integers(0, 10_000, size).tolist()
        start = time.perf_counter()
        for _ in range(50):
            [host[k] for k in keys]
        dict_us = (time.perf_counter() - start) / 50 * 1e6
        say(
            f"DeviceStore {'get' if size == 1 else f'gather of {size}'}: {np.median(spans) * 1e6:.0f} us; dict lookups of as many: {dict_us:.1f} us"
        )
    target = os.environ.get("OUT")
    if target:
        with open(os.path.join(target, "gpu_check.txt"), "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
