"""Where the hot tier keeps its values: Python bytes in host memory, or a slab in device memory.

The tier's index and bookkeeping are the same for both; only the value store differs. The device
store takes its array module as a parameter: CuPy on a GPU, NumPy in the CPU tests that check the
allocator and the round trips in CI.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from proxy.errors import ConfigError


class ValueStore(Protocol):
    name: str

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

    def put(self, value: bytes) -> bytes:
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def get(self, handle: bytes) -> bytes:
        return handle[handle.index(b"\n") + 1 : -2]

    def frame(self, handle: bytes) -> bytes:
        return handle

    def free(self, handle: bytes) -> None:
        pass


class DeviceStore:
    """Values in one preallocated device buffer, carved by a power-of-two slab allocator.

    A handle is (offset, length, size class). Freed blocks go to their class's free list; new ones
    come from a bump pointer. ``gather`` assembles many values on the device in one operation, which
    is where a GPU tier can pay: the values are consumed there without crossing to the host.
    """

    name = "gpu"
    MIN_CLASS = 6  # 64-byte blocks at least

    def __init__(self, capacity_bytes: int, xp: Any = None) -> None:
        if xp is None:
            xp = load_cupy()
        self.xp = xp
        self.capacity = capacity_bytes
        self.buffer = xp.zeros(capacity_bytes, dtype=xp.uint8)
        self.top = 0  # bump pointer
        self.free_lists: dict[int, list[int]] = {}
        self.used = 0

    @staticmethod
    def size_class(length: int) -> int:
        return max(DeviceStore.MIN_CLASS, (max(length, 1) - 1).bit_length())

    def put(self, value: bytes) -> tuple[int, int, int]:
        cls = self.size_class(len(value))
        free = self.free_lists.get(cls)
        if free:
            offset = free.pop()
        else:
            if self.top + (1 << cls) > self.capacity:
                raise MemoryError("device store full")
            offset = self.top
            self.top += 1 << cls
        if value:
            host = np.frombuffer(value, dtype=np.uint8)
            self.buffer[offset : offset + len(value)] = self.xp.asarray(host)
        self.used += 1 << cls
        return (offset, len(value), cls)

    def get(self, handle: tuple[int, int, int]) -> bytes:
        offset, length, _ = handle
        view = self.buffer[offset : offset + length]
        host = view.get() if hasattr(view, "get") else view
        return bytes(host.tobytes())

    def frame(self, handle: tuple[int, int, int]) -> bytes:
        value = self.get(handle)
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def free(self, handle: tuple[int, int, int]) -> None:
        offset, _, cls = handle
        self.free_lists.setdefault(cls, []).append(offset)
        self.used -= 1 << cls

    def gather(self, handles: list[tuple[int, int, int]]) -> tuple[Any, Any]:
        """Concatenate values on the device: (flat uint8 array, start offsets), no host copy."""
        xp = self.xp
        if not handles:
            return xp.zeros(0, dtype=xp.uint8), xp.zeros(1, dtype=xp.int64)
        lengths = np.array([h[1] for h in handles], dtype=np.int64)
        starts = np.array([h[0] for h in handles], dtype=np.int64)
        out_offsets = np.concatenate([[0], np.cumsum(lengths)])
        # One index array selects every byte of every value: a single device gather.
        index = np.repeat(starts - out_offsets[:-1], lengths) + np.arange(out_offsets[-1])
        return self.buffer[xp.asarray(index)], xp.asarray(out_offsets)


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


def make_store(kind: str, capacity_bytes: int) -> ValueStore:
    if kind == "cpu":
        return HostStore()
    if kind == "gpu":
        return DeviceStore(capacity_bytes)
    raise ConfigError(f"hot_tier must be off, cpu or gpu, got {kind!r}")
