"""``ml:MODEL_DIR`` for :func:`prefetch.predictors.make_predictor`: the simulator's ML arm (with the
trace it replays), the live engine's (without one), or, with ``check_only``, the proxy's check of the
spec at start (the model's manifest and weights, without torch: the engine's process loads it)."""

from __future__ import annotations

import inspect
from typing import Any

# The live arm's parameters (``ml:DIR::min_confidence=0.5:device=cpu``), checked at start.
LIVE_PARAMS = ("fallback", "min_confidence", "device", "policy", "min_score", "max_clients", "threads")


def load_predictor(model_dir: str, log: Any = None, check_only: bool = False, **params: Any) -> Any:
    from common.errors import ConfigError
    from ml.registry import ModelError, check_model, resolve

    rank = params.pop("rank", None)
    if log is not None:
        try:  # (a missing model is told before torch is imported; the load checks the rest)
            resolve(model_dir)
        except ModelError as exc:
            raise ConfigError(str(exc)) from None
        from ml.inference.arm import MLPredictor

        accepted = set(inspect.signature(MLPredictor).parameters) - {"model_dir", "log"}
        _check_params(params, accepted)
        if rank:
            return _ranked(model_dir, log, rank, params)
        return MLPredictor(model_dir, log, **params)
    if rank:
        raise ConfigError(
            "ml arm: rank runs in the simulator only so far (the live engine steps the model alone)"
        )
    _check_params(params, set(LIVE_PARAMS))
    if params.get("device", "auto") not in ("auto", "cpu", "cuda") and not str(params["device"]).startswith(
        "cuda:"
    ):
        raise ConfigError(f"ml arm: device must be auto, cpu or cuda, not {params['device']!r}")
    if check_only:
        try:
            check_model(model_dir)
        except ModelError as exc:
            raise ConfigError(str(exc)) from None
        if params.get("fallback"):
            from prefetch.predictors import make_predictor

            make_predictor(str(params["fallback"]))
        return None
    from ml.inference.live import LiveMLPredictor
    from ml.inference.stepper import keep_freed_memory

    keep_freed_memory()  # (called in the engine's process only, the one that runs the stepper)
    return LiveMLPredictor(model_dir, **params)


def _ranked(model_dir: str, log: Any, rank: Any, params: dict[str, Any]) -> Any:
    """``ml:DIR::rank=1`` (or ``rank=obl+pg``, the heuristics beside it): the learned ranker over the
    heuristics' candidates and the model's own (its key, successor and template candidates, no
    gate, no floor, no fallback), each scored by the ranker (prefetch.predictors.ranker)."""
    from ml.inference.arm import MLPredictor
    from prefetch.predictors import make_predictor
    from prefetch.predictors.ranker import DEFAULT_SOURCES, Ranker

    names = DEFAULT_SOURCES if rank in (1, "1") else str(rank)
    heuristics = [make_predictor(n) for n in names.split("+") if n]
    own = {"fallback": "none", "min_confidence": 0.0, "min_score": 0.0, **params}
    return Ranker([*heuristics, MLPredictor(model_dir, log, **own)])


def _check_params(params: dict[str, Any], accepted: set[str]) -> None:
    from common.errors import ConfigError

    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(
            f"the ml arm has no parameter {unknown[0]!r}; it takes {', '.join(sorted(accepted))}"
        )
