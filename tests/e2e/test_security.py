"""Security: TLS on both sides with Redis's option names, tested against a redis-server serving
TLS and with redis-cli --tls; the commands that change the proxy allowed only to the configured ACL
users; the admin listener's bearer token.

Certificates come from the openssl command, made for the test: a CA, the servers' certificate (for
127.0.0.1 and localhost) and a client certificate, all signed by it, and a second CA that signed
nothing here."""

from __future__ import annotations

import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.tlsbench import client_flags, make_certs, server_flags
from common.errors import ConfigError
from proxy.config import Settings
from proxy.embedded import EmbeddedRedis, free_port
from proxy.resp import encode_command
from tests.helpers import no_retry, read_frames, wait_for


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    assert shutil.which("openssl"), "the openssl command (scripts/setup.sh installs it)"
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_redis(certs: dict[str, str]) -> Any:
    """redis-server with a TLS port that requires client certificates (its plain port stays for
    the test's own checks)."""
    port = free_port()
    with EmbeddedRedis(extra_args=[*server_flags(certs, port), "--tls-auth-clients", "yes"]) as server:
        server.tls_port = port  # type: ignore[attr-defined]
        yield server


def tls_client(
    port: int, certs: dict[str, str], cert: bool = True, ca: str = "ca_crt", **kwargs: Any
) -> redis.Redis:
    extra = {"ssl_certfile": certs["client_crt"], "ssl_keyfile": certs["client_key"]} if cert else {}
    extra.update(kwargs)
    return redis.Redis(
        port=port, ssl=True, ssl_ca_certs=certs[ca], ssl_cert_reqs="required", socket_timeout=10, **extra
    )


def test_tls_on_both_sides(make_proxy: Any, tls_redis: Any, certs: dict[str, str]) -> None:
    listen = free_port()
    proxy = make_proxy(
        f"rediss://127.0.0.1:{tls_redis.tls_port}",
        tls_port=listen,
        tls_cert_file=certs["server_crt"],
        tls_key_file=certs["server_key"],
        tls_ca_cert_file=certs["ca_crt"],
        tls_client_cert_file=certs["client_crt"],
        tls_client_key_file=certs["client_key"],
    )
    assert proxy.server.tls_address is not None and proxy.server.tls_address[1] == listen
    wait_for(lambda: proxy.server.tier.active, timeout=20)  # (its tracking connection is up, over TLS)
    client = tls_client(listen, certs)
    client.set("secret", "value")
    assert client.get("secret") == b"value"
    # The tier serves it once its fill (over TLS) lands.
    wait_for(
        lambda: client.get("secret") == b"value" and proxy.server.stats.snapshot()["hot_tier_hits"] >= 1,
        timeout=10,
    )
    # The write went to Redis (over TLS): the plain port sees it.
    assert redis.Redis(port=tls_redis.port).get("secret") == b"value"
    # A write straight to Redis invalidates the tier's copy (tracking over TLS).
    redis.Redis(port=tls_redis.port).set("secret", "changed")
    wait_for(lambda: client.get("secret") == b"changed", timeout=10)
    # redis-cli --tls, as an operator would.
    cli = subprocess.run(
        ["redis-cli", *client_flags(certs), "-p", str(listen), "GET", "secret"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0 and cli.stdout.strip() == "changed", cli.stderr
    # Plain TCP on its own port still works.
    assert proxy.client().get("secret") == b"changed"
    # A client without a certificate is refused (tls_auth_clients yes); one that does not trust
    # the proxy's CA refuses the proxy.
    with pytest.raises(redis.ConnectionError):
        tls_client(listen, certs, cert=False, **no_retry()).ping()
    with pytest.raises(redis.ConnectionError):
        tls_client(listen, certs, ca="other-ca_crt", **no_retry()).ping()


def test_a_rediss_upstream_is_verified(make_proxy: Any, tls_redis: Any, certs: dict[str, str]) -> None:
    # Against a CA that did not sign Redis's certificate: no connection is made; the client gets
    # an error, the health check says so, and the proxy itself stays up.
    proxy = make_proxy(
        f"rediss://127.0.0.1:{tls_redis.tls_port}",
        tls_ca_cert_file=certs["other-ca_crt"],
        tls_client_cert_file=certs["client_crt"],
        tls_client_key_file=certs["client_key"],
        hot_tier="off",
    )
    with pytest.raises(redis.RedisError):
        proxy.client().get("secret")
    wait_for(lambda: proxy.server.stats.upstream_status == "down", timeout=10)
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:  # (it answers what it can)
        s.sendall(encode_command([b"PREDIS", b"STATS"]))
        [stats] = read_frames(s, 1)
    assert b"upstream_status:down" in stats


def test_bad_tls_settings_are_one_line(certs: dict[str, str], tmp_path: Path) -> None:
    cases = [
        ({"tls_port": 7000}, "tls_port needs tls_cert_file and tls_key_file"),
        (
            {"tls_port": 7000, "tls_cert_file": certs["server_crt"], "tls_key_file": certs["server_key"]},
            "needs tls_ca_cert_file",
        ),
        ({"tls_cert_file": str(tmp_path / "none.crt")}, "tls_cert_file"),
        ({"tls_auth_clients": "maybe"}, "tls_auth_clients must be yes, optional or no"),
        ({"tls_client_cert_file": certs["client_crt"]}, "go together"),
        (
            {
                "upstream": "rediss://127.0.0.1:1",
                "tls_client_cert_file": certs["client_crt"],
                "tls_client_key_file": certs["server_key"],
            },  # fmt: skip
            "tls_client_cert_file",  # (a key that is not the certificate's)
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            Settings(**overrides).validate()
        assert "\n" not in str(info.value)


@pytest.fixture
def acl_redis() -> Any:
    """A Redis with two ACL users besides default: ops and app."""
    with EmbeddedRedis() as server:
        direct = redis.Redis(port=server.port)
        direct.execute_command("ACL", "SETUSER", "ops", "on", ">ops-pass", "~*", "&*", "+@all")
        direct.execute_command("ACL", "SETUSER", "app", "on", ">app-pass", "~*", "&*", "+@all")
        yield server


def test_admin_commands_only_for_admin_users(make_proxy: Any, acl_redis: Any) -> None:
    proxy = make_proxy(acl_redis.url, ab="A=obl,B=none", admin_users="ops")
    wait_for(lambda: proxy.server.prediction.ready, timeout=30)
    app = redis.Redis(port=proxy.port, username="app", password="app-pass")
    ops = redis.Redis(port=proxy.port, username="ops", password="ops-pass")
    anonymous = redis.Redis(port=proxy.port)
    for client, user in ((app, "app"), (anonymous, "default")):
        # (redis-py raises NOPERM replies as NoPermissionError, the word itself taken off)
        with pytest.raises(
            redis.exceptions.NoPermissionError, match=f"user '{user}' may not run PREDIS AB RESET"
        ):
            client.execute_command("PREDIS", "AB", "RESET")
        with pytest.raises(redis.exceptions.NoPermissionError, match="may not run PREDIS MODEL ROLLBACK"):
            client.execute_command("PREDIS", "MODEL", "ROLLBACK")
        assert client.execute_command("PREDIS", "AB")  # (reading the figures is for everyone)
    assert ops.execute_command("PREDIS", "AB", "RESET") == b"OK"
    # A failed AUTH as ops does not make a connection ops.
    bad = redis.Redis(port=proxy.port, username="ops", password="wrong", **no_retry())
    with pytest.raises(redis.AuthenticationError):
        bad.ping()


def test_admin_commands_need_redis_to_accept_the_connection(make_proxy: Any) -> None:
    """With Redis requiring a password and the upstream URL carrying none, a client that never
    authenticated is the default user only in name: it gets NOAUTH, as Redis would answer it."""
    with EmbeddedRedis(extra_args=["--requirepass", "s3cret"]) as locked:
        proxy = make_proxy(locked.url, hot_tier="off", health_interval=0.1)
        wait_for(lambda: proxy.server.stats.upstream_status == "error", timeout=10)
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as raw:
            raw.sendall(encode_command([b"PREDIS", b"AB", b"RESET"]))
            assert read_frames(raw, 1) == [b"-NOAUTH Authentication required.\r\n"]
        authed = redis.Redis(port=proxy.port, password="s3cret")
        with pytest.raises(redis.ResponseError, match="no A/B experiment"):  # (allowed: none runs)
            authed.execute_command("PREDIS", "AB", "RESET")


def test_admin_listener_token(make_proxy: Any, redis_server: Any) -> None:
    proxy = make_proxy(redis_server.url, admin="127.0.0.1:0", admin_token="t0ken")
    host, port = proxy.server.admin.address
    base = f"http://{host}:{port}"

    def get(path: str, token: str | None = None, query: bool = False) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token and not query else {}
        url = base + path + (f"?token={token}" if token and query else "")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    assert get("/metrics") == 401 and get("/metrics", "wrong") == 401 and get("/dashboard") == 401
    assert get("/metrics", "t0ken") == 200 and get("/dashboard", "t0ken", query=True) == 200
    assert get("/api/history", "t0ken", query=True) == 200
    assert get("/healthz") == 200  # (a load balancer has no token)
    assert proxy.server.admin.refused == 3


def test_the_admin_listener_is_on_loopback_unless_told_otherwise(make_proxy: Any, redis_server: Any) -> None:
    proxy = make_proxy(redis_server.url, admin="0")  # (a bare port)
    assert proxy.server.admin.address[0] == "127.0.0.1"


def test_a_redis_cluster_over_tls(make_proxy: Any, certs: dict[str, str], tmp_path: Path) -> None:
    """``rediss-cluster://``: every connection to the cluster's nodes is TLS, verified against the
    CA and presenting the client certificate; the slot map names the nodes' TLS ports (Redis gives
    them to a client that came over TLS), the tier's tracking works over them."""
    import subprocess

    from bench.tlsbench import client_flags
    from proxy.embedded import cluster_node, cluster_port

    nodes = []
    try:
        for i in range(3):
            work = tmp_path / f"node-{i}"
            work.mkdir()
            tls_port = cluster_port()  # (a TLS cluster's bus is 10,000 above its TLS port)
            tls = [*server_flags(certs, tls_port), "--tls-cluster", "yes", "--tls-replication", "yes"]
            node = cluster_node(work, extra=tls)
            node.tls_port = tls_port  # type: ignore[attr-defined]
            nodes.append(node)
        subprocess.run(
            ["redis-cli", *client_flags(certs), "--cluster", "create"]
            + [f"127.0.0.1:{n.tls_port}" for n in nodes]  # type: ignore[attr-defined]
            + ["--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        plain = [redis.Redis(port=n.port) for n in nodes]
        wait_for(lambda: all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for c in plain), 60)
        proxy = make_proxy(
            f"rediss-cluster://127.0.0.1:{nodes[0].tls_port}",  # type: ignore[attr-defined]
            tls_ca_cert_file=certs["ca_crt"],
            tls_client_cert_file=certs["client_crt"],
            tls_client_key_file=certs["client_key"],
        )
        wait_for(lambda: proxy.server.tier.active, 30)
        client = proxy.client()
        keys = [f"tls:{i}" for i in range(30)]
        assert client.mset({k: "v1" for k in keys}) is True
        assert client.mget(keys) == [b"v1"] * len(keys)
        held = {int(c.dbsize()) for c in plain}
        assert len(held) > 1 and 0 not in held  # (spread over every node)
        assert client.mget(keys) == [b"v1"] * len(keys)  # (now from the tier)
        direct = redis.RedisCluster(host="127.0.0.1", port=nodes[0].port)  # (over the plain ports)
        for k in keys:  # written straight to each key's node: its tracking reaches the tier
            direct.set(k, "v2")
        wait_for(lambda: client.mget(keys) == [b"v2"] * len(keys), 10)
        assert proxy.server.stats.snapshot()["upstream_errors"] == 0
    finally:
        for node in nodes:
            node.close()
