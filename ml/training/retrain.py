"""Retraining from recorded reads, behind a promotion gate (issue 22).

``retrain_once`` takes the closed access-log files a recording proxy wrote (``accesslog.recorder``),
keeps the newest ``holdout`` share of the reads aside, trains a candidate on the rest within a time
budget (from scratch, or with ``fine_tune`` starting from the current model), and replays the candidate and the registry's current model on the held-out reads in the
simulator (each as its ML arm: gate, fallback and floor as training chose them), at one cache size.
The candidate becomes the registry's next version, and current, only if its hit ratio beats the
current model's by ``margin`` (or there is no current model). Every decision, promoted or not, is
one JSON line in the registry's ``decisions.jsonl``, and a promoted version's manifest carries its
own. With fewer than ``min_reads`` recorded reads it says so and keeps the current model.

``watch`` runs it again whenever enough new reads were recorded (``every_reads``) or the current
model is older than ``max_age`` seconds, at a low CPU priority, until stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from accesslog.log import AccessLog
from accesslog.recorder import closed_files, read_recorded
from ml.training.train import TrainConfig

DECISIONS = "decisions.jsonl"


@dataclass
class RetrainConfig:
    holdout: float = 0.2  # the newest share of the reads: the gate's replay, never trained on
    cache: str = "5%"  # the cache size the gate replays at: the live tier's, in entries (or a share)
    margin: float = 0.005  # the candidate must beat the current model's hit ratio by this much
    min_reads: int = 20_000  # fewer recorded reads: no retraining
    recent: int = 0  # train and judge on the newest this many recorded reads only (0: all of them)
    # Fine-tune the current model (its weights, its vocabulary grown by the new keys) rather than
    # train a candidate from scratch; from scratch when there is no current model.
    fine_tune: bool = False
    # The gate replays the held-out reads after this many reads before them (not scored), as the
    # live arm warms a new model's client states on its latest 4,096 reads: a model whose state
    # goes wrong over a long stream is judged as it will serve, not from a fresh start.
    warm_reads: int = 4_096
    # How the candidate is trained: predis train's settings (epochs, batch, budget...).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))


def recorded_log(directory: str | os.PathLike[str]) -> AccessLog:
    table = read_recorded(directory)
    return AccessLog(table, {"source": f"recorded:{Path(directory).name}"})


def gate(
    candidate: str | os.PathLike[str],
    current: str | os.PathLike[str] | None,
    held_out: AccessLog,
    cache: str,
    margin: float,
    warm: AccessLog | None = None,
) -> dict[str, Any]:
    """Replay the candidate and the current model (if any) on ``held_out``, after ``warm`` (reads
    just before it: replayed, not scored, as a live arm warms a swapped-in model's client states on
    its latest reads before it serves); the verdict and its figures."""
    import pyarrow as pa

    from prefetch.sim import simulate

    arms = [f"ml:{candidate}"] + ([f"ml:{current}"] if current is not None else [])
    replayed, share = held_out, 0.0
    if warm is not None and len(warm):
        table = pa.concat_tables([warm.table, held_out.table.cast(warm.table.schema)])
        replayed, share = AccessLog(table, dict(held_out.meta)), len(warm) / (len(warm) + len(held_out))
    report = simulate(replayed, cache, arms, with_belady=False, writes="read", warmup=share)
    ratios = {a.arm: a.hit_ratio for a in report.arms}
    cand = ratios[f"ml:{candidate}"]
    cur = ratios.get(f"ml:{current}") if current is not None else None
    promote = cur is None or cand >= cur + margin
    return {
        "candidate_hit_ratio": round(cand, 5),
        "current_hit_ratio": round(cur, 5) if cur is not None else None,
        "no_prefetch_hit_ratio": round(ratios["none"], 5),
        "margin": margin,
        "cache": cache,
        "capacity": report.capacity,
        "held_out_reads": len(held_out),
        "warm_reads": len(warm) if warm is not None else 0,
        "promote": promote,
    }


def retrain_once(
    logs: str | os.PathLike[str], registry: str | os.PathLike[str], cfg: RetrainConfig | None = None
) -> dict[str, Any]:
    """One round: train a candidate on the recorded reads and promote it only if the gate says
    so. Returns the decision (also appended to the registry's decisions.jsonl)."""
    from ml.registry import ModelError, next_version, resolve, set_current
    from ml.training.train import train

    cfg = cfg or RetrainConfig()
    root = Path(registry)
    root.mkdir(parents=True, exist_ok=True)
    try:
        current: Path | None = resolve(root)
    except ModelError:
        current = None
    log = recorded_log(logs)
    if cfg.recent and len(log) > cfg.recent:  # (a new pattern is not drowned by weeks of the old one)
        log = AccessLog(log.table.slice(len(log) - cfg.recent), dict(log.meta))
    decision: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reads": len(log),
        "current": current.name if current is not None else None,
        "config": asdict(cfg),
    }
    if len(log) < cfg.min_reads:
        decision.update(
            promote=False, reason=f"too little data: {len(log)} reads recorded, {cfg.min_reads} needed"
        )
        return _record(root, decision)
    cut = int(len(log) * (1.0 - cfg.holdout))
    train_part = AccessLog(log.table.slice(0, cut), dict(log.meta))
    held_out = AccessLog(log.table.slice(cut), dict(log.meta))
    with tempfile.TemporaryDirectory(prefix="predis-candidate-", dir=root) as tmp:
        started = time.monotonic()
        tcfg = cfg.train
        if cfg.fine_tune and current is not None:
            tcfg = replace(cfg.train, init_from=str(current))
        decision["mode"] = "fine-tune" if tcfg.init_from else "full"
        metrics = train(train_part, tmp, tcfg)
        decision["train_seconds"] = round(time.monotonic() - started, 1)
        decision["candidate_top1"] = metrics["model"].get("top1")
        warm = AccessLog(train_part.table.slice(max(0, cut - cfg.warm_reads)), dict(log.meta))
        verdict = gate(tmp, current, held_out, cfg.cache, cfg.margin, warm)
        decision.update(verdict)
        if verdict["promote"]:
            version = next_version(root)
            shutil.copytree(tmp, version)
            manifest = json.loads((version / "manifest.json").read_text())
            manifest["gate"] = {k: v for k, v in decision.items() if k != "config"}
            (version / "manifest.json").write_text(json.dumps(manifest, indent=1))
            set_current(root, version)
            decision["version"] = version.name
            decision["reason"] = (
                "no current model"
                if current is None
                else f"candidate {verdict['candidate_hit_ratio']:.4f} >= current {verdict['current_hit_ratio']:.4f} + {cfg.margin}"
            )
        else:
            decision["reason"] = (
                f"candidate {verdict['candidate_hit_ratio']:.4f} < current {verdict['current_hit_ratio']:.4f} + {cfg.margin}"
            )
    return _record(root, decision)


def _record(root: Path, decision: dict[str, Any]) -> dict[str, Any]:
    with open(root / DECISIONS, "a") as fh:
        fh.write(json.dumps(decision, sort_keys=True) + "\n")
    return decision


def recorded_reads(logs: str | os.PathLike[str]) -> int:
    """Rows in the closed files (from their footers: no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in closed_files(logs))


def watch(
    logs: str | os.PathLike[str],
    registry: str | os.PathLike[str],
    cfg: RetrainConfig,
    every_reads: int,
    max_age: float,
    interval: float = 30.0,
    rounds: int = 0,
    say: Callable[[dict[str, Any]], None] = lambda d: None,
    sleep: Callable[[float], None] = time.sleep,
    drift: Callable[[], int | None] | None = None,
    min_new_reads: int = 0,
    round_once: Callable[..., dict[str, Any]] | None = None,
) -> None:
    """Retrain whenever ``every_reads`` new reads were recorded since the last round, the current
    model is older than ``max_age`` seconds (0: never by age), or the proxy's drift alert started
    firing again since the last look (``drift``: how many times it has, None when the proxy cannot
    be reached), once ``min_new_reads`` reads came after it (the new pattern, to learn from);
    checks every ``interval`` seconds. ``rounds``: stop after that many rounds (0: never)."""
    round_once = round_once or retrain_once
    from ml.registry import ModelError, resolve

    try:
        os.nice(10)  # (training never competes with the proxy for the CPU)
    except OSError:
        pass
    seen = recorded_reads(logs)  # (what was recorded before the watch started counts as old...)
    try:
        resolve(registry)
    except ModelError:
        seen = 0  # (...unless there is no model yet: then it is what the first one learns from)
    done = 0
    drifts = drift() if drift is not None else None  # (alerts before the watch started are old)
    drifted_at: int | None = None  # recorded reads when the latest drift alert was seen
    while not rounds or done < rounds:
        total = recorded_reads(logs)
        age = _model_age(registry)
        if drift is not None:
            now_drifts = drift()
            if now_drifts is not None and drifts is not None and now_drifts > drifts:
                drifted_at = total
            if now_drifts is not None:
                drifts = now_drifts
        by_drift = drifted_at is not None and total - drifted_at >= min_new_reads
        if (
            total - seen >= every_reads
            or (max_age and age is not None and age >= max_age)
            or age is None
            or by_drift
        ):
            drifted_at = None
            decision = round_once(logs, registry, cfg)
            if by_drift:
                decision["trigger"] = "drift"
            say(decision)
            seen = total
            done += 1
            if age is None and not decision.get("promote"):
                sleep(interval)  # (no model and too little data: wait for more)
            continue
        sleep(interval)


def drift_alerts(url: str) -> Callable[[], int | None]:
    """How many times the proxy's drift alert started firing, read from its metrics at ``url``
    (``predis serve --admin``'s ``/metrics``); None while it cannot be read."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def read() -> int | None:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
        except OSError:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "predis_alerts_fired_total" and sample.labels.get("alert") == "drift_max":
                    return int(sample.value)
        return None

    return read


def _model_age(registry: str | os.PathLike[str]) -> float | None:
    from ml.registry import ModelError, resolve

    try:
        current = resolve(registry)
    except ModelError:
        return None
    return time.time() - (current / "manifest.json").stat().st_mtime
