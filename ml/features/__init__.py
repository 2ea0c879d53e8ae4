"""Features of an access log, offline (vectorized, over whole logs) and in real time (per access).

Both produce the same numbers for the same log (a test checks it): :mod:`ml.features.offline` for
training and evaluation, :mod:`ml.features.realtime` for the proxy, which calls it on every GET.
"""

from ml.features.spec import FEATURES, FeatureConfig

__all__ = ["FEATURES", "FeatureConfig"]
