"""Prefetch predictors behind one interface (:mod:`prefetch.predictors.base`).

``make_predictor("markov")`` or with parameters ``make_predictor("pg:lookahead=10:threshold=0.1")``.
The ML predictor (``ml:MODEL_DIR``) is imported only when asked for, so the proxy never needs torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from prefetch.predictors.base import NoPrefetch, Predictor
from prefetch.predictors.frequency import Frequency
from prefetch.predictors.markov import Markov
from prefetch.predictors.mithril import Mithril
from prefetch.predictors.obl import OBL
from prefetch.predictors.oracle import Oracle
from prefetch.predictors.pg import ProbabilityGraph
from proxy.errors import ConfigError

HEURISTICS: dict[str, Callable[..., Predictor]] = {
    "none": NoPrefetch,
    "frequency": Frequency,
    "obl": OBL,
    "markov": Markov,
    "pg": ProbabilityGraph,
    "mithril": Mithril,
}
# Arms only the simulator can run: they need the whole trace.
SIMULATOR_ONLY = ("oracle",)


def known() -> list[str]:
    return [*HEURISTICS, *SIMULATOR_ONLY, "ml:MODEL_DIR"]


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name:k=v:k=v`` -> (name, params), values as int, float or str."""
    name, *pairs = spec.strip().split(":")
    params: dict[str, Any] = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise ConfigError(f"prefetcher parameter {pair!r} in {spec!r} is not of the form name=value")
        params[k.replace("-", "_")] = _number(v)
    return name, params


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def make_predictor(spec: str, *, trace_keys: Sequence[str] | None = None, log: Any = None) -> Predictor:
    """The predictor named by ``spec``; ``trace_keys`` (the oracle) and ``log`` (the ML arm, which
    computes its candidates for the whole trace up front) exist in the simulator only."""
    if spec.startswith("ml:"):
        path, _, rest = spec[3:].partition("::")
        _, params = parse_spec("ml:" + rest) if rest else ("ml", {})
        from ml.predictor import load_predictor

        return load_predictor(path, log, **params)  # type: ignore[no-any-return]
    name, params = parse_spec(spec)
    if name == "oracle":
        if trace_keys is None:
            raise ConfigError("the oracle arm needs the trace (simulator only)")
        factory: Callable[..., Predictor] = Oracle
        params = {"keys": trace_keys, **params}
    elif name in HEURISTICS:
        factory = HEURISTICS[name]
    else:
        raise ConfigError(f"unknown prefetcher {name!r}; known: {', '.join(known())}")
    accepted = set(inspect.signature(factory).parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(
            f"prefetcher {name} has no parameter {unknown[0]!r}; it takes {', '.join(sorted(accepted)) or 'none'}"
        )
    try:
        return factory(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"prefetcher {spec!r}: {exc}") from None


__all__ = ["HEURISTICS", "Predictor", "known", "make_predictor", "parse_spec"]
