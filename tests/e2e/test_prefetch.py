"""Live prefetching through a real proxy, engine process and Redis: prefetched values are read
before they are asked for and served correct; the A/B split's figures add up; a dead or stalled
engine is counted, restarted, and never stops the proxy."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
import redis

from accesslog.log import read_log
from prefetch.engine import ArmSplit
from tests.helpers import wait_for

N = 400
# The engine at normal priority and no staleness bound that a slow machine could reach: what these
# tests check must not depend on how fast the engine runs here.
UNHURRIED = {"prefetch_engine_priority": "normal", "prefetch_max_age": 60.0}


def scan(client: redis.Redis, n: int = N, start: int = 0) -> list[bytes | None]:
    return [client.get(f"seq:{i}") for i in range(start, start + n)]


def stats(client: redis.Redis) -> dict[str, Any]:
    return json.loads(client.execute_command("PREDIS", "STATS", "JSON"))  # type: ignore[no-any-return]


def ab(client: redis.Redis) -> dict[str, Any]:
    return json.loads(client.execute_command("PREDIS", "AB", "JSON"))  # type: ignore[no-any-return]


def test_a_sequential_scan_is_prefetched_and_served_correct(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    """OBL follows a scan: once the run is long enough, every next key is in the tier before it is
    read (the test waits for it, so no timing of the engine against the client is asserted), and
    the values served from prefetches are right."""
    direct.mset({f"seq:{i}": f"value-{i}" for i in range(N)})
    proxy = make_proxy(redis_server.url, prefetch="obl:k=2:depth=4", **UNHURRIED)
    wait_for(lambda: proxy.server.tier.active and proxy.server.prediction.ready, timeout=30)
    client = proxy.client()
    tier = proxy.server.tier
    got = []
    for i in range(N):
        got.append(client.get(f"seq:{i}"))
        if 3 <= i < N - 1:
            wait_for(lambda i=i: (0, b"seq:%d" % (i + 1)) in tier.entries, timeout=10)
    assert got == [f"value-{i}".encode() for i in range(N)]
    assert tier.prefetched_hits >= N - 5, (tier.prefetched_hits, proxy.server.prediction.figures())
    wait_for(lambda: proxy.server.prediction.figures()["records"] == N)  # (sent within a millisecond)
    figures = proxy.server.prediction.figures()
    assert figures["predict_shed"] == 0 and figures["fallback_engine_died"] == 0


def test_ab_arms_split_the_keys_and_their_figures_add_up(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    direct.mset({f"seq:{i}": f"value-{i}" for i in range(N)})
    proxy = make_proxy(redis_server.url, ab="OBL=obl:k=2:depth=4,NONE=none", ab_seed=5, **UNHURRIED)
    wait_for(lambda: proxy.server.tier.active and proxy.server.prediction.ready, timeout=30)
    client = proxy.client()
    tier = proxy.server.tier
    mine = ArmSplit(proxy.server.prediction.shares, 5)
    got = []
    for i in range(N):  # each next key of OBL's arm comes in before it is read (waited for)
        got.append(client.get(f"seq:{i}"))
        if 3 <= i < N - 1 and mine.arm_of(b"seq:%d" % (i + 1)) == 0:
            wait_for(lambda i=i: (0, b"seq:%d" % (i + 1)) in tier.entries, timeout=10)
    assert got == [f"value-{i}".encode() for i in range(N)]
    wait_for(lambda: sum(arm["engine_reads"] for arm in ab(client)["arms"]) == N, timeout=10)
    report = ab(client)
    obl, none = report["arms"]
    assert obl["gets"] == sum(mine.arm_of(b"seq:%d" % i) == 0 for i in range(N))
    for arm in (obl, none):
        assert arm["hits"] + arm["misses"] == arm["gets"]
    assert none["prefetches"] == 0 and obl["prefetches"] > 0
    # Each arm holds its half of the tier; the prefetches, and their first hits, are OBL's only.
    assert tier.part_capacity[0] == tier.part_capacity[1] == tier.capacity // 2
    assert none["prefetch_fills"] == 0 and obl["prefetch_fills"] > 0
    assert 0 < obl["prefetched_hits"] <= obl["prefetch_fills"] and 0 < obl["precision"] <= 1
    assert obl["hit_ratio"] > none["hit_ratio"]  # (a scan: only prefetching can hit)
    # Upstream reads per GET: NONE's are its misses; OBL's add what it read ahead.
    assert none["upstream_per_get"] == round(none["misses"] / none["gets"], 4)
    assert obl["upstream_per_get"] > obl["misses"] / obl["gets"]
    text = client.execute_command("PREDIS", "AB").decode()
    assert text.startswith("# Predis A/B") and "arm_OBL:" in text and "chi2_p:" in text
    assert "arm_OBL" in client.info()  # (INFO's # Predis A/B section)
    # Where prediction latency goes, as the engine saw it: each batch was read, then answered.
    wait_for(lambda: stats(client)["prefetch_engine_answered_p99_us"] > 0, timeout=10)
    figures = stats(client)
    for p in (50, 99):
        assert 0 < figures[f"prefetch_engine_arrived_p{p}_us"] <= figures[f"prefetch_engine_answered_p{p}_us"]
        assert figures[f"prefetch_engine_answer_read_p{p}_us"] > 0  # (OBL's prefetches came back)
    assert client.execute_command("PREDIS", "AB", "RESET") == b"OK"
    assert all(arm["gets"] == 0 for arm in ab(client)["arms"])
    # The proxy's own per-arm figures start again too.
    assert all(arm["prefetch_fills"] == 0 and arm["prefetched_hits"] == 0 for arm in ab(client)["arms"])
    assert all(arm["prediction_p99_us"] == 0.0 for arm in ab(client)["arms"])  # (no samples yet)
    # (the engine's too, and the proxy's reading of its answers)
    wait_for(lambda: stats(client)["prefetch_engine_answered_p99_us"] == 0.0, timeout=10)
    assert stats(client)["prefetch_engine_answer_read_p99_us"] == 0.0


@pytest.mark.parametrize("recording", [False, True])
def test_an_engine_held_to_its_cpu_share_sheds_and_is_never_taken_for_stalled(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, tmp_path: Any, recording: bool
) -> None:
    """``prefetch_engine_cpu``: an engine held to 1% of a core, under more reads than that pays
    for, pauses (counted in seconds) and says so; the proxy sheds the reads that come meanwhile
    and serves every read right all along; a pause is not a stall (the engine is never restarted
    for it). Recording reads, it never pauses: every read reaches the access log, and the engine
    sheds what it has no share left to predict from."""
    keys = [f"cpu:{i}" for i in range(2_000)]
    direct.mset({key: f"value-{key}" for key in keys})
    extra = {"access_log_dir": str(tmp_path / "alog")} if recording else {}
    # (normal priority, no staleness bound: what is checked must not depend on how fast the
    # engine gets the CPU here, only on the share it is held to)
    proxy = make_proxy(redis_server.url, prefetch="markov", prefetch_engine_cpu=0.01, **UNHURRIED, **extra)
    prediction = proxy.server.prediction
    wait_for(lambda: proxy.server.tier.active and prediction.ready, timeout=30)
    client = proxy.client()

    def shed_as_it_should() -> bool:
        figures = prediction.figures()
        if recording:  # (the engine's shedding: its share spent)
            return bool(figures["predict_shed"])
        return figures["engine_paused_seconds"] > 0 and sum(prediction.shed_gets) > 0

    # Reads until it has: Markov's work per read is far over 1% of the time the proxy takes to
    # serve it, on any machine, so the loop ends long before its bound.
    for _ in range(100):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        assert pipe.execute() == [f"value-{key}".encode() for key in keys]
        if shed_as_it_should():
            break
    figures = prediction.figures()
    assert shed_as_it_should(), {k: v for k, v in figures.items() if "engine" in k or "shed" in k}
    assert figures["engine_cpu_seconds"] > 0
    if recording:  # every read sent, none shed unsent, each recorded
        assert figures["engine_paused_seconds"] == 0 and sum(prediction.shed_gets) == 0
        wait_for(
            lambda: prediction.figures()["access_log_recorded"] == prediction.figures()["records"],
            timeout=20,
        )
    assert stats(client)["prefetch_engine_cpu_seconds"] > 0  # (STATS and INFO show the figures)
    figures = prediction.figures()
    assert figures["engine_starts"] == 1 and figures["fallback_engine_stalled"] == 0


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_dead_or_stalled_engine_is_counted_restarted_and_never_stops_the_proxy(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, fault: str
) -> None:
    direct.mset({f"seq:{i}": f"value-{i}" for i in range(N)})
    proxy = make_proxy(redis_server.url, prefetch="obl:k=2:depth=4", **UNHURRIED)
    prediction = proxy.server.prediction
    wait_for(lambda: proxy.server.tier.active and prediction.ready, timeout=30)
    if fault == "stop":
        prediction.stall_after = 0.5  # (found only then: a live engine is never killed for it here)
    pid = prediction.proc.pid
    client = proxy.client()
    os.kill(pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    try:
        # Served all along, correct, while the engine is gone (its records are shed).
        assert scan(client, 100) == [f"value-{i}".encode() for i in range(100)]
        reason = "fallback_engine_died" if fault == "kill" else "fallback_engine_stalled"
        wait_for(lambda: prediction.figures()[reason] == 1, timeout=10)
        wait_for(lambda: prediction.ready and prediction.proc.pid != pid, timeout=20)
    finally:
        if fault == "stop":
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    figures = prediction.figures()
    assert figures["engine_starts"] == 2 and figures["engine_up"] == 1
    # Prefetching again: in a scan of keys not yet read, each next key comes in before its read.
    tier = proxy.server.tier
    before = tier.prefetched_hits
    for i in range(100, 120):
        assert client.get(f"seq:{i}") == f"value-{i}".encode()
        if i >= 103:
            wait_for(lambda i=i: (0, b"seq:%d" % (i + 1)) in tier.entries, timeout=10)
    assert tier.prefetched_hits > before
    # The arm's figures are every read the proxy served: those shed or lost with the dead engine
    # and those of the new one, which counts from nothing (they used to be the new one's only).
    wait_for(lambda: prediction.arm_figures()[0]["gets"] == 120, timeout=10)
    arm = prediction.arm_figures()[0]
    assert arm["hits"] + arm["misses"] == 120 and arm["hits"] >= 16, arm


def test_predis_replay_drives_an_ab_proxy_and_reports(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, tmp_path: Any
) -> None:
    """predis replay loads the log's values, replays it through the proxy and prints the A/B
    report; against plain Redis it reports its own figures only."""
    log = tmp_path / "web.parquet"
    predis("gen", "web", "-n", "3000", "--seed", "4", "-o", str(log))
    proxy = make_proxy(redis_server.url, ab="M=markov,N=none", ab_seed=1, **UNHURRIED)
    wait_for(lambda: proxy.server.tier.active and proxy.server.prediction.ready, timeout=30)
    result = json.loads(
        predis("replay", str(log), "--port", str(proxy.port), "--max", "--load-values", "--json")
    )
    assert result["requests"] == 3000 and result["errors"] == 0
    arms = {arm["name"]: arm for arm in result["ab"]["arms"]}
    gets = sum(1 for op in read_log(log).column("op") if op == "GET")
    assert arms["M"]["gets"] + arms["N"]["gets"] == gets  # every GET of the replay, in one arm
    # Each arm's GET latency as the replaying client saw it (the proxy's report names the split).
    assert all(0 < arm["get_p50_us"] <= arm["get_p99_us"] for arm in arms.values())
    assert result["ab"]["split"] == {"shares": [0.5, 0.5], "seed": 1}
    assert direct.get(next(iter(direct.scan_iter(count=10)))) is not None  # (values were loaded)
    # predis ab prints the same report, as JSON or as INFO's section.
    report = json.loads(predis("ab", "--port", str(proxy.port), "--json"))
    assert [a["gets"] for a in report["arms"]] == [a["gets"] for a in result["ab"]["arms"]]
    text = predis("ab", "--port", str(proxy.port))
    assert text.startswith("# Predis A/B") and "chi2_p" in text
    # --plot: each arm's hit ratio over the replay, sampled from PREDIS AB, as a PNG.
    out = predis(
        "replay", str(log), "--port", str(proxy.port), "--rate", "3000", "--plot", str(tmp_path / "p")
    )
    png = tmp_path / "p" / "web-ab-hit-ratio.png"
    assert f"wrote {png}" in out and png.read_bytes().startswith(b"\x89PNG")
    plain = predis("replay", str(log), "--port", str(redis_server.port), "--max", "--limit", "500")
    assert "500 requests" in plain and "A/B" not in plain


def predis(*args: str) -> str:
    """``predis ARGS`` in a subprocess; its standard output."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=120, check=True
    )
    return run.stdout


def test_the_model_prefetches_keys_never_read_here_and_falls_back_when_it_cannot_load(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, planted_model: Any, tmp_path: Any
) -> None:
    """``--prefetch ml:DIR``: the model names each next key of the cycle it was trained on the
    first time the proxy sees the cycle (no heuristic can: none has seen a transition), so each
    comes into the tier before its read, with Redis's value. Then the model is deleted and the
    engine killed: the restarted engine cannot load it, counts that, and the arm goes on as its
    fallback heuristic while the proxy serves."""
    import shutil

    from tests.helpers import CYCLE

    model = tmp_path / "model"
    shutil.copytree(planted_model, model)
    direct.mset({key: f"v-{key}" for key in CYCLE})
    # (The gate pinned: for a tier that holds the whole 12-key cycle, training found the model adds
    # nothing and recorded its gate as off, which the engine would take once the proxy tells it the
    # tier's size.)
    spec = f"ml:{model}::min_confidence=0.5"
    proxy = make_proxy(redis_server.url, prefetch=spec, prefetch_device="cpu", **UNHURRIED)
    prediction = proxy.server.prediction
    wait_for(lambda: proxy.server.tier.active and prediction.ready, timeout=120)  # (torch's import)
    client = proxy.client()
    tier = proxy.server.tier
    for i, key in enumerate(CYCLE):
        assert client.get(key) == f"v-{key}".encode()
        if i < len(CYCLE) - 1:
            wait_for(lambda i=i: (0, CYCLE[i + 1].encode()) in tier.entries, timeout=30)
    assert tier.prefetched_hits >= len(CYCLE) - 1
    # (the proxy counts the arm's GETs as it sends them; the engine's report follows its steps)
    wait_for(lambda: ab(client)["arms"][0]["predictor"]["model_reads"] == len(CYCLE), timeout=10)
    (arm,) = ab(client)["arms"]
    assert arm["predictor"]["model"] == "loaded" and arm["gets"] == len(CYCLE)
    assert arm["predictor"]["fallbacks"] == {"model_load": 0, "model_error": 0}
    sha = json.loads((model / "manifest.json").read_text())["weights_sha256"]
    assert arm["predictor"]["model_version"] == f"model@{sha[:12]}"  # (which model serves)
    # INFO's section flattens the model's own figures into k=v pairs redis-py's reader parses.
    info = client.info()["arm_prefetch"]
    assert info["predictor_model"] == "loaded" and info["predictor_fallbacks_model_load"] == 0

    shutil.rmtree(model)
    pid = prediction.proc.pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: prediction.ready and prediction.proc.pid != pid, timeout=120)
    assert [client.get(key) for key in CYCLE] == [f"v-{key}".encode() for key in CYCLE]
    # (both engines' reads: the proxy counts them)
    wait_for(lambda: ab(client)["arms"][0]["gets"] == 2 * len(CYCLE), timeout=10)
    (arm,) = ab(client)["arms"]
    assert arm["predictor"]["model"] == "failed" and arm["predictor"]["fallbacks"]["model_load"] == 1
    assert "no such model directory" in arm["predictor"]["load_error"]
    assert prediction.figures()["fallback_engine_died"] == 1


def test_hints_fetch_on_the_read_itself_without_waiting_for_the_engine(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    """What the engine named after a key (its hint) is fetched by the proxy when the key is read
    again, without the engine: here it is stopped (SIGSTOP) and the hinted keys still come in,
    within the arm's token budget, with Redis's current values."""
    direct.mset({f"seq:{i}": f"value-{i}" for i in range(N)})
    proxy = make_proxy(redis_server.url, prefetch="obl:k=2:depth=4", **UNHURRIED)
    prediction = proxy.server.prediction
    wait_for(lambda: proxy.server.tier.active and prediction.ready, timeout=30)
    client = proxy.client()
    tier = proxy.server.tier
    scan(client, 60)
    wait_for(lambda: all((0, b"seq:%d" % i) in prediction.hints for i in range(5, 55)), timeout=20)
    assert (b"seq:21" in prediction.hints[(0, b"seq:20")]) and len(prediction.hints[(0, b"seq:20")]) <= 2
    # New values, written directly: tracking drops the tier's copies.
    direct.mset({f"seq:{i}": f"new-{i}" for i in range(60)})
    # (The keys read below: far from the scan's end, none has a prefetch still on its way.)
    used = [b"seq:%d" % i for j in (20, 30, 40) for i in (j, j + 1)]
    wait_for(lambda: not any((0, key) in tier.entries for key in used), timeout=10)
    pid = prediction.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        before = sum(prediction.hinted)
        for i in (20, 30, 40):
            assert client.get(f"seq:{i}") == f"new-{i}".encode()
            wait_for(lambda i=i: (0, b"seq:%d" % (i + 1)) in tier.entries, timeout=10)
            assert client.get(f"seq:{i + 1}") == f"new-{i + 1}".encode()  # (served from the tier)
        assert sum(prediction.hinted) > before and tier.prefetched_hits >= 3
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # (killed meanwhile as stalled, and restarted)


def test_with_hints_off_a_miss_reads_only_its_own_key(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    """``prefetch_hints = false``: the engine's prefetches still come in, but the proxy keeps no
    hints, so a miss with the engine stopped brings in nothing beside its own key."""
    direct.mset({f"seq:{i}": f"value-{i}" for i in range(N)})
    proxy = make_proxy(redis_server.url, prefetch="obl:k=2:depth=4", prefetch_hints=False, **UNHURRIED)
    prediction = proxy.server.prediction
    wait_for(lambda: proxy.server.tier.active and prediction.ready, timeout=30)
    client = proxy.client()
    tier = proxy.server.tier
    scan(client, 60)
    # The engine answered the scan's last reads (a key after it, never read, is in: its prefetch),
    # and the hints it sent with its answers were dropped.
    wait_for(lambda: (0, b"seq:60") in tier.entries, timeout=20)
    assert not prediction.hints
    direct.mset({f"seq:{i}": f"new-{i}" for i in range(60)})
    wait_for(lambda: not any((0, b"seq:%d" % i) in tier.entries for i in (20, 21)), timeout=10)
    pid = prediction.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        misses = tier.misses
        assert client.get("seq:20") == b"new-20"
        assert client.get("seq:21") == b"new-21"  # (not hinted: a miss too)
        assert tier.misses == misses + 2 and sum(prediction.hinted) == 0
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # (killed meanwhile as stalled, and restarted)


def test_prefetches_read_as_the_reading_client_and_serve_it(
    make_proxy: Any, redis_server: Any, direct: redis.Redis
) -> None:
    """A client logged in as an ACL user: what is prefetched for its reads (by the engine, and on
    hints) is read as that user, so the entries are that user's and its next reads hit them (an
    entry is served to its user only); a user without the right to the keys gets Redis's refusal,
    never a prefetched value."""
    direct.acl_setuser("alice", enabled=True, passwords=["+a"], keys=["seq:*"], commands=["+@all"])
    direct.acl_setuser("bob", enabled=True, passwords=["+b"], keys=["other:*"], commands=["+@all"])
    direct.mset({f"seq:{i}": f"value-{i}" for i in range(N)})
    proxy = make_proxy(redis_server.url, prefetch="obl:k=2:depth=4", **UNHURRIED)
    prediction = proxy.server.prediction
    wait_for(lambda: proxy.server.tier.active and prediction.ready, timeout=30)
    alice = proxy.client(username="alice", password="a")
    tier = proxy.server.tier
    for i in range(40):
        assert alice.get(f"seq:{i}") == f"value-{i}".encode()
        if 3 <= i < 39:
            wait_for(lambda i=i: (0, b"seq:%d" % (i + 1)) in tier.entries, timeout=10)
            assert tier.entries[(0, b"seq:%d" % (i + 1))].user == "alice"
    assert tier.prefetched_hits >= 35  # (alice's reads hit alice's prefetched entries)
    bob = proxy.client(username="bob", password="b")
    with pytest.raises(redis.exceptions.NoPermissionError):
        bob.get("seq:39")


@pytest.mark.parametrize("rules", [True, False], ids=["rules", "rules-off"])
def test_the_models_template_rules_fetch_keys_never_seen_on_their_miss(
    make_proxy: Any, redis_server: Any, direct: redis.Redis, profiles_model: Any, rules: bool
) -> None:
    """A model that names user:N:orders after user:N:profile (its template, filled with the
    profile's number) teaches the proxy that rule; a miss of a profile never read before then
    reads its orders key beside it, without the engine (stopped here), with Redis's value. With
    ``prefetch_rules = false`` the proxy keeps no rule and the orders key misses."""
    direct.mset({f"user:{n}:{part}": f"{part}-{n}" for n in range(10_000) for part in ("profile", "orders")})
    spec = f"ml:{profiles_model}::min_confidence=0.5"
    proxy = make_proxy(
        redis_server.url, prefetch=spec, prefetch_device="cpu", prefetch_rules=rules, **UNHURRIED
    )
    prediction = proxy.server.prediction
    wait_for(lambda: proxy.server.tier.active and prediction.ready, timeout=120)
    client = proxy.client()
    tier = proxy.server.tier
    for n in range(40):
        client.get(f"user:{n}:profile")
        client.get(f"user:{n}:orders")
    if not rules:
        # The engine has answered the last reads (their hints are in): rules it taught are dropped.
        wait_for(lambda: (0, b"user:39:profile") in prediction.hints, timeout=30)
        assert not prediction.rules
        pid = prediction.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            misses = tier.misses
            assert client.get("user:5000:profile") == b"profile-5000"
            assert client.get("user:5000:orders") == b"orders-5000"
            assert tier.misses == misses + 2 and prediction.ruled == 0
        finally:
            os.kill(pid, signal.SIGCONT)
        return
    wait_for(lambda: (0, b"user:#:orders") in prediction.rules.get(b"user:#:profile", []), timeout=30)
    pid = prediction.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        ruled = prediction.ruled
        for n in (5_000, 6_000, 7_000):  # never read here, nor in training's numbers (0-2,999)
            assert client.get(f"user:{n}:profile") == f"profile-{n}".encode()
            wait_for(lambda n=n: (0, b"user:%d:orders" % n) in tier.entries, timeout=10)
            assert client.get(f"user:{n}:orders") == f"orders-{n}".encode()  # (from the tier)
        assert prediction.ruled >= ruled + 3
        assert prediction.figures()["prefetch_rules"] >= 1
        taught = {"arm": "prefetch", "from": "user:#:profile", "to": "user:#:orders"}
        assert taught in prediction.ab()["rules"]
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # (killed meanwhile as stalled, and restarted)


def test_what_the_ab_reports_import_is_imported_before_the_proxy_serves(redis_server: Any) -> None:
    """scipy.stats takes most of a second to import; the first A/B report used to import it on
    the event loop, which stalled every client for 0.9 s a few seconds after the proxy started."""
    import subprocess
    import sys

    script = f"""
import asyncio, sys
from proxy.config import Settings
from proxy.server import ProxyServer

async def main():
    settings = Settings(upstream={redis_server.url!r}, port=0, hot_tier="cpu", prefetch="markov").validate()
    server = ProxyServer(settings)
    before = "scipy.stats" in sys.modules
    await server.start()
    after = "scipy.stats" in sys.modules
    await server.close()
    print(before, after)

asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.splitlines()[-1] == "False True", out.stdout + out.stderr  # (after its log lines)
