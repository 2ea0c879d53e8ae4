"""Network faults on the proxy-to-Redis link, with the history checker (bench.history): Redis runs in
a network namespace the test creates for itself, reached over a veth pair on private addresses
that exist only for the test; while the history runs (tier and live prefetching on), ``tc netem``
adds latency then loss on both ends of the link where the kernel has netem. Where it has not (the
dev machine's VM kernel), the same two phases are made otherwise: latency by a link starved of
bandwidth (``tc``'s token bucket, 1 Mbit/s, so requests queue), loss by ``iptables`` dropping 10%
of the packets on both ends at random (TCP retransmits); the test prints which ran. Then both ends
go down (a partition: packets lost, connections left open) and come back. Every run: no read through the
proxy older than a write through it acknowledged before the read began, no acknowledged write lost
(appendfsync always), errors only while the partition lasts, recovery by itself once it heals.

Needs root (namespaces, links and qdiscs) and iproute2's ``ip`` and ``tc``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.history import DIRECT, PROXIED, Workload, check
from proxy.embedded import free_port
from tests.helpers import wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"),
    reason="network namespaces, veth links and netem need root and iproute2",
)


IPTABLES = shutil.which("iptables") or ("/usr/sbin/iptables" if os.path.exists("/usr/sbin/iptables") else "")


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


class Link:
    """A namespace with one end of a veth pair; this side holds the other."""

    def __init__(self) -> None:
        n = os.getpid() % 250 + 1
        self.ns, self.outer, self.inner = f"predis-t{os.getpid()}", f"pdA{os.getpid()}", f"pdB{os.getpid()}"
        self.host, self.redis_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        sh("ip", "link", "set", self.inner, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.host}/30", "dev", self.outer)
        sh("ip", "link", "set", self.outer, "up")
        self.inside("ip", "addr", "add", f"{self.redis_ip}/30", "dev", self.inner)
        self.inside("ip", "link", "set", self.inner, "up")
        self.inside("ip", "link", "set", "lo", "up")

    def inside(self, *args: str) -> None:
        sh("ip", "netns", "exec", self.ns, *args)

    def netem(self, *spec: str) -> None:
        """The same netem on both ends of the link (no spec: none)."""
        for run, dev in ((sh, self.outer), (self.inside, self.inner)):
            if spec:
                run("tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec)
            else:
                run("tc", "qdisc", "del", "dev", dev, "root")

    def partition(self, cut: bool) -> None:
        """Both ends of the link down (packets go nowhere, connections stay open), or up again."""
        state = "down" if cut else "up"
        sh("ip", "link", "set", self.outer, state)
        self.inside("ip", "link", "set", self.inner, state)
        if not cut:
            sh("ip", "addr", "replace", f"{self.host}/30", "dev", self.outer)
            self.inside("ip", "addr", "replace", f"{self.redis_ip}/30", "dev", self.inner)

    def slow(self, on: bool) -> None:
        """Both ends starved of bandwidth (a token bucket of 1 Mbit/s: requests queue), or not."""
        for run, dev in ((sh, self.outer), (self.inside, self.inner)):
            if on:
                run(
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    "1mbit",
                    "burst",
                    "32kbit",
                    "latency",
                    "400ms",
                )
            else:
                run("tc", "qdisc", "del", "dev", dev, "root")

    def drop(self, on: bool) -> None:
        """10% of the packets leaving either end dropped at random (iptables' statistic match), or
        none. The host side's rule names the test's own interface only."""
        verb = "-A" if on else "-D"
        rule = ["-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP"]
        sh(IPTABLES, verb, "OUTPUT", "-o", self.outer, *rule)
        self.inside(IPTABLES, verb, "OUTPUT", "-o", self.inner, *rule)

    def has_netem(self) -> bool:
        """Whether this kernel has the netem qdisc (a VM's kernel may be built without it)."""
        tried = subprocess.run(
            ["tc", "qdisc", "replace", "dev", self.outer, "root", "netem", "delay", "1ms"],
            capture_output=True,
        )
        if tried.returncode == 0:
            sh("tc", "qdisc", "del", "dev", self.outer, "root")
        return tried.returncode == 0

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=30)


@pytest.fixture
def link() -> Iterator[Link]:
    made = Link()
    try:
        yield made
    finally:
        made.close()


def redis_in(link: Link, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            link.ns,
            "redis-server",
            "--bind",
            link.redis_ip,
            "--port",
            str(port),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--dir",
            str(workdir),
            "--protected-mode",  # (its address exists only between the test and its namespace)
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )

    def up() -> bool:
        try:
            socket.create_connection((link.redis_ip, port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_for(up, timeout=20)
    return proc, port


def test_history_through_a_partition_and_latency_and_loss_where_netem_is(
    make_proxy: Any, link: Link, tmp_path: Path
) -> None:
    netem = link.has_netem()
    phases: dict[str, tuple[float, float]] = {}  # name -> (start, end), the history's clock
    server, port = redis_in(link, tmp_path)
    try:
        proxy = make_proxy(
            f"redis://{link.redis_ip}:{port}",
            connect_timeout=0.5,
            command_timeout=1.0,
            health_interval=0.1,
            prefetch="markov",
            prefetch_engine_priority="normal",
        )
        wait_for(lambda: proxy.server.tier.active and proxy.server.prediction.ready, timeout=30)
        with Workload(proxy.port, port, redis_host=link.redis_ip) as load:
            wait_for(lambda: load.acked() >= 2_000, timeout=90)
            if netem:
                link.netem("delay", "20ms", "5ms")  # latency
                done = load.acked()
                wait_for(lambda: load.acked() >= done + 300, timeout=90)
                link.netem("delay", "5ms", "loss", "10%")  # loss: TCP retransmits
                done = load.acked()
                wait_for(lambda: load.acked() >= done + 300, timeout=90)
                link.netem()
            else:
                phases["quiet"] = _phase(load)
                link.slow(True)  # latency: a link starved of bandwidth
                phases["slow link"] = _phase(load)
                link.slow(False)
                if IPTABLES:
                    link.drop(True)  # loss: TCP retransmits
                    try:
                        phases["10% loss"] = _phase(load)
                    finally:
                        link.drop(False)
            errors = load.errors()
            link.partition(True)  # a partition, past the command timeout
            wait_for(lambda: load.errors() > errors + 4, timeout=90)
            link.partition(False)  # healed
            healed = load.acked()
            wait_for(lambda: load.acked() >= healed + 3_000, timeout=120)
        ops = load.history.ops
        values = redis.Redis(host=link.redis_ip, port=port).mget(PROXIED + DIRECT)
        final = {k: (None if v is None else int(v)) for k, v in zip(PROXIED + DIRECT, values, strict=True)}
        verdict = check(ops, final)
        made = (
            "netem" if netem else ("a token bucket and iptables" if IPTABLES else "a token bucket; no loss")
        )
        print(f"\nlink faults (latency and loss by {made}): " + json.dumps(verdict.summary()))
        for name, (start, end) in phases.items():  # (what each phase did to the operations)
            took = sorted(op.complete - op.invoke for op in ops if start <= op.invoke and op.complete <= end)
            if took:
                print(
                    f"  {name}: {len(took)} operations, p50 {1e3 * took[len(took) // 2]:.2f} ms, p99 {1e3 * took[int(0.99 * (len(took) - 1))]:.2f} ms"
                )
        assert verdict.stale == [], verdict.stale[:3]
        assert verdict.lost == [], verdict.lost[:3]
        assert verdict.errors > 0  # (the partition was seen, as errors)
        assert all(op.ok for op in ops[-1_000:])  # (recovered by itself)
    finally:
        server.terminate()
        server.wait(10)


def _phase(load: Workload, operations: int = 1_000) -> tuple[float, float]:
    """Runs until ``operations`` more writes are acknowledged; the span, on the history's clock."""
    start, done = time.monotonic(), load.acked()
    wait_for(lambda: load.acked() >= done + operations, timeout=90)
    return start, time.monotonic()


def unsent_towards(host: str, port: int) -> list[str]:
    """This side's TCP sockets towards ``host:port`` closed with bytes the peer has not acknowledged
    yet (FIN-WAIT-1 or CLOSING: the kernel still retransmits them)."""
    shown = subprocess.run(
        ["ss", "-Htn", "state", "fin-wait-1", "state", "closing"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in shown.splitlines() if f"{host}:{port}" in line]


def test_a_write_that_timed_out_in_a_partition_never_lands_after_it_heals(
    make_proxy: Any, link: Link, tmp_path: Path
) -> None:
    """The defect behind the history test's one stale read: the proxy gave up on a SET that the
    partition held (the client got an error), closed that upstream connection, and the kernel kept
    retransmitting the SET; it reached Redis after the link came back, over a newer write. The
    proxy now resets such a connection: once no socket towards Redis holds unsent bytes, Redis
    holds the newer value."""
    server, port = redis_in(link, tmp_path)
    try:
        proxy = make_proxy(
            f"redis://{link.redis_ip}:{port}", connect_timeout=0.5, command_timeout=0.5, health_interval=0.1
        )
        client = redis.Redis(port=proxy.port, socket_timeout=10)
        assert client.set("k", "before")  # (the client's upstream connection is up)
        link.partition(True)
        with pytest.raises(redis.ResponseError, match="did not reply within"):
            client.set("k", "timed-out")
        link.partition(False)
        wait_for(lambda: _set_through(client, "k", "newer"), timeout=30)
        wait_for(lambda: not unsent_towards(link.redis_ip, port), timeout=120)
        assert redis.Redis(host=link.redis_ip, port=port).get("k") == b"newer"
    finally:
        server.terminate()
        server.wait(10)


def _set_through(client: redis.Redis, key: str, value: str) -> bool:
    try:
        return bool(client.set(key, value))
    except redis.RedisError:
        return False


@pytest.mark.timeout(300)  # (a hang guard: filling the disk takes a while on a busy machine)
def test_history_while_the_access_log_s_disk_is_full(
    make_proxy: Any, redis_server: Any, tmp_path: Path
) -> None:
    """The recording proxy's access-log directory on a 16 KiB tmpfs the test mounts: the disk fills
    while the history runs; reads and writes go on without an error or a stale read, the recorder
    counts its failed writes, and records again once the disk has room (remounted larger)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk))
    try:
        proxy = make_proxy(
            redis_server.url,
            prefetch="markov",
            prefetch_engine_priority="normal",
            access_log_dir=str(disk / "log"),
            access_log_rotate_rows=500,
        )
        wait_for(lambda: proxy.server.tier.active and proxy.server.prediction.ready, timeout=30)
        figures = proxy.server.stats.snapshot
        with Workload(proxy.port, redis_server.port) as load:
            wait_for(lambda: figures().get("prefetch_access_log_write_errors", 0) > 0, timeout=120)
            full_at = load.acked()
            wait_for(lambda: load.acked() >= full_at + 1_500, timeout=90)  # (served while full)
            sh("mount", "-o", "remount,size=64m", str(disk))
            recorded = figures()["prefetch_access_log_recorded"]
            wait_for(lambda: figures()["prefetch_access_log_recorded"] > recorded + 1_000, timeout=90)
        ops = load.history.ops
        values = redis.Redis(port=redis_server.port).mget(PROXIED + DIRECT)
        final = {k: (None if v is None else int(v)) for k, v in zip(PROXIED + DIRECT, values, strict=True)}
        verdict = check(ops, final)
        print(
            "\ndisk full: "
            + json.dumps({**verdict.summary(), "log": figures()["prefetch_access_log_last_error"]})
        )
        assert verdict.stale == [] and verdict.lost == [] and verdict.errors == 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)
