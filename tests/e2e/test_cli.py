"""The `predis` command: serve with an embedded Redis, stats, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from proxy.embedded import free_port

PREDIS = [sys.executable, "-m", "proxy.cli"]


def test_serve_embedded_then_stats_and_clean_exit(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*PREDIS, "serve", "--port", str(port), "--log-format", "json"], stderr=subprocess.PIPE, text=True
    )
    try:
        r = redis.Redis(port=port, protocol=2)
        deadline = time.monotonic() + 15
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert r.set("x", "1") and r.get("x") == b"1"
        out = subprocess.run(
            [*PREDIS, "stats", "--port", str(port), "--json"], capture_output=True, text=True, timeout=20
        )
        figures = json.loads(out.stdout)
        assert figures["commands_forwarded"] >= 2 and figures["upstream_address"].startswith(
            "redis://127.0.0.1:"
        )
        text = subprocess.run(
            [*PREDIS, "stats", "--port", str(port)], capture_output=True, text=True, timeout=20
        )
        assert text.stdout.startswith("# Predis\n")
        embedded_port = int(figures["upstream_address"].rsplit(":", 1)[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(line["event"] == "predis listening" for line in lines)
    # The embedded redis-server went with it.
    try:
        redis.Redis(port=embedded_port, socket_connect_timeout=0.5).ping()
        raise AssertionError("embedded redis-server still running")
    except redis.ConnectionError:
        pass


def run_predis(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PREDIS, *args], capture_output=True, text=True, timeout=20, env={**os.environ, **(env or {})}
    )


def test_bad_input_exits_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = 'x'\n")
    cases: list[tuple[tuple[str, ...], dict[str, str] | None, str]] = [
        (("serve", "--config", str(bad)), None, "port must be int"),
        (("serve", "--upstream", "http://nope"), None, "must start with redis://"),
        (("serve", "--log-level", "loud"), None, "log_level must be one of"),
        (("serve",), {"PREDIS_REDIS_SERVER": "no-such-redis-binary"}, "no-such-redis-binary not found"),
        (("stats", "--port", str(free_port())), None, "cannot reach a proxy"),
        (("serve", "--port", "x"), None, "predis serve: argument --port: invalid int value"),
        (("serve", "--prefetch", "bogus"), None, "unknown prefetcher 'bogus'"),
        (("serve", "--prefetch", "markov:order=x"), None, "prefetcher markov has no parameter 'order'"),
        (("serve", "--ab", "A=markov"), None, "an A/B test needs at least two arms"),
        (("serve", "--ab", "A=markov,B=pg", "--ab-shares", "50"), None, "one positive share per arm"),
        (("serve", "--prefetch", "obl", "--hot-tier", "off"), None, "needs the hot tier"),
        (("serve", "--prefetch", "ml:/nonexistent/model"), None, "no such model directory"),
        (("serve", "--ab", "A=ml:/nonexistent/m::device=tpu,B=pg"), None, "device must be auto, cpu or cuda"),
        (("serve", "--prefetch", "ml:/x::gate=1"), None, "the ml arm has no parameter 'gate'"),
        (("serve", "--prefetch", "markov", "--device", "tpu"), None, "invalid choice: 'tpu'"),
        (
            ("nope",),
            None,
            "unknown command 'nope'; commands: serve, stats, ab, gen, trace, sim, train, retrain, model, replay",
        ),
        (("serve", "--admin", "localhost:x"), None, "admin address must be [HOST:]PORT"),
        (("serve", "--workers", "many"), None, "--workers must be a number or auto"),
        (("serve", "--workers", "0"), None, "--workers must be at least 1"),
        (("serve", "--workers", "2", "--admin", "0"), None, "needs a port of its own"),
        (("serve", "--upstream-pool", "-1"), None, "upstream_pool must be 0"),
        (
            ("serve", "--access-log-dir", "/tmp", "--access-log-sample", "2"),
            None,
            "access_log_sample must be in",
        ),
        (("retrain", "--logs", "/nonexistent/logs", "--registry", "/tmp/r"), None, "no such directory"),
        (("model", "list", "--registry", "/nonexistent/registry"), None, "no model versions"),
        (("model", "undo", "--registry", "/tmp"), None, "invalid choice: 'undo'"),
    ]
    # (the commands run a few at a time: each is a Python start-up, most of a second)
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda case: run_predis(*case[0], env=case[1]), cases))
    for (args, _, needle), out in zip(cases, runs, strict=True):
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, out.stderr)


def test_gpu_tier_without_cupy_is_one_line() -> None:
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("CuPy is present: the refusal cannot be shown on this machine")
    out = run_predis("serve", "--hot-tier", "gpu", "--port", str(free_port()))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "--hot-tier gpu needs CuPy" in lines[0], out.stderr


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    for workers in ("1", "2"):
        with socket_listening() as port:
            out = run_predis(
                "serve", "--port", str(port), "--upstream", "redis://127.0.0.1:1", "--workers", workers
            )
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
        assert "cannot listen on 127.0.0.1" in out.stderr


class socket_listening:
    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_a_corrupt_model_stops_serve_with_one_line(tmp_path: Path, planted_model: Path) -> None:
    """The proxy checks a model arm's directory at start (manifest, format, the weights' checksum)
    without loading torch; a truncated model stops it with one line, as `predis sim` does."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(planted_model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = run_predis("serve", "--prefetch", f"ml:{model}", "--port", str(free_port()))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "does not match its manifest" in lines[0], out.stderr
