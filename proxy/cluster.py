"""Redis Cluster's routing rules, without I/O: the groundwork of a cluster upstream (issue 24).

Not wired into the proxy yet. What is here follows the cluster specification and is checked
against a real cluster-mode redis-server (tests/e2e/test_cluster_rules.py):

* ``key_slot``: the hash slot of a key (CRC16/XMODEM of the key, or of its hash tag, mod 16384;
  ``binascii.crc_hqx`` is that CRC, in C);
* ``SlotMap``: which master (and replicas) serve each slot, from ``CLUSTER SLOTS``;
* ``parse_redirect``: a ``-MOVED slot host:port`` or ``-ASK slot host:port`` error;
* ``split`` and ``merge``: the multi-key commands whose keys may span slots and whose replies can
  be put back together as Redis would give them (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH), as
  Envoy's redis proxy does; any other command whose keys span slots gets Redis's ``CROSSSLOT``.
"""

from __future__ import annotations

import binascii
from bisect import bisect_right
from dataclasses import dataclass

SLOTS = 16384
CROSSSLOT = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` that decides its slot: what is between the first ``{`` and the first
    ``}`` after it, if that is not empty; else the whole key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: bytes) -> int:
    return binascii.crc_hqx(hash_tag(key), 0) & (SLOTS - 1)


@dataclass(frozen=True)
class Node:
    host: str
    port: int


class SlotMap:
    """Slot ranges and the nodes serving them: the master first, then its replicas."""

    def __init__(self, ranges: list[tuple[int, int, list[Node]]]) -> None:
        self.ranges = sorted(ranges, key=lambda r: r[0])
        self._starts = [r[0] for r in self.ranges]

    @classmethod
    def from_slots_reply(cls, reply: list[list[object]]) -> SlotMap:
        """From ``CLUSTER SLOTS``'s reply (as hiredis or redis-py decode it): [start, end, master,
        replica...], each node [host, port, id, ...]."""
        ranges = []
        for entry in reply:
            start, end, *nodes = entry
            served = [Node(_text(n[0]), int(n[1])) for n in nodes]  # type: ignore[index,call-overload]
            ranges.append((int(start), int(end), served))  # type: ignore[call-overload]
        return cls(ranges)

    def nodes_for(self, slot: int) -> list[Node]:
        """The master and replicas of ``slot`` (empty: no node serves it)."""
        i = bisect_right(self._starts, slot) - 1
        if i < 0:
            return []
        start, end, nodes = self.ranges[i]
        return nodes if start <= slot <= end else []

    def master_for(self, slot: int) -> Node | None:
        nodes = self.nodes_for(slot)
        return nodes[0] if nodes else None

    def masters(self) -> list[Node]:
        return list(dict.fromkeys(nodes[0] for _, _, nodes in self.ranges if nodes))

    def covered(self) -> int:
        """How many slots some node serves (16384 in a healthy cluster)."""
        return sum(end - start + 1 for start, end, nodes in self.ranges if nodes)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_redirect(error: bytes) -> tuple[str, int, Node] | None:
    """``MOVED``/``ASK``, the slot and the node, from an error reply's text (with or without the
    leading ``-`` and trailing CRLF); None for any other error."""
    text = error.strip().lstrip(b"-").decode(errors="replace")
    parts = text.split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    if not host or not port.isdigit() or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), Node(host, int(port))


# name -> (arguments per key, how the parts' replies are merged)
MULTI_KEY = {
    b"MGET": (1, "concat"),
    b"MSET": (2, "ok"),
    b"DEL": (1, "sum"),
    b"UNLINK": (1, "sum"),
    b"EXISTS": (1, "sum"),
    b"TOUCH": (1, "sum"),
}


@dataclass(frozen=True)
class Part:
    slot: int
    args: list[bytes]  # the command for this slot's keys
    positions: list[int]  # where this part's keys stand among the command's keys


def split(args: list[bytes]) -> list[Part] | None:
    """A multi-key command (``MULTI_KEY``) as one part per slot, in the order each slot first
    appears; None for any other command, or a malformed one (it goes to Redis whole, for its
    error)."""
    name = args[0].upper()
    shape = MULTI_KEY.get(name)
    if shape is None:
        return None
    step = shape[0]
    rest = args[1:]
    if not rest or len(rest) % step:
        return None
    parts: dict[int, tuple[list[bytes], list[int]]] = {}
    for i in range(0, len(rest), step):
        slot = key_slot(rest[i])
        cmd, positions = parts.setdefault(slot, ([args[0]], []))
        cmd.extend(rest[i : i + step])
        positions.append(i // step)
    return [Part(slot, cmd, positions) for slot, (cmd, positions) in parts.items()]


def merge(name: bytes, parts: list[Part], replies: list[object]) -> object:
    """The reply Redis would give the whole command, from each part's decoded reply (an error
    reply, an Exception, is returned as it is: the first one wins)."""
    for reply in replies:
        if isinstance(reply, Exception):
            return reply
    how = MULTI_KEY[name.upper()][1]
    if how == "sum":
        return sum(int(r) for r in replies)  # type: ignore[call-overload]
    if how == "ok":
        return replies[0]
    keys = sum(len(p.positions) for p in parts)
    out: list[object] = [None] * keys
    for part, reply in zip(parts, replies, strict=True):
        for position, value in zip(part.positions, reply, strict=True):  # type: ignore[call-overload]
            out[position] = value
    return out
