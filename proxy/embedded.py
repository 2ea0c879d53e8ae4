"""Start and stop a local redis-server child (the proxy's embedded upstream and the tests' fixture),
or a local Redis Cluster of them (the cluster tests' and benchmarks')."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common.errors import ConfigError, UpstreamError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process on a free loopback port, in a private working directory."""

    def __init__(
        self,
        binary: str = "redis-server",
        port: int | None = None,
        extra_args: list[str] | None = None,
        workdir: str | Path | None = None,
    ) -> None:
        path = shutil.which(binary)
        if path is None:
            raise ConfigError(
                f"{binary} not found on PATH: install Redis (apt-get install redis-server) "
                "or pass --upstream redis://HOST:PORT"
            )
        self.binary = path
        self.port = port or free_port()
        self.extra_args = list(extra_args or [])
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="predis-redis-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            "--logfile",
            str(self.workdir / "redis.log"),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UpstreamError(f"redis-server exited at start: {self.log_tail()}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise UpstreamError(f"redis-server did not answer PING within {timeout}s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
                # NOAUTH also proves the server is up and serving.
                return reply.startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.workdir / "redis.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def cluster_node(work: Path, node_timeout_ms: int = 2_000, extra: list[str] | None = None) -> EmbeddedRedis:
    """A cluster-mode redis-server in ``work`` (``extra``: more of its flags, TLS's say)."""
    return EmbeddedRedis(
        port=cluster_port(),
        extra_args=[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(work / "nodes.conf"),
            "--cluster-node-timeout",
            str(node_timeout_ms),
            *(extra or []),
        ],
        workdir=work,
    ).start()


class EmbeddedCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, on loopback ports
    under ``root``, created with ``redis-cli --cluster create``; ready once every node says
    cluster_state:ok and every replica has synced (one that never synced stands for no election)."""

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
            self._wait(lambda: all(b"cluster_state:ok" in self.ask(n, "CLUSTER", "INFO") for n in self.nodes))
            self._wait(lambda: all(self.synced(n) for n in self.nodes))
            # (...and every node's CLUSTER SLOTS lists them: gossip takes a few seconds.)
            self._wait(lambda: all(self.lists_replicas(n, replicas) for n in self.nodes))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _wait(ready: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise UpstreamError("the local Redis Cluster did not come up")
            time.sleep(0.05)

    @staticmethod
    def ask(node: EmbeddedRedis, *args: str) -> Any:
        """One command to one node (hiredis-decoded; b"" when it cannot be reached)."""
        import hiredis

        try:
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
                s.sendall(
                    b"".join(
                        [b"*%d\r\n" % len(args)] + [b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args]
                    )
                )
                reader = hiredis.Reader()
                while (reply := reader.gets()) is False:
                    data = s.recv(1 << 16)
                    if not data:
                        return b""
                    reader.feed(data)
                return reply
        except OSError:
            return b""

    def synced(self, node: EmbeddedRedis) -> bool:
        info = self.ask(node, "INFO", "replication")
        return b"role:master" in info or b"master_link_status:up" in info

    def lists_replicas(self, node: EmbeddedRedis, replicas: int) -> bool:
        slots = self.ask(node, "CLUSTER", "SLOTS")
        return bool(slots) and all(len(entry) - 2 == 1 + replicas for entry in slots)

    def masters(self) -> list[EmbeddedRedis]:
        return [n for n in self.nodes if (role := self.ask(n, "ROLE")) and role[0] == b"master"]

    def node_of(self, key: bytes) -> EmbeddedRedis:
        """The master serving ``key``'s slot now."""
        first = next(n for n in self.nodes if n.process is not None and n.process.poll() is None)
        return self.node_of_slot(int(self.ask(first, "CLUSTER", "KEYSLOT", key.decode())))

    def node_of_slot(self, slot: int) -> EmbeddedRedis:
        """The master serving ``slot`` now."""
        first = next(n for n in self.nodes if n.process is not None and n.process.poll() is None)
        for entry in self.ask(first, "CLUSTER", "SLOTS"):
            if entry[0] <= slot <= entry[1]:
                return next(n for n in self.nodes if n.port == int(entry[2][1]))
        raise LookupError(slot)

    @property
    def url(self) -> str:
        """The proxy's upstream URL, naming two of the nodes as seeds."""
        return "redis-cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def close(self) -> None:
        for node in self.nodes:
            node.close()
