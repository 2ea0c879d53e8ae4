"""What the proxy needs to know about Redis commands to keep a connection's semantics.

Everything not named here is forwarded untouched with one reply expected.
"""

from __future__ import annotations

# Commands that may legitimately wait longer than the command timeout for their reply.
BLOCKING = frozenset(
    {
        b"BLPOP",
        b"BRPOP",
        b"BRPOPLPUSH",
        b"BLMOVE",
        b"BLMPOP",
        b"BZPOPMIN",
        b"BZPOPMAX",
        b"BZMPOP",
        b"WAIT",
        b"WAITAOF",
    }
)
# Blocking only with a BLOCK argument.
MAYBE_BLOCKING = frozenset({b"XREAD", b"XREADGROUP"})

SUBSCRIBE = frozenset({b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"})
UNSUBSCRIBE = frozenset({b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SUNSUBSCRIBE"})

# Replication handshakes: Redis answers with an RDB payload (``$<len>`` then bytes with no CRLF
# after them, or ``$EOF:<mark>`` framing) and then streams the replication feed, so the connection
# stops being request/reply (redis-cli --rdb, replicas, tools that watch the feed).
REPLICATION = frozenset({b"SYNC", b"PSYNC"})

# INFO arguments for which Redis's reply gets the `# Predis` section appended.
INFO_WITH_PREDIS = frozenset({b"default", b"all", b"everything", b"predis"})


def is_blocking(name: bytes, args: list[bytes]) -> bool:
    if name in BLOCKING:
        return True
    if name in MAYBE_BLOCKING:
        return any(a.upper() == b"BLOCK" for a in args[1:])
    return False


def info_wants_predis(args: list[bytes]) -> bool:
    if len(args) == 1:
        return True
    return any(a.lower() in INFO_WITH_PREDIS for a in args[1:])
