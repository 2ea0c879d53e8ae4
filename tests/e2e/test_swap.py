"""A promoted model reaches the running proxy without a restart: a model arm that names a registry
follows its current version; the new model is loaded and warmed beside the old one and swapped in
between two batches while a client keeps reading, with no failed or wrong read; PREDIS MODEL shows
which model serves, PREDIS MODEL ROLLBACK goes back a version and the engine follows."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import redis

from ml.registry import set_current
from tests.helpers import CYCLE, wait_for

UNHURRIED = {"prefetch_engine_priority": "normal", "prefetch_max_age": 60.0}


def model(client: redis.Redis) -> dict[str, Any]:
    (arm,) = json.loads(client.execute_command("PREDIS", "MODEL"))
    return arm  # type: ignore[no-any-return]


def test_a_promoted_model_is_swapped_in_live_and_rolled_back(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, planted_model: Any, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    for version in ("v0001", "v0002"):
        shutil.copytree(planted_model, registry / version)
    set_current(registry, registry / "v0001")
    direct.mset({key: f"v-{key}" for key in CYCLE})
    proxy = make_proxy(
        redis_server.url, prefetch=f"ml:{registry}::min_confidence=0.5", prefetch_device="cpu", **UNHURRIED
    )
    prediction = proxy.server.prediction
    # (on a starved machine the loading thread can keep the engine silent past the 2 s stall bound,
    # and a restarted engine loads v0002 without a swap: the stall path is test_prefetch's)
    prediction.stall_after = 60.0
    wait_for(lambda: proxy.server.tier.active and prediction.ready, timeout=120)  # (torch's import)
    admin = proxy.client()
    wait_for(lambda: model(admin).get("model_version", "").startswith("v0001@"), timeout=10)

    stop = threading.Event()
    reads, wrong, errors = [0], [0], [0]

    def reader() -> None:
        client = proxy.client()
        while not stop.is_set():
            for key in CYCLE:
                try:
                    if client.get(key) != f"v-{key}".encode():
                        wrong[0] += 1
                except redis.RedisError:
                    errors[0] += 1
                reads[0] += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        wait_for(lambda: reads[0] > 200, timeout=30)
        set_current(registry, registry / "v0002")  # (what predis retrain does when it promotes)
        wait_for(lambda: model(admin).get("model_version", "").startswith("v0002@"), timeout=60)
        assert model(admin)["swaps"] == 1 and model(admin)["model"] == "loaded"
        stepped = model(admin)["model_reads"]
        changes = json.loads(admin.execute_command("PREDIS", "MODEL", "ROLLBACK"))
        assert changes == [{"registry": str(registry), "from": "v0002", "to": "v0001"}]
        wait_for(lambda: model(admin).get("model_version", "").startswith("v0001@"), timeout=60)
        at = reads[0]
        wait_for(lambda: reads[0] > at + 200, timeout=30)
    finally:
        stop.set()
        thread.join(10)
    arm = model(admin)
    assert arm["swaps"] == 2 and arm["swap_errors"] == 0 and arm["fallbacks"]["model_error"] == 0
    assert wrong[0] == 0 and errors[0] == 0 and reads[0] > 400
    # The swapped-in models go on stepping over the reads.
    assert arm["model_reads"] > stepped + 200
    # Nothing before v0001 to roll back to: a clear error.
    try:
        admin.execute_command("PREDIS", "MODEL", "ROLLBACK")
        raise AssertionError("rollback past the first version succeeded")
    except redis.ResponseError as exc:
        assert "no version before the current one" in str(exc)
