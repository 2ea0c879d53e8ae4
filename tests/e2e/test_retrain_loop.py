"""The retraining loop end to end, through a real proxy, engine process and Redis: a client reads
one pattern the model was trained on (its arm prefetches it: a high hit ratio); the pattern changes
(other keys, another template): the model cannot follow, the hit ratio falls and the drift alert
fires; the reads the proxy recorded train a candidate, the gate promotes it over the current model
on the newest reads, the proxy swaps it in live, and the hit ratio comes back; no read fails. A
deliberately worse candidate (untrained weights) is refused by the same gate."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.importorskip("torch")

from accesslog.log import AccessLog, make_table  # noqa: E402
from ml.registry import load_model, resolve, save_model  # noqa: E402
from ml.training.retrain import RetrainConfig, gate, recorded_log, retrain_once  # noqa: E402
from ml.training.train import TrainConfig, train  # noqa: E402
from tests.helpers import wait_for  # noqa: E402

A = ("user:{}:profile", "user:{}:orders")  # the second key of a pair takes the first one's number
B = ("acct:{}:login", "acct:{}:prefs")  # after the change: other templates, the same rule
QUICK = {
    "epochs": 6,
    "batch": 16,
    "length": 32,
    "lr": 1e-2,
    "max_keys": 1_024,
    "precision": "fp32",
    "progress": False,
    "ranker_replays": "never",  # (the loop is what is tested; the ranker as a fallback is in test_model)
}


def pairs(pattern: tuple[str, str], n: int, seed: int) -> list[str]:
    """``n`` reads: pairs of the pattern's two keys, each pair with a number never used before (the
    seeds' ranges do not overlap). No heuristic, and no memory of what followed a key, can name the
    second key before it is read; a model that learnt the pattern's templates can."""
    out: list[str] = []
    for number in range(seed * 1_000_000, seed * 1_000_000 + (n + 1) // 2):
        out += [pattern[0].format(number), pattern[1].format(number)]
    return out[:n]


def pairs_log(pattern: tuple[str, str], n: int, seed: int) -> AccessLog:
    import numpy as np

    names = pairs(pattern, n, seed)
    return AccessLog(
        make_table(np.arange(n) * 0.005, names, "GET", 16, "pairs", client=np.zeros(n, np.int64)), {}
    )


PAIR_WAIT = 10.0  # seconds: far beyond a prediction's latency on the slowest machine seen


def arm(client: redis.Redis) -> dict[str, Any]:
    return json.loads(client.execute_command("PREDIS", "AB", "JSON"))["arms"][0]  # type: ignore[no-any-return]


def read_phase(proxy: Any, client: redis.Redis, keys: list[str], predicted: bool) -> float:
    """Reads of ``keys`` (pairs), every value checked; the arm's hit ratio over them. ``predicted``:
    the model is expected to name each pair's second key, so the test waits for it to be in the
    tier before reading it (however slow the machine); otherwise nothing is waited for (a slower
    engine could only lower the hit ratio). A model names most pairs, not every one (a retrained
    model can miss a number's shape now and then): a pair whose key has not come after
    ``PAIR_WAIT`` seconds (a hang guard, far past any prediction's latency) is read anyway; the
    hit ratio the caller checks is what judges the model."""
    before = arm(client)
    entries = proxy.server.tier.entries
    for i, key in enumerate(keys):
        assert client.get(key) == f"v-{key}".encode()
        if predicted and i % 2 == 0 and i + 1 < len(keys):
            name = (0, keys[i + 1].encode())
            deadline = time.monotonic() + PAIR_WAIT
            while name not in entries and time.monotonic() < deadline:
                time.sleep(0.002)
    wait_for(lambda: arm(client)["gets"] >= before["gets"] + len(keys), timeout=20)
    after = arm(client)
    return (after["hits"] - before["hits"]) / (after["gets"] - before["gets"])


def test_drift_retrain_promote_swap_recover(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, tmp_path: Path
) -> None:
    import torch

    torch.set_num_threads(2)
    registry, logs = tmp_path / "registry", tmp_path / "logs"
    train(pairs_log(A, 6_000, seed=1), registry, TrainConfig(**QUICK), registry=True)  # v0001: pattern A
    phases = {"a": pairs(A, 1_200, seed=2), "b": pairs(B, 1_200, seed=3), "b2": pairs(B, 1_200, seed=4)}
    direct.mset({key: f"v-{key}" for keys in phases.values() for key in keys})
    proxy = make_proxy(
        redis_server.url,
        prefetch=f"ml:{registry}::fallback=none:min_confidence=0",  # (the model alone prefetches)
        prefetch_device="cpu",
        prefetch_engine_priority="normal",
        prefetch_max_age=60.0,
        hot_tier_bytes=200 * 700,
        access_log_dir=str(logs),
        access_log_rotate_rows=500,
        drift_window=400,
    )
    # (a swap, not a restart after the loading thread kept a starved engine silent past 2 s)
    proxy.server.prediction.stall_after = 60.0
    wait_for(lambda: proxy.server.tier.active and proxy.server.prediction.ready, timeout=120)
    client = proxy.client()
    alerts = proxy.server.alerts

    trained = read_phase(proxy, client, phases["a"], predicted=True)
    assert trained > 0.3, trained  # (at most one read in two: the first of a pair is new)
    changed = read_phase(proxy, client, phases["b"], predicted=False)
    assert changed < 0.1, changed  # (the model has never seen these templates)
    wait_for(lambda: alerts.fired["drift_max"] >= 1, timeout=20)

    wait_for(lambda: len(recorded_log(logs)) >= 2_000, timeout=20)
    decision = retrain_once(
        logs,
        registry,
        RetrainConfig(
            min_reads=1_000,
            holdout=0.2,
            cache="200",  # (the live tier holds about 200 entries: the gate judges the model at that size)
            train=TrainConfig(max_seconds=120, **{**QUICK, "epochs": 10, "patience": 10}),
        ),
    )
    assert decision["promote"] is True and decision["version"] == "v0002", {
        k: v for k, v in decision.items() if k != "config"
    }
    assert decision["candidate_hit_ratio"] > decision["current_hit_ratio"] + 0.1
    wait_for(lambda: arm(client)["predictor"]["model_version"].startswith("v0002@"), timeout=60)
    # Which model serves, and the gate's figures that promoted it (PREDIS MODEL shows them too).
    (serving,) = json.loads(client.execute_command("PREDIS", "MODEL"))
    assert serving["gate_candidate_hit_ratio"] == decision["candidate_hit_ratio"]
    assert serving["gate_current_hit_ratio"] == decision["current_hit_ratio"] and serving["swaps"] == 1

    recovered = read_phase(proxy, client, phases["b2"], predicted=True)
    assert recovered > 0.3 and recovered > changed + 0.25, (changed, recovered)
    assert proxy.server.stats.snapshot()["upstream_errors"] == 0

    # The same gate refuses a deliberately worse candidate: the new model's shape, untrained.
    model, vocab, _ = load_model(registry / "v0002")
    torch.manual_seed(3)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    save_model(model, vocab, tmp_path / "worse")
    held_out = pairs_log(B, 1_000, seed=5)
    verdict = gate(tmp_path / "worse", resolve(registry), held_out, "10", margin=0.005)
    assert verdict["promote"] is False and resolve(registry).name == "v0002"
