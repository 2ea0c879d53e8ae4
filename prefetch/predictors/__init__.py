"""Prefetch predictors behind one interface (:mod:`prefetch.predictors.base`).

``make_predictor("markov")`` or with parameters ``make_predictor("pg:lookahead=10:threshold=0.1")``.
Predictors from packages above this one (the model: ``ml:MODEL_DIR``) register a loader under their
prefix as an entry point of the group ``predis.predictors`` (pyproject.toml), found only when a spec
names it: this package never imports them, and the proxy never needs torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from common.errors import ConfigError
from prefetch.predictors.base import NoPrefetch, Predictor
from prefetch.predictors.delta import Delta
from prefetch.predictors.frequency import Frequency
from prefetch.predictors.markov import Markov
from prefetch.predictors.mithril import Mithril
from prefetch.predictors.obl import OBL
from prefetch.predictors.oracle import Oracle
from prefetch.predictors.pg import ProbabilityGraph
from prefetch.predictors.ranker import Ranker

HEURISTICS: dict[str, Callable[..., Predictor]] = {
    "none": NoPrefetch,
    "frequency": Frequency,
    "obl": OBL,
    "delta": Delta,
    "markov": Markov,
    "pg": ProbabilityGraph,
    "mithril": Mithril,
    "rank": Ranker,
}
# Arms only the simulator can run: they need the whole trace.
SIMULATOR_ONLY = ("oracle",)


LOADERS = "predis.predictors"  # the entry-point group: NAME = "module:loader(arg, log, **params)"


def _loader(prefix: str) -> Callable[..., Any] | None:
    from importlib.metadata import entry_points

    for point in entry_points(group=LOADERS, name=prefix):
        return point.load()  # type: ignore[no-any-return]
    return None


def known() -> list[str]:
    """Every spec's name; a loader's as ``PREFIX:ARG``, ARG its first parameter (``ml:MODEL_DIR``)."""
    from importlib.metadata import entry_points

    plugins = []
    for point in entry_points(group=LOADERS):
        first = next(iter(inspect.signature(point.load()).parameters), "arg")
        plugins.append(f"{point.name}:{first.upper()}")
    return [*HEURISTICS, *SIMULATOR_ONLY, *plugins]


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


def make_predictor(
    spec: str,
    *,
    trace_keys: Sequence[str] | None = None,
    log: Any = None,
    loader_defaults: dict[str, Any] | None = None,
    check_only: bool = False,
) -> Predictor:
    """The predictor named by ``spec``; ``trace_keys`` (the oracle) and ``log`` (the ML arm, which
    computes its candidates for the whole trace up front) exist in the simulator only.
    ``loader_defaults``: parameters a loader's spec gets unless it names them (the live engine's
    ``device``). ``check_only``: a loader checks its spec and what it names (a model directory)
    without building anything heavy, and returns None (the proxy's check at start)."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix not in HEURISTICS and prefix not in SIMULATOR_ONLY:
        loader = _loader(prefix)
        if loader is None:
            raise ConfigError(
                f"unknown prefetcher {prefix!r}; known: {', '.join(known())} (others register as "
                f"{LOADERS!r} entry points of an installed package)"
            )
        arg, _, tail = rest.partition("::")  # ``PREFIX:ARG::k=v:k=v`` (ARG, a directory, may hold ':')
        _, params = parse_spec(prefix + ":" + tail) if tail else (prefix, {})
        params = {**(loader_defaults or {}), **params}
        if check_only:
            return loader(arg, log, check_only=True, **params)  # type: ignore[no-any-return]
        return loader(arg, log, **params)  # type: ignore[no-any-return]
    name, params = parse_spec(spec)
    if name == "oracle":
        if trace_keys is None:
            raise ConfigError("the oracle arm needs the trace (simulator only)")
        factory: Callable[..., Predictor] = Oracle
        params = {"keys": trace_keys, **params}
        if params.get("own_client"):  # (it follows each client's stream: the log names them)
            if log is None:
                raise ConfigError("oracle:own_client=1 needs the trace's log (simulator only)")
            params["clients"] = log.clients().tolist()
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
    composes = getattr(factory, "composes", None)
    if composes is not None:  # (a predictor over others: build the ones its parameter names)
        param, default = composes
        names = [n for n in str(params.get(param, default)).split("+") if n]
        if not names or name in names:
            raise ConfigError(f"prefetcher {spec!r}: {param} names other predictors as NAME+NAME")
        params[param] = [make_predictor(n) for n in names]
    try:
        return factory(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"prefetcher {spec!r}: {exc}") from None


__all__ = ["HEURISTICS", "Predictor", "known", "make_predictor", "parse_spec"]
