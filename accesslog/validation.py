"""Measured characteristics of an access log, and each synthetic workload's check of its own claims.

:func:`characterize` reports what a cache or a predictor cares about: volume, skew (top-20% share and a
fitted Zipf exponent), time of day (hourly profile, peak/off-peak ratio), burstiness (the coefficient of
variation of inter-arrival times), the share of requests to never-seen keys, and predictability:
the accuracy of an online first-order Markov predictor (top-1), the best any fixed first-order map
could do in hindsight, and the ceiling for any closed-vocabulary next-key predictor (the next key must
have been seen before).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from accesslog.log import AccessLog

# Hourly profiles need whole days; a log spanning less says "n/a" rather than a misleading ratio.
MIN_SPAN_FOR_HOURLY = 86_400.0


def top_share(counts: np.ndarray, share: float = 0.2) -> float:
    """Share of accesses that go to the most popular ``share`` of the keys."""
    if counts.size == 0:
        return 0.0
    top = max(1, math.ceil(share * counts.size))
    ordered = np.sort(counts)[::-1]
    return float(ordered[:top].sum() / ordered.sum())


def fit_zipf(counts: np.ndarray, min_count: int = 5) -> float:
    """Zipf exponent: least squares of log count on log rank, over ranks spaced evenly in log scale.

    Ranks whose count is below ``min_count`` are left out: there the count is mostly sampling noise
    and its floor at 1 would flatten the fit. Evenly log-spaced ranks keep the long tail from
    outvoting the head.
    """
    ordered = np.sort(counts)[::-1].astype(np.float64)
    ordered = ordered[ordered >= min_count]
    if ordered.size < 3:
        return float("nan")
    ranks = np.unique(np.geomspace(1, ordered.size, num=min(200, ordered.size)).astype(np.int64))
    x, y = np.log(ranks), np.log(ordered[ranks - 1])
    slope = np.polyfit(x, y, 1)[0]
    return float(-slope)


def hourly_profile(ts: np.ndarray) -> np.ndarray | None:
    """Mean accesses per hour for each hour of the day (UTC), or None if the log spans under a day."""
    if ts.size < 2 or ts[-1] - ts[0] < MIN_SPAN_FOR_HOURLY:
        return None
    hour_index = np.floor(ts / 3600.0).astype(np.int64)
    per_hour = np.bincount(hour_index - hour_index[0])
    hours = np.arange(per_hour.size) + hour_index[0]
    # Leave out the first and last hour, which are partial.
    per_hour, hours = per_hour[1:-1], hours[1:-1]
    hod = hours % 24
    sums = np.bincount(hod, weights=per_hour, minlength=24)
    seen = np.bincount(hod, minlength=24)
    return sums / np.maximum(seen, 1)  # type: ignore[no-any-return]


def markov_online_top1(codes: np.ndarray) -> float:
    """Accuracy of predicting each next key as the most frequent successor of the current key so far."""
    n = codes.size
    if n < 2:
        return 0.0
    counts: dict[int, int] = {}
    best: dict[int, tuple[int, int]] = {}
    span = int(codes.max()) + 1
    hits = 0
    seq = codes.tolist()
    prev = seq[0]
    for cur in seq[1:]:
        guess = best.get(prev)
        if guess is not None and guess[0] == cur:
            hits += 1
        pair = prev * span + cur
        c = counts.get(pair, 0) + 1
        counts[pair] = c
        if guess is None or c > guess[1]:
            best[prev] = (cur, c)
        prev = cur
    return hits / (n - 1)


def markov_oracle_top1(codes: np.ndarray) -> float:
    """Best accuracy of any fixed map from a key to its predicted successor, chosen in hindsight."""
    if codes.size < 2:
        return 0.0
    span = int(codes.max()) + 1
    pairs = codes[:-1].astype(np.int64) * span + codes[1:]
    uniq, counts = np.unique(pairs, return_counts=True)
    first = uniq // span
    # uniq is sorted, so pairs with the same first key are contiguous.
    starts = np.flatnonzero(np.r_[True, first[1:] != first[:-1]])
    return float(np.maximum.reduceat(counts, starts).sum() / (codes.size - 1))


def first_seen(codes: np.ndarray) -> np.ndarray:
    """True where an access is the first to its key."""
    _, first = np.unique(codes, return_index=True)
    mask = np.zeros(codes.size, bool)
    mask[first] = True
    return mask


def interarrival_cv(ts: np.ndarray) -> float:
    gaps = np.diff(ts)
    if gaps.size < 2 or gaps.mean() <= 0:
        return float("nan")
    return float(gaps.std() / gaps.mean())


def characterize(log: AccessLog, *, predictability: bool = True) -> dict[str, Any]:
    """The measured characteristics of ``log``, as a flat dict (see the module doc)."""
    codes, dictionary = log.key_codes()
    ts = log.timestamps()
    n = codes.size
    counts = np.bincount(codes) if n else np.zeros(0, np.int64)
    new = first_seen(codes) if n else np.zeros(0, bool)
    ops = log.column("op")
    profile = hourly_profile(ts) if not log.meta.get("synthetic_clock") else None
    report: dict[str, Any] = {
        "source": log.source,
        "requests": n,
        "unique_keys": int(len(dictionary)),
        "reads": float(np.isin(ops, ["GET", "MGET"]).mean()) if n else 0.0,
        "top20_share": top_share(counts),
        "zipf_alpha": fit_zipf(counts),
        "span_s": float(ts[-1] - ts[0]) if n else 0.0,
        "synthetic_clock": bool(log.meta.get("synthetic_clock", False)),
        # A synthetic clock is evenly spaced by construction: its CV says nothing about the source.
        "interarrival_cv": None if log.meta.get("synthetic_clock") else interarrival_cv(ts),
        "new_key_share": float(new.mean()) if n else 0.0,
        "hourly": None if profile is None else [round(float(x), 3) for x in profile],
        "peak_offpeak": None
        if profile is None or profile.min() <= 0
        else float(profile.max() / profile.min()),
    }
    if predictability:
        report["markov_top1"] = markov_online_top1(codes)
        report["markov_oracle_top1"] = markov_oracle_top1(codes)
        # A closed-vocabulary predictor names only keys it has seen, so a next key seen for the
        # first time is beyond it.
        report["closed_vocab_bound"] = float(1.0 - new[1:].mean()) if n > 1 else 0.0
    return report


# --- claims ---------------------------------------------------------------------------------------


@dataclass
class Claim:
    name: str
    ok: bool
    detail: str


def _within(name: str, measured: float, expected: float, tol: float, what: str = "") -> Claim:
    ok = bool(abs(measured - expected) <= tol)
    return Claim(name, ok, f"{what}measured {measured:.3f}, expected {expected:.3f} +/- {tol:.3f}")


def _at_least(name: str, measured: float, bound: float) -> Claim:
    return Claim(name, bool(measured >= bound), f"measured {measured:.3f}, must be at least {bound:.3f}")


def _at_most(name: str, measured: float, bound: float) -> Claim:
    return Claim(name, bool(measured <= bound), f"measured {measured:.3f}, must be at most {bound:.3f}")


def expected_top20(keys: int, alpha: float) -> float:
    from accesslog.generators import zipf_cdf

    return float(zipf_cdf(keys, alpha)[max(1, math.ceil(0.2 * keys)) - 1])


def _zipfian_claims(p: dict[str, Any], r: dict[str, Any], log: AccessLog) -> list[Claim]:
    out = [
        _within(
            "top20_share",
            r["top20_share"],
            expected_top20(p["keys"], p["alpha"]) * (1 - p["noise"]) + 0.2 * p["noise"],
            0.03,
        )
    ]
    if p["keys"] == 10_000 and p["alpha"] == 1.0 and p["noise"] == 0:
        out.append(
            Claim(
                "top20_70_90",
                0.70 <= r["top20_share"] <= 0.90,
                f"top-20% share {r['top20_share']:.3f} in [0.70, 0.90]",
            )
        )
    if r["requests"] >= 100 * p["keys"] and p["noise"] == 0:
        out.append(_within("zipf_alpha", r["zipf_alpha"], p["alpha"], 0.1))
    return out


def _temporal_claims(p: dict[str, Any], r: dict[str, Any], log: AccessLog) -> list[Claim]:
    if r["peak_offpeak"] is None:
        return [Claim("peak_offpeak", False, "the log spans less than a day: no hourly profile")]
    expected = p["peak_ratio"] ** p["seasonality"]
    return [_within("peak_offpeak", r["peak_offpeak"], expected, 0.15 * expected)]


def _ml_training_claims(p: dict[str, Any], r: dict[str, Any], log: AccessLog) -> list[Claim]:
    epochs = r["requests"] / p["samples"]
    out = [_at_most("unique_keys", r["unique_keys"], p["samples"])]
    if epochs >= 2:
        out.append(_within("unique_keys_all", r["unique_keys"], p["samples"], 0))
        if p["shuffle"] in ("fixed", "none"):
            # Every epoch repeats the order, so after the first the successor of a sample is known.
            bound = (1 - p["noise"]) ** 2 * (1 - 1 / epochs) - 0.01
            out.append(_at_least("markov_top1", r["markov_top1"], bound))
        else:
            out.append(_at_most("markov_top1", r["markov_top1"], 0.02 + p["noise"]))
    return out


def _hft_claims(p: dict[str, Any], r: dict[str, Any], log: AccessLog) -> list[Claim]:
    out = []
    if p["event_share"] >= 0.3:
        out.append(_at_least("interarrival_cv", r["interarrival_cv"], 1.5))
    keys = log.table.column("key")
    quotes = keys.filter(pc.starts_with(keys, "quote:"))
    counts = pc.value_counts(quotes).field("counts").to_numpy()
    out.append(_at_least("hot_symbols_top20", top_share(counts), 0.6))
    return out


def _follow_rate(log: AccessLog, first: str, then: Callable[[pa.Array, pa.Array], pa.Array]) -> float:
    """Share of reads matching regex ``first`` whose next access by the same client satisfies ``then``."""
    client = log.column("client")
    order = np.lexsort((np.arange(client.size), client))
    keys = log.table.column("key").combine_chunks().take(pa.array(order))
    ops = log.table.column("op").combine_chunks().take(pa.array(order))
    prev, nxt = keys[:-1], keys[1:]
    same = pa.array(client[order][1:] == client[order][:-1])
    a = pc.and_(pc.and_(pc.match_substring_regex(prev, first), pc.equal(ops[:-1], "GET")), same)
    hits = pc.and_(a, then(prev, nxt))
    return float(pc.sum(hits).as_py() or 0) / max(1, pc.sum(a).as_py() or 0)


def _gaming_claims(p: dict[str, Any], r: dict[str, Any], log: AccessLog) -> list[Claim]:
    keys = log.table.column("key")
    entity_share = float(pc.mean(pc.starts_with(keys, "entity:")).as_py())
    per_tick = 2 + (2 * p["view"] + 1) + p["inventory"] + p["state_writes"]
    # Noise reads pick uniformly among the key names, so they hit entities as often as names are entities.
    names = log.key_codes()[1]
    entity_names = float(pc.mean(pc.starts_with(names, "entity:")).as_py())
    expected = (2 * p["view"] + 1) / per_tick * (1 - p["noise"]) + p["noise"] * entity_names
    state_then_zone = _follow_rate(log, r"^player:\d+:state$", lambda a, b: pc.starts_with(b, "zone:"))
    return [
        _within("entity_share", entity_share, expected, 0.05),
        # In a player's own stream, its state read is followed by its zone's entity index.
        _at_least("state_then_zone", state_then_zone, 0.9 * (1 - p["noise"]) ** 2),
    ]


def _web_claims(p: dict[str, Any], r: dict[str, Any], log: AccessLog) -> list[Claim]:
    inventory_next = _follow_rate(
        log, r"^product:\d+$", lambda a, b: pc.equal(b, pc.binary_join_element_wise(a, ":inventory", ""))
    )
    return [
        # The product page's template is fixed: in a session, product:ID is followed by its inventory.
        _at_least("product_template", inventory_next, 0.9 * (1 - p["noise"]) ** 2),
        _at_least("closed_vocab_bound", r.get("closed_vocab_bound", 1.0), 0.5),
    ]


CLAIMS: dict[str, Callable[[dict[str, Any], dict[str, Any], AccessLog], list[Claim]]] = {
    "zipfian": _zipfian_claims,
    "temporal": _temporal_claims,
    "ml_training": _ml_training_claims,
    "hft": _hft_claims,
    "gaming": _gaming_claims,
    "web": _web_claims,
}


def check_claims(log: AccessLog, report: dict[str, Any] | None = None) -> list[Claim]:
    """The claims of the generator that made ``log`` (none for a real trace)."""
    gen = log.meta.get("generator")
    if gen not in CLAIMS:
        return []
    report = report if report is not None else characterize(log)
    return CLAIMS[gen](log.meta.get("params", {}), report, log)


# --- presentation ---------------------------------------------------------------------------------

ROWS = [
    ("requests", "requests", "{:,}"),
    ("unique_keys", "unique keys", "{:,}"),
    ("reads", "read share", "{:.1%}"),
    ("top20_share", "share to top 20% keys", "{:.1%}"),
    ("zipf_alpha", "fitted Zipf exponent", "{:.2f}"),
    ("span_s", "time span (s)", "{:,.0f}"),
    ("peak_offpeak", "peak/off-peak hourly ratio", "{:.2f}"),
    ("interarrival_cv", "inter-arrival CV (burstiness)", "{:.2f}"),
    ("new_key_share", "requests to never-seen keys", "{:.1%}"),
    ("markov_top1", "online Markov top-1", "{:.1%}"),
    ("markov_oracle_top1", "best first-order map (hindsight)", "{:.1%}"),
    ("closed_vocab_bound", "closed-vocabulary bound", "{:.1%}"),
]


def format_report(report: dict[str, Any], claims: list[Claim]) -> str:
    lines = [f"{report['source']}" + ("  (synthetic clock)" if report.get("synthetic_clock") else "")]
    for key, label, fmt in ROWS:
        value = report.get(key)
        text = "n/a" if value is None or isinstance(value, float) and math.isnan(value) else fmt.format(value)
        lines.append(f"  {label:<34} {text}")
    if report.get("hourly"):
        lines.append("  hourly profile (mean/hour, UTC)   " + " ".join(f"{x:.0f}" for x in report["hourly"]))
    for c in claims:
        lines.append(f"  claim {c.name:<28} {'ok  ' if c.ok else 'FAIL'} {c.detail}")
    return "\n".join(lines)


def plot_report(log: AccessLog, report: dict[str, Any], path: str) -> None:
    """A PNG with the popularity curve (log-log), the hourly profile and the inter-arrival histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    codes, _ = log.key_codes()
    counts = np.sort(np.bincount(codes))[::-1]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].loglog(np.arange(1, counts.size + 1), counts)
    axes[0].set(
        title=f"popularity (fitted alpha {report['zipf_alpha']:.2f})", xlabel="rank", ylabel="accesses"
    )
    if report.get("hourly"):
        axes[1].bar(range(24), report["hourly"])
        axes[1].set(title=f"hourly profile (peak/off-peak {report['peak_offpeak']:.2f})", xlabel="hour (UTC)")
    else:
        axes[1].text(0.5, 0.5, "under a day, or a synthetic clock", ha="center", va="center")
        axes[1].set(title="hourly profile")
    gaps = np.diff(log.timestamps())
    gaps = gaps[gaps > 0]
    if gaps.size:
        axes[2].hist(np.log10(gaps), bins=60)
    cv = report["interarrival_cv"]
    axes[2].set(title="inter-arrival" + ("" if cv is None else f" (CV {cv:.2f})"), xlabel="log10 seconds")
    fig.suptitle(report["source"])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
