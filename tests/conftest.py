"""Fixtures: real redis-server processes on free ports, and the proxy on its own event loop thread."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from proxy.config import Settings
from proxy.embedded import EmbeddedRedis
from proxy.log import configure_logging
from proxy.server import ProxyServer, new_event_loop

configure_logging("warning")

# PREDIS_TEST_HOT_TIER=gpu gives every proxy the tests start with the default tier the GPU store
# instead (on a machine with CuPy and a GPU: bench/gpu_machine.sh runs the tier tests so).
TEST_HOT_TIER = os.environ.get("PREDIS_TEST_HOT_TIER", "cpu")
# PREDIS_TEST_UPSTREAM_POOL=0 gives every proxy the tests start with no upstream_pool of its own
# setting a connection per client (scripts/test runs the compatibility tests so too).
TEST_UPSTREAM_POOL = os.environ.get("PREDIS_TEST_UPSTREAM_POOL")


class RunningProxy:
    """A ProxyServer on a background thread's event loop (uvloop where installed)."""

    def __init__(self, settings: Settings, clock: Any = None, access: Any = None) -> None:
        self.loop = new_event_loop()
        self.server = ProxyServer(settings, access=access, **({"clock": clock} if clock is not None else {}))
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        host, port = self.call(self.server.start())
        self.host, self.port = host, port

    def call(self, coro: Any, timeout: float = 30) -> Any:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)
        except TimeoutError:
            faulthandler.dump_traceback()  # where the proxy's loop thread is stuck
            for task in asyncio.all_tasks(self.loop):
                task.print_stack()
            raise

    @property
    def stats(self) -> Any:
        return self.server.stats

    def client(self, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 20)
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    # DEBUG PROTOCOL (RESP3 pushes and attributes on demand) from loopback clients only.
    with EmbeddedRedis(extra_args=["--enable-debug-command", "local"]) as server:
        yield server


@pytest.fixture
def direct(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client straight to Redis; the server is flushed before each test."""
    client = redis.Redis(port=redis_server.port, socket_timeout=20)
    client.flushall()
    for user in client.acl_users():
        if user != b"default" and user != "default":
            client.acl_deluser(user)
    yield client
    client.close()


@pytest.fixture
def make_proxy() -> Iterator[Any]:
    proxies: list[RunningProxy] = []

    def make(upstream: str, clock: Any = None, access: Any = None, **overrides: Any) -> RunningProxy:
        """A proxy on ``upstream`` with these settings; ``clock``: its tier's (default monotonic);
        ``access``: its access sink (proxy.reads.AccessSink)."""
        if overrides.get("hot_tier", "cpu") == "cpu":
            overrides["hot_tier"] = TEST_HOT_TIER
        if TEST_UPSTREAM_POOL is not None:
            overrides.setdefault("upstream_pool", int(TEST_UPSTREAM_POOL))
        settings = Settings(upstream=upstream, port=0, **overrides).validate()
        proxy = RunningProxy(settings, clock, access)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def proxy(make_proxy: Any, redis_server: EmbeddedRedis, direct: redis.Redis) -> RunningProxy:
    return make_proxy(redis_server.url)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def planted_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A small model trained on the planted cycle (tests.helpers.CYCLE), for the live engine's tests."""
    pytest.importorskip("torch")
    from ml.training.train import train
    from tests.helpers import planted_log, small_training

    out = tmp_path_factory.mktemp("planted-model")
    train(
        planted_log(3000),
        out,
        small_training(epochs=10, patience=10, max_keys=64),
    )
    return out


@pytest.fixture(scope="session")
def profiles_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A small model trained on tests.helpers.profiles_log: it names the orders key by its template
    filled with the profile's number."""
    pytest.importorskip("torch")
    from ml.training.train import train
    from tests.helpers import profiles_log, small_training

    out = tmp_path_factory.mktemp("profiles-model")
    train(
        profiles_log(),
        out,
        small_training(epochs=16, patience=16, max_keys=8),
    )
    return out


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's chromium, driven by selenium through its chromedriver)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver (scripts/setup.sh installs them)"
    options = Options()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1100",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()
