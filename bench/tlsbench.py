"""TLS against plain TCP, side by side: redis-benchmark through the proxy's plain port and its TLS
port (same proxy, same run, interleaved rounds), and against Redis's own plain and TLS ports for
reference. Certificates are made for the run with the openssl command (a CA, a server and a
client certificate; clients present theirs: tls_auth_clients yes).

    python -m bench.tlsbench [--rounds 3] [--requests 100000] [--clients 50] [--pipeline 1]

Prints each round and the medians, and the TLS/plain ratio for GET and SET through the proxy and
directly.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.loadtest import ProxyProcess, redis_benchmark
from proxy.embedded import EmbeddedRedis, free_port


def make_certs(directory: Path) -> dict[str, str]:
    """A CA, and a server certificate (for 127.0.0.1 and localhost) and a client certificate it
    signed, plus a second CA that signed nothing; their paths by name (``ca_crt``, ``server_key``...)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=predis-test-{ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.crt")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt")  # fmt: skip
    return {p.stem + p.suffix.replace(".", "_"): str(p) for p in directory.iterdir()}


def server_flags(certs: dict[str, str], port: int) -> list[str]:
    """A TLS listener's flags: redis-server's and predis serve's are the same."""
    return ["--tls-port", str(port), "--tls-cert-file", certs["server_crt"], "--tls-key-file", certs["server_key"],
            "--tls-ca-cert-file", certs["ca_crt"]]  # fmt: skip


def client_flags(certs: dict[str, str]) -> list[str]:
    """A TLS client's flags presenting the client certificate: redis-cli's and redis-benchmark's."""
    return ["--tls", "--cacert", certs["ca_crt"], "--cert", certs["client_crt"], "--key", certs["client_key"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tlsbench", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pipeline", type=int, default=1)
    args = parser.parse_args(argv)
    certs = make_certs(Path(tempfile.mkdtemp(prefix="predis-tlsbench-")))
    tls_flags = client_flags(certs)
    redis_tls, proxy_tls = free_port(), free_port()
    results: dict[str, dict[str, list[float]]] = {}
    with EmbeddedRedis(extra_args=server_flags(certs, redis_tls)) as upstream:
        proxy = ProxyProcess(
            upstream.url,
            server_flags(certs, proxy_tls),
        )
        try:
            targets = {
                "proxy, plain": (proxy.port, []),
                "proxy, TLS": (proxy_tls, tls_flags),
                "redis, plain": (upstream.port, []),
                "redis, TLS": (redis_tls, tls_flags),
            }
            for r in range(args.rounds):
                for name, (port, extra) in targets.items():
                    runs = redis_benchmark(
                        port, "get,set", args.requests, args.clients, args.pipeline, 10_000, extra=extra
                    )
                    for run in runs:
                        results.setdefault(name, {}).setdefault(run.test, []).append(run.rps)
                    print(
                        f"round {r + 1} {name}: " + ", ".join(f"{x.test} {x.rps:,.0f}/s" for x in runs),
                        flush=True,
                    )
        finally:
            proxy.close()
    med = {name: {test: statistics.median(v) for test, v in tests.items()} for name, tests in results.items()}
    for who in ("proxy", "redis"):
        for test in ("GET", "SET"):
            plain, tls = med[f"{who}, plain"][test], med[f"{who}, TLS"][test]
            print(f"{who} {test}: plain {plain:,.0f}/s, TLS {tls:,.0f}/s, TLS/plain {tls / plain:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
