"""Where the hot tier keeps its values: Python bytes in host memory, or a slab in device memory.

The tier's index and bookkeeping are the same for both; only the value store differs. The device
store takes its array module as a parameter: CuPy on a GPU, NumPy in the CPU tests that check the
allocator and the round trips in CI.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Protocol

import numpy as np

from common.errors import ConfigError


class ValueStore(Protocol):
    name: str
    max_value: int  # longer values are never stored (put would raise MemoryError whatever it evicted)

    def put(self, value: bytes) -> Any: ...

    def get(self, handle: Any) -> bytes: ...

    def frame(self, handle: Any) -> bytes:
        """The value as a RESP bulk string, the reply to a GET of it."""
        ...

    def free(self, handle: Any) -> None: ...


class HostStore:
    """Values stay Python bytes, kept already encoded as the RESP bulk string a GET replies with:
    the handle is that frame, so serving a hit is a dict lookup and a write, no formatting."""

    name = "cpu"
    max_value = sys.maxsize

    def put(self, value: bytes) -> bytes:
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def get(self, handle: bytes) -> bytes:
        return handle[handle.index(b"\n") + 1 : -2]

    def frame(self, handle: bytes) -> bytes:
        return handle

    def free(self, handle: bytes) -> None:
        pass


class DeviceStore:
    """Values in one preallocated device buffer, carved by a binary buddy allocator.

    A handle is (offset, length, size class); a value takes the smallest power-of-two block that
    holds it (64 bytes at least). A freed block merges with its buddy whenever the buddy is free too,
    so that memory freed by small values becomes room for large ones again: with plain per-class
    free lists, a tier whose value sizes shifted would find its buffer carved into blocks of the old
    sizes and stop caching. ``gather`` assembles many values on the device in one operation, which
    is where a GPU tier can pay: the values are consumed there without crossing to the host.
    """

    name = "gpu"
    MIN_CLASS = 6  # 64-byte blocks at least

    def __init__(self, capacity_bytes: int, xp: Any = None, max_value: int | None = None) -> None:
        if xp is None:
            xp = load_cupy()
        self.xp = xp
        # The largest block: one that holds the largest value asked for, no larger than the buffer.
        top = self.size_class(min(max_value or capacity_bytes, capacity_bytes))
        if 1 << top > capacity_bytes:
            top -= 1
        if top < self.MIN_CLASS:
            raise ConfigError(
                f"--hot-tier gpu: {capacity_bytes} bytes hold no {1 << self.MIN_CLASS}-byte block"
            )
        self.top_class = top
        self.max_value = 1 << top  # a longer value never fits (the tier does not cache it)
        self.capacity = capacity_bytes >> self.MIN_CLASS << self.MIN_CLASS
        self.buffer = xp.zeros(self.capacity, dtype=xp.uint8)
        # Free blocks by class; a set, so that a buddy can be found and taken out in O(1). The
        # buffer is whole top blocks, then the rest as one block per set bit, largest first: each
        # starts where the larger ones end, so its buddy would lie past the end and it never merges.
        self.free_lists: dict[int, set[int]] = {c: set() for c in range(self.MIN_CLASS, top + 1)}
        whole = self.capacity >> top << top
        self.free_lists[top].update(range(0, whole, 1 << top))
        offset = whole
        for cls in range(top - 1, self.MIN_CLASS - 1, -1):
            if self.capacity - offset >= 1 << cls:
                self.free_lists[cls].add(offset)
                offset += 1 << cls
        self.used = 0

    @staticmethod
    def size_class(length: int) -> int:
        return max(DeviceStore.MIN_CLASS, (max(length, 1) - 1).bit_length())

    def put(self, value: bytes) -> tuple[int, int, int]:
        """Copy a value into a free block; MemoryError when no block of its class can be made."""
        cls = self.size_class(len(value))
        if cls > self.top_class:
            raise MemoryError(f"value of {len(value)} bytes exceeds the largest block ({self.max_value})")
        have = cls
        while not self.free_lists[have]:
            have += 1
            if have > self.top_class:
                raise MemoryError("device store full")
        offset = self.free_lists[have].pop()
        while have > cls:  # split, keeping the lower half and freeing the upper
            have -= 1
            self.free_lists[have].add(offset + (1 << have))
        if value:
            host = np.frombuffer(value, dtype=np.uint8)
            self.buffer[offset : offset + len(value)] = self.xp.asarray(host)
        self.used += 1 << cls
        return (offset, len(value), cls)

    def get(self, handle: tuple[int, int, int]) -> bytes:
        offset, length, _ = handle
        return bytes(to_host(self.buffer[offset : offset + length]).tobytes())

    def frame(self, handle: tuple[int, int, int]) -> bytes:
        value = self.get(handle)
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def free(self, handle: tuple[int, int, int]) -> None:
        offset, _, cls = handle
        self.used -= 1 << cls
        while cls < self.top_class:
            buddy = offset ^ (1 << cls)
            siblings = self.free_lists[cls]
            if buddy not in siblings:
                break
            siblings.discard(buddy)
            offset = min(offset, buddy)
            cls += 1
        self.free_lists[cls].add(offset)

    def gather(self, handles: list[tuple[int, int, int]]) -> tuple[Any, Any]:
        """Concatenate values on the device: (flat uint8 array, start offsets), no host copy.

        On CuPy, one upload of the handles' output offsets and buffer offsets (two int64 per value)
        and one kernel launch, a thread block per value. Building a per-byte index on the host and
        uploading it (8 bytes per byte gathered) took 2.9 ms for 1,024 values of 512 bytes on an
        H100, and building it on the device from the ends took five launches (bench/HISTORY.md).
        On NumPy (the CPU tests) the same result comes from a per-byte index.
        """
        xp = self.xp
        n = len(handles)
        if not n:
            return xp.zeros(0, dtype=xp.uint8), xp.zeros(1, dtype=xp.int64)
        meta = np.empty(2 * n + 1, dtype=np.int64)  # output offsets (n + 1), then buffer offsets (n)
        meta[0] = 0
        np.cumsum(np.fromiter((h[1] for h in handles), dtype=np.int64, count=n), out=meta[1 : n + 1])
        meta[n + 1 :] = np.fromiter((h[0] for h in handles), dtype=np.int64, count=n)
        total = int(meta[n])
        if xp is np:
            starts, offsets = meta[n + 1 :], meta[: n + 1]
            index = np.repeat(starts - offsets[:-1], np.diff(offsets)) + np.arange(total)
            return self.buffer[index], offsets
        on_device = xp.asarray(meta)
        out = xp.empty(total, dtype=xp.uint8)
        _gather_kernel(xp)((min(n, 65535),), (128,), (self.buffer, on_device, np.int32(n), out))
        return out, on_device[: n + 1]


_GATHER_SOURCE = r"""
extern "C" __global__ void gather_values(const unsigned char* buffer, const long long* meta, int n,
                                         unsigned char* out) {
    for (int v = blockIdx.x; v < n; v += gridDim.x) {
        long long to = meta[v], length = meta[v + 1] - to, from = meta[n + 1 + v];
        for (long long i = threadIdx.x; i < length; i += blockDim.x) out[to + i] = buffer[from + i];
    }
}
"""


@functools.cache
def _gather_kernel(xp: Any) -> Any:
    """The CuPy kernel (compiled by NVRTC at its first launch; CuPy caches it on disk too)."""
    return xp.RawKernel(_GATHER_SOURCE, "gather_values")


def to_host(array: Any) -> Any:
    """A NumPy array of ``array``'s contents: a CuPy array is copied from the device, a NumPy one
    is returned as it is."""
    return array.get() if hasattr(array, "get") else array


def load_cupy() -> Any:
    """CuPy with a usable GPU, or a ConfigError saying what is missing."""
    try:
        import cupy
    except ImportError as exc:
        raise ConfigError(
            f"--hot-tier gpu needs CuPy and a CUDA GPU: install the 'gpu' extra (pip install 'predis[gpu]') ({exc})"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver errors come as several CuPy exception types
        raise ConfigError(f"--hot-tier gpu: CuPy is installed but no CUDA device is usable ({exc})") from None
    if count < 1:
        raise ConfigError("--hot-tier gpu: CuPy is installed but no CUDA device was found")
    return cupy


def make_store(kind: str, capacity_bytes: int, max_value: int | None = None) -> ValueStore:
    if kind == "cpu":
        return HostStore()
    if kind == "gpu":
        return DeviceStore(capacity_bytes, max_value=max_value)
    raise ConfigError(f"hot_tier must be off, cpu or gpu, got {kind!r}")
