"""A key's shape: its template (each run of digits replaced by ``#``), its numbers, and a template
filled back with numbers. The model's vocabulary (``ml.vocab``) names keys by these; the live
engine and the proxy's hints (``prefetch.engine``, ``proxy.prediction``) apply the template rules
the model follows, on str keys and on the bytes the proxy holds."""

from __future__ import annotations

import re
from collections.abc import Sequence

_DIGITS = re.compile(r"\d+")
_DIGITS_BYTES = re.compile(rb"\d+")


def template_of(key: str) -> str:
    return _DIGITS.sub("#", key)


def numbers_of(key: str) -> list[str]:
    return _DIGITS.findall(key)


def fill(template: str, numbers: Sequence[str]) -> str | None:
    """The template with its slots filled by ``numbers`` (None if the counts differ)."""
    parts = template.split("#")
    if len(parts) - 1 != len(numbers):
        return None
    out = [parts[0]]
    for number, part in zip(numbers, parts[1:], strict=True):
        out += [number, part]
    return "".join(out)


def shape_of(key: bytes) -> tuple[bytes, list[bytes]]:
    """A bytes key's template and numbers at once (the proxy's, on a miss)."""
    return _DIGITS_BYTES.sub(b"#", key), _DIGITS_BYTES.findall(key)


def fill_bytes(template: bytes, numbers: Sequence[bytes]) -> bytes | None:
    parts = template.split(b"#")
    if len(parts) - 1 != len(numbers):
        return None
    out = [parts[0]]
    for number, part in zip(numbers, parts[1:], strict=True):
        out += [number, part]
    return b"".join(out)
