"""Eviction policies for the hot tier, behind one small interface.

A policy only orders keys; the tier owns the values and the byte count. ``insert`` and ``touch``
record an admission and a hit, ``remove`` forgets a key the tier dropped for another reason
(invalidation, expiry), and ``victim`` picks the next key to evict and forgets it.

The hot tier's LRU is ``StampedLRU``: the tier stamps each entry with its last access and the
policy reads the stamps when it evicts, so that a hit makes no call here at all
(``reads_stamps``). The simulator keeps ``LRU``, whose touch is one C call.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Protocol


class EvictionPolicy(Protocol):
    name: str
    # True: the owner records hits as stamps that the policy reads (see StampedLRU), and does
    # not call touch.
    reads_stamps: bool

    def insert(self, key: Hashable, size: int) -> None: ...

    def touch(self, key: Hashable) -> None: ...

    def remove(self, key: Hashable) -> None: ...

    def victim(self) -> Hashable: ...

    def __len__(self) -> int: ...


class LRU:
    """Least recently used: evict the key whose last access is oldest."""

    name = "lru"
    reads_stamps = False

    def __init__(self, capacity_bytes: int) -> None:
        self._order: OrderedDict[Hashable, int] = OrderedDict()  # key -> size, least recent first
        # The two calls made on every request are the OrderedDict's own C methods, with no Python
        # frame between: the simulator replays millions of requests through them. Callers insert
        # absent keys only (the tier drops an entry before refilling it): re-inserting a present key
        # would update its size but not its recency.
        self.insert = self._order.__setitem__
        self.touch = self._order.move_to_end

    def remove(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def victim(self) -> Hashable:
        key, _ = self._order.popitem(last=False)
        return key

    def __len__(self) -> int:
        return len(self._order)


class S3FIFO:
    """S3-FIFO (Yang et al., SOSP 2023): a small FIFO for new keys, a main FIFO, a ghost FIFO.

    New keys enter the small queue (a tenth of the bytes). Evicting from it, a key hit while there
    moves to the main queue; one never hit leaves, remembered in the ghost queue so that its
    return goes straight to main. The main queue evicts like CLOCK with a 2-bit frequency: a key
    with hits left is reinserted with one fewer. One-hit wonders thus never reach main.
    """

    name = "s3fifo"
    reads_stamps = False
    SMALL_SHARE = 0.10
    MAX_FREQ = 3

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.small: OrderedDict[Hashable, int] = OrderedDict()  # key -> size, oldest first
        self.main: OrderedDict[Hashable, int] = OrderedDict()
        self.ghost: OrderedDict[Hashable, None] = OrderedDict()
        self.freq: dict[Hashable, int] = {}
        self.small_bytes = 0

    def insert(self, key: Hashable, size: int) -> None:
        if key in self.freq:  # (freq holds exactly the keys in small and main)
            self.remove(key)
        self.freq[key] = 0
        if key in self.ghost:
            del self.ghost[key]
            self.main[key] = size
        else:
            self.small[key] = size
            self.small_bytes += size

    def touch(self, key: Hashable) -> None:
        # One lookup, and a store only below the cap (a hot key's count sits at the cap): every
        # hit of the proxy's tier and of the simulator's s3fifo arms passes here.
        count = self.freq.get(key)
        if count is not None and count < self.MAX_FREQ:
            self.freq[key] = count + 1

    def remove(self, key: Hashable) -> None:
        if key in self.small:
            self.small_bytes -= self.small.pop(key)
        else:
            self.main.pop(key, None)
        self.freq.pop(key, None)

    def victim(self) -> Hashable:
        while True:
            if self.small and (self.small_bytes >= self.SMALL_SHARE * self.capacity or not self.main):
                key, size = self.small.popitem(last=False)
                self.small_bytes -= size
                if self.freq[key] > 0:
                    self.freq[key] = 0
                    self.main[key] = size
                    continue
                del self.freq[key]
                self.ghost[key] = None
                while len(self.ghost) > max(len(self.main), 1):
                    self.ghost.popitem(last=False)
                return key
            key, size = self.main.popitem(last=False)
            if self.freq[key] > 0:
                self.freq[key] -= 1
                self.main[key] = size
                continue
            del self.freq[key]
            return key

    def __len__(self) -> int:
        return len(self.small) + len(self.main)


class StampedLRU:
    """LRU for an owner that stamps each key's last access on its own record: ``stamp(key)``
    reads it. A hit costs the owner one attribute store and no call here; the order is settled
    when a victim is wanted.

    A heap holds one ``(stamp, seq, key)`` item per key, its stamp when pushed, which is never
    later than its last access. The top item whose key was not accessed since it was pushed is
    therefore the least recently used key; one that was is pushed again with its new stamp. While
    stamps grow with every access and insert this evicts exactly what ``LRU`` does
    (tests/unit/test_tier.py holds the two side by side). Removed keys leave their items behind
    until they surface or the heap is rebuilt (at twice the live keys).
    """

    name = "lru"
    reads_stamps = True

    def __init__(self, capacity_bytes: int, stamp: Callable[[Hashable], float]) -> None:
        self._stamp = stamp
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq: dict[Hashable, int] = {}  # key -> the seq of its live heap item
        self._next = 0

    def insert(self, key: Hashable, size: int) -> None:
        self._next += 1
        self._seq[key] = self._next
        heapq.heappush(self._heap, (self._stamp(key), self._next, key))

    def touch(self, key: Hashable) -> None:
        """Nothing: the owner's stamp records a hit (``reads_stamps``)."""

    def remove(self, key: Hashable) -> None:
        if self._seq.pop(key, None) is not None and len(self._heap) > 2 * len(self._seq) + 64:
            live = self._seq
            self._heap = [item for item in self._heap if live.get(item[2]) == item[1]]
            heapq.heapify(self._heap)

    def victim(self) -> Hashable:
        heap, live = self._heap, self._seq
        while True:
            pushed, seq, key = heap[0]
            if live.get(key) != seq:  # removed (or inserted again since)
                heapq.heappop(heap)
                continue
            last = self._stamp(key)
            if last == pushed:
                heapq.heappop(heap)
                del live[key]
                return key
            self._next += 1
            live[key] = self._next
            heapq.heapreplace(heap, (last, self._next, key))

    def __len__(self) -> int:
        return len(self._seq)


POLICIES: dict[str, type[LRU] | type[S3FIFO]] = {"lru": LRU, "s3fifo": S3FIFO}


def make_policy(
    name: str, capacity_bytes: int, stamp: Callable[[Hashable], float] | None = None
) -> EvictionPolicy:
    """The policy ``name``; with ``stamp`` (an owner that stamps its records' last access), LRU
    is ``StampedLRU``."""
    if stamp is not None and name == "lru":
        return StampedLRU(capacity_bytes, stamp)
    try:
        return POLICIES[name](capacity_bytes)
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r} (choose from {', '.join(POLICIES)})") from None
