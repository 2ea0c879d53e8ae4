"""TLS on both sides, with Redis's own option names: the listener's server context (its
certificate; clients' certificates checked against a CA as ``tls_auth_clients`` says) and a
``rediss://`` upstream's client context (the upstream's certificate and host name verified; a
client certificate presented if configured). A missing or unreadable file is one line naming it,
before anything is started."""

from __future__ import annotations

import os
import ssl
from typing import Any

from common.errors import ConfigError

AUTH_CLIENTS = {"yes": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "no": ssl.CERT_NONE}


def _readable(name: str, path: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(f"{name} {path!r}: no such readable file")


def check_tls(settings: Any, upstream_tls: bool) -> None:
    """The TLS settings' consistency, and their files' presence (Settings.validate);
    ``upstream_tls``: whether the upstream is a rediss:// one."""
    if settings.tls_auth_clients not in AUTH_CLIENTS:
        raise ConfigError(f"tls_auth_clients must be yes, optional or no, got {settings.tls_auth_clients!r}")
    if not 0 <= settings.tls_port <= 65535:
        raise ConfigError(f"tls_port must be 0-65535 (0: no TLS listener), got {settings.tls_port}")
    if settings.tls_port:
        if not settings.tls_cert_file or not settings.tls_key_file:
            raise ConfigError(
                "tls_port needs tls_cert_file and tls_key_file (the listener's certificate and key)"
            )
        if settings.tls_auth_clients != "no" and not settings.tls_ca_cert_file:
            raise ConfigError(
                f"tls_auth_clients {settings.tls_auth_clients} needs tls_ca_cert_file (the CA clients' "
                "certificates are checked against), or tls_auth_clients no"
            )
    for name in (
        "tls_cert_file",
        "tls_key_file",
        "tls_ca_cert_file",
        "tls_client_cert_file",
        "tls_client_key_file",
    ):
        if getattr(settings, name):
            _readable(name, getattr(settings, name))
    if bool(settings.tls_client_cert_file) != bool(settings.tls_client_key_file):
        raise ConfigError("tls_client_cert_file and tls_client_key_file go together")
    if upstream_tls:
        client_context(settings)  # (a bad certificate or key: refused now, not at the first connection)
    if settings.tls_port:
        server_context(settings)


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, what: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{what} {cert!r} with key {key!r}: {exc.__class__.__name__}: {exc}") from None


def server_context(settings: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, settings.tls_cert_file, settings.tls_key_file, "tls_cert_file")
    ctx.verify_mode = AUTH_CLIENTS[settings.tls_auth_clients]
    if settings.tls_ca_cert_file:
        try:
            ctx.load_verify_locations(cafile=settings.tls_ca_cert_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"tls_ca_cert_file {settings.tls_ca_cert_file!r}: {exc}") from None
    return ctx


def client_context(settings: Any) -> ssl.SSLContext:
    """For a rediss:// upstream: its certificate verified (against tls_ca_cert_file, or the
    system's CAs), its host name checked."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca_cert_file or None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls_ca_cert_file {settings.tls_ca_cert_file!r}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    cert = settings.tls_client_cert_file or settings.tls_cert_file
    key = settings.tls_client_key_file or settings.tls_key_file
    if cert and key:
        _load_chain(
            ctx, cert, key, "tls_client_cert_file" if settings.tls_client_cert_file else "tls_cert_file"
        )
    return ctx
