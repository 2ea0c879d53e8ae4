"""A local Redis Cluster of real redis-server processes, for the tests (and ``bench/``): masters
and replicas on loopback ports, created with ``redis-cli --cluster create``."""

from __future__ import annotations

import random
import socket
import subprocess
from pathlib import Path

import redis

from proxy.embedded import EmbeddedRedis
from tests.helpers import wait_for


def cluster_port() -> int:
    """A free port under 55536 whose cluster bus port (10,000 higher) is free too: cluster-mode
    redis-server refuses a higher one."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 45_000)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def cluster_node(work: Path, node_timeout_ms: int = 2_000) -> EmbeddedRedis:
    return EmbeddedRedis(
        port=cluster_port(),
        extra_args=[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(work / "nodes.conf"),
            "--cluster-node-timeout",
            str(node_timeout_ms),
        ],
        workdir=work,
    ).start()


class LocalCluster:
    """``masters`` masters with ``replicas`` replicas each; ``seeds`` for the proxy's URL."""

    def __init__(self, root: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2_000) -> None:
        self.nodes: list[EmbeddedRedis] = []
        try:
            for i in range((1 + replicas) * masters):
                work = root / f"node-{i}"
                work.mkdir(parents=True, exist_ok=True)
                self.nodes.append(cluster_node(work, node_timeout_ms))
            subprocess.run(
                ["redis-cli", "--cluster", "create"]
                + [f"127.0.0.1:{n.port}" for n in self.nodes]
                + ["--cluster-replicas", str(replicas), "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            wait_for(lambda: all(self.state_ok(n) for n in self.nodes), 60)
            # (A replica that never synced will not stand for election: a failover test needs them all up.)
            wait_for(lambda: all(self.synced(n) for n in self.nodes), 60)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def state_ok(node: EmbeddedRedis) -> bool:
        try:
            client = redis.Redis(port=node.port, socket_timeout=5)
            return b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return False

    @staticmethod
    def synced(node: EmbeddedRedis) -> bool:
        info = redis.Redis(port=node.port, socket_timeout=5).info("replication")
        return info["role"] == "master" or info.get("master_link_status") == "up"

    @property
    def url(self) -> str:
        return "redis-cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=10)

    def node_of(self, key: bytes) -> EmbeddedRedis:
        """The master serving ``key``'s slot now."""
        slot = int(redis.Redis(port=self.nodes[0].port).execute_command("CLUSTER", "KEYSLOT", key))
        for entry in redis.Redis(port=self.nodes[0].port).execute_command("CLUSTER", "SLOTS"):
            if entry[0] <= slot <= entry[1]:
                port = int(entry[2][1])
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(slot)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
