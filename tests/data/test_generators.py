"""Synthetic workloads: shape, determinism, realistic key names, their own claims, bad parameters."""

from __future__ import annotations

import re

import numpy as np
import pytest

from accesslog.generators import GENERATORS, generate, parse_params
from accesslog.log import SCHEMA
from accesslog.validation import characterize, check_claims
from common.errors import DataError

# A Redis key as applications write them: lower-case type, then colon-separated ids and fields.
KEY = re.compile(r"^[a-z_]+(:[A-Za-z0-9_]+)+$")
N = 120_000


@pytest.fixture(scope="module", params=sorted(GENERATORS))
def made(request: pytest.FixtureRequest) -> tuple[str, object]:
    return request.param, generate(request.param, N, seed=7)


def test_shape(made: tuple[str, object]) -> None:
    name, log = made
    assert len(log) == N and log.table.schema == SCHEMA  # type: ignore[attr-defined]
    ts = log.timestamps()  # type: ignore[attr-defined]
    assert (np.diff(ts) >= 0).all(), "accesses come in time order"
    keys = log.keys()  # type: ignore[attr-defined]
    bad = [k for k in set(keys) if not KEY.match(k)]
    assert not bad, bad[:5]
    assert set(log.column("op")) <= {"GET", "SET"}  # type: ignore[attr-defined]
    assert (log.column("size") > 0).all()  # type: ignore[attr-defined]
    assert log.meta["generator"] == name and log.meta["seed"] == 7  # type: ignore[attr-defined]


def test_claims_hold(made: tuple[str, object]) -> None:
    name, log = made
    claims = check_claims(log)  # type: ignore[arg-type]
    assert claims, f"{name} checks no claim"
    failed = [(c.name, c.detail) for c in claims if not c.ok]
    assert not failed


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_deterministic_by_seed(name: str) -> None:
    a, b, c = (generate(name, 5000, seed=s) for s in (3, 3, 4))
    assert a.table.equals(b.table)
    assert not a.table.equals(c.table)


@pytest.mark.parametrize(
    ("name", "template"),
    [("zipfian", r"object:(\d+)"), ("web", r"product:(\d+)"), ("gaming", r"entity:(\d+)")],
)
def test_ids_are_not_numbered_by_first_appearance(name: str, template: str) -> None:
    # The numbers in key names are application ids: in order of first appearance they go up about as
    # often as down, where first-appearance numbering would make every new id the largest so far.
    log = generate(name, 50_000, seed=1)
    _, names = log.key_codes()
    ids = [int(m.group(1)) for k in names.to_pylist() if (m := re.fullmatch(template, k))]
    assert len(ids) > 100
    ups = np.mean(np.diff(ids) > 0)
    assert 0.35 < ups < 0.65, ups


@pytest.mark.parametrize("shuffle", ["fixed", "none", "epoch"])
def test_ml_training_shuffle_modes(shuffle: str) -> None:
    params = parse_params("ml_training", [f"shuffle={shuffle}", "samples=2000"])
    log = generate("ml_training", 8000, seed=2, params=params)
    assert all(c.ok for c in check_claims(log)), [c.detail for c in check_claims(log)]
    keys = log.keys()
    epoch1, epoch2 = keys[:2000], keys[2000:4000]
    assert sorted(epoch1) == sorted(epoch2), "every epoch reads each sample once"
    assert (epoch1 == epoch2) == (shuffle != "epoch")
    if shuffle == "none":
        assert epoch1 == [f"ds:train:sample:{i}" for i in range(2000)]


def test_zipf_exponent_is_what_was_asked() -> None:
    for alpha in (0.7, 1.2):
        log = generate(
            "zipfian", 400_000, seed=5, params=parse_params("zipfian", [f"alpha={alpha}", "keys=2000"])
        )
        assert abs(characterize(log, predictability=False)["zipf_alpha"] - alpha) < 0.1


def test_temporal_peak_ratio_follows_the_parameter() -> None:
    params = parse_params("temporal", ["peak_ratio=6", "business_ratio=3", "days=14"])
    report = characterize(generate("temporal", 300_000, seed=1, params=params), predictability=False)
    assert report["peak_offpeak"] == pytest.approx(6, rel=0.15)
    flat = parse_params("temporal", ["seasonality=0"])
    report = characterize(generate("temporal", 300_000, seed=1, params=flat), predictability=False)
    assert report["peak_offpeak"] == pytest.approx(1, rel=0.1)


def test_shared_knobs_do_what_they_say() -> None:
    log = generate("zipfian", 50_000, seed=1, params=parse_params("zipfian", ["write_ratio=0.25"]))
    assert np.mean(log.column("op") == "SET") == pytest.approx(0.25, abs=0.01)
    bursty = generate("zipfian", 50_000, seed=1, params=parse_params("zipfian", ["burstiness=3"]))
    assert characterize(bursty, predictability=False)["interarrival_cv"] == pytest.approx(3, rel=0.15)
    sized = generate(
        "zipfian", 50_000, seed=1, params=parse_params("zipfian", ["value_size=4096", "value_sigma=0"])
    )
    assert set(sized.column("size")) == {4096}
    rate = generate("zipfian", 50_000, seed=1, params=parse_params("zipfian", ["rate=5000"]))
    assert characterize(rate, predictability=False)["span_s"] == pytest.approx(10, rel=0.05)


def test_noise_lowers_predictability() -> None:
    clean = characterize(generate("gaming", 60_000, seed=1))
    noisy_log = generate("gaming", 60_000, seed=1, params=parse_params("gaming", ["noise=0.5"]))
    noisy = characterize(noisy_log)
    assert noisy["markov_top1"] < clean["markov_top1"] - 0.2
    assert all(c.ok for c in check_claims(noisy_log, noisy))


@pytest.mark.parametrize(
    ("name", "pairs", "message"),
    [
        ("nope", [], "unknown workload 'nope'"),
        ("zipfian", ["beta=1"], "unknown parameter 'beta'"),
        ("zipfian", ["alpha=x"], "must be a number"),
        ("zipfian", ["alpha"], "name=value"),
        ("zipfian", ["noise=2"], "between 0 and 1"),
        ("zipfian", ["keys=0"], "keys must be positive"),
        ("ml_training", ["shuffle=sometimes"], "shuffle must be"),
        ("temporal", ["peak_ratio=1", "business_ratio=2"], "peak_ratio >= business_ratio"),
    ],
)
def test_bad_parameters(name: str, pairs: list[str], message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_params(name, pairs)


def test_bad_count() -> None:
    with pytest.raises(DataError, match="positive"):
        generate("zipfian", 0)
