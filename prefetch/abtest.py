"""Significance of an A/B test of hit ratios: which arm's predictor earns its place.

Two tests, for two ways of reading the result:

* **Chi-square** on the arms' hit/miss counts (``scipy.stats.chi2_contingency``), with a 95%
  confidence interval on the difference of hit ratios (Wald). Valid when the sample size was fixed
  in advance and the result is read once, at the end (``predis replay``, the demo).
* **A mixture sequential probability ratio test** (mSPRT, Johari et al., "Always valid inference",
  normal approximation with a N(0, tau^2) mixture over the difference): its p-value stays valid
  however often the result is watched and whenever the watching stops, so read this one on a live
  dashboard. The always-valid p-value is the running minimum of 1/Lambda, kept by the caller
  (``SequentialTest``).

No winner is named before every arm has ``MIN_GETS`` reads, whatever the p-values say.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MIN_GETS = 1_000
ALPHA = 0.01  # the significance level a winner is named at
TAU = 0.05  # the mixture's scale: effects of about five points of hit ratio are the ones looked for


def prepare() -> None:
    """Import scipy.stats now, before a server serves: it takes most of a second, and the first
    test would otherwise take it on the event loop, holding every client up (a proxy's first A/B
    report stalled its loop for 0.9 s)."""
    import scipy.stats  # noqa: F401


def chi_square(arms: Sequence[tuple[int, int]]) -> float | None:
    """The chi-square test's p-value for the arms' (hits, misses); None while it is undefined."""
    from scipy.stats import chi2_contingency

    table = [[h, m] for h, m in arms]
    if len(table) < 2 or any(h + m == 0 for h, m in table):
        return None
    if all(h == 0 for h, _ in table) or all(m == 0 for _, m in table):
        return 1.0  # every arm all misses (or all hits): no difference to find
    return float(chi2_contingency(table, correction=False).pvalue)


def difference(
    a: tuple[int, int], b: tuple[int, int], z: float = 1.959964
) -> tuple[float, float, float] | None:
    """Hit ratio of a minus b, with its 95% confidence interval (Wald); None while undefined."""
    na, nb = a[0] + a[1], b[0] + b[1]
    if not na or not nb:
        return None
    pa, pb = a[0] / na, b[0] / nb
    half = z * math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    return pa - pb, pa - pb - half, pa - pb + half


def msprt_ratio(a: tuple[int, int], b: tuple[int, int], tau: float = TAU) -> float:
    """The mixture likelihood ratio Lambda for "a's hit ratio differs from b's"."""
    na, nb = a[0] + a[1], b[0] + b[1]
    if not na or not nb:
        return 1.0
    pa, pb = a[0] / na, b[0] / nb
    # The variance of the difference; floored so that all-hit or all-miss arms do not divide by 0.
    var = max(pa * (1 - pa) / na + pb * (1 - pb) / nb, 0.25 / (na + nb) ** 2)
    diff = pa - pb
    t2 = tau * tau
    exponent = (diff * diff / (2 * var)) * (t2 / (var + t2))
    return math.sqrt(var / (var + t2)) * math.exp(min(exponent, 700.0))


class SequentialTest:
    """The always-valid p-value of the first arm against each other one: the running minimum of
    1/Lambda over every look (``look``), reset with the experiment."""

    def __init__(self) -> None:
        self.p: dict[str, float] = {}

    def look(self, name: str, a: tuple[int, int], b: tuple[int, int]) -> float:
        p = min(self.p.get(name, 1.0), 1.0 / msprt_ratio(a, b))
        self.p[name] = p
        return p

    def reset(self) -> None:
        self.p.clear()


def report(arms: Sequence[dict[str, Any]], sequential: SequentialTest | None = None) -> dict[str, Any]:
    """The A/B report of arms (dicts with name, gets, hits): per arm its hit ratio; the chi-square
    p-value over all arms; each later arm against the first (difference of the first minus it,
    its interval, the sequential p-value); and a winner once there is one."""
    counts = [(int(arm["hits"]), int(arm["gets"]) - int(arm["hits"])) for arm in arms]
    out: dict[str, Any] = {
        "arms": [
            {**arm, "hit_ratio": (h / (h + m)) if h + m else 0.0}
            for arm, (h, m) in zip(arms, counts, strict=True)
        ],
        "chi2_p": chi_square(counts),
        "min_gets": MIN_GETS,
        "alpha": ALPHA,
        "comparisons": [],
    }
    enough = all(h + m >= MIN_GETS for h, m in counts)
    winner = None
    for arm, other in zip(arms[1:], counts[1:], strict=True):
        name = f"{arms[0]['name']}-{arm['name']}"
        diff = difference(counts[0], other)
        p_seq = sequential.look(name, counts[0], other) if sequential is not None else None
        out["comparisons"].append(
            {
                "arms": name,
                "difference": diff[0] if diff else None,
                "ci95": [diff[1], diff[2]] if diff else None,
                "sequential_p": p_seq,
            }
        )
    p = out["chi2_p"]
    if enough and p is not None and p < ALPHA and len(arms) >= 2:
        best = max(range(len(arms)), key=lambda i: counts[i][0] / max(1, sum(counts[i])))
        winner = arms[best]["name"]
    out["enough_data"] = enough
    out["winner"] = winner
    return out
