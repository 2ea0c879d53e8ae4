"""``ml:MODEL_DIR`` for :func:`prefetch.predictors.make_predictor` (the simulator's ML arm)."""

from __future__ import annotations

from typing import Any


def load_predictor(model_dir: str, log: Any = None, **params: Any) -> Any:
    from common.errors import ConfigError

    if log is None:
        raise ConfigError("the ml arm needs the trace it will replay (simulator only, for now)")
    from ml.inference.arm import MLPredictor

    return MLPredictor(model_dir, log, **params)
