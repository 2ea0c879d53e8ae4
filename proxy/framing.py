"""Where each command starts and ends in a client's bytes, when hiredis parsed them.

hiredis returns commands without byte offsets. Every client encodes a command canonically
(``*<n>\r\n`` then ``$<len>\r\n<arg>\r\n`` per argument, no leading zeros), so a command's size
follows from its arguments; ``canonical_size`` computes it for a whole read in C-level loops.
"""

from __future__ import annotations

# The bytes before a GET's key length, as clients send them (redis-benchmark, redis-py, hiredis).
GET_PREFIXES = (b"*2\r\n$3\r\nGET\r\n$", b"*2\r\n$3\r\nget\r\n$", b"*2\r\n$3\r\nGet\r\n$")
# The decimal form of every length below 65536 (a GET's key length, checked without int()).
LENGTH_DIGITS = tuple(b"%d" % i for i in range(1 << 16))


def single_get_key(data: bytes) -> bytes | None:
    """The key, if ``data`` is exactly one canonically encoded GET; None otherwise.

    The hit path's parser: no regex, no int(), one allocation (the key). The key is what lies
    between the length's CRLF and the final CRLF, and its length must be the declared one, so a
    read holding more than one command (whose tail is longer than the first key) never passes.
    """
    if not data.startswith(GET_PREFIXES) or not data.endswith(b"\r\n"):
        return None
    eol = data.find(b"\r\n", 14, 25)
    if eol < 0:
        return None
    key = data[eol + 2 : -2]
    n = len(key)
    if (
        n >= 65536
        or eol - 14 != len(digits := LENGTH_DIGITS[n])
        or not data.startswith(digits, 14)
        or len(data) != eol + 4 + n  # (the length line's CRLF is not also the key's: "$0\r\n" ends)
    ):
        return None
    return key


# "$<len>" for every length below 65536: get_run_keys' lookup table.
_DOLLAR_LENGTHS = tuple(b"$" + d for d in LENGTH_DIGITS)
_GET_NAMES = (b"GET", b"get", b"Get")
_SET_NAMES = (b"SET", b"set", b"Set")


def _run_parts(data: bytes, width: int, count: bytes, names: tuple[bytes, ...]) -> list[bytes] | None:
    """``data`` split at every CRLF, if it is a run of commands of ``width`` parts each (``count``,
    ``$3``, one of ``names``, then their arguments) ending in CRLF; None otherwise. The run parsers'
    shared first step: the parts' shape, before each checks its own arguments' lengths."""
    parts = data.split(b"\r\n")
    n, rest = divmod(len(parts), width)
    if (
        rest != 1
        or not n
        or parts[-1]
        or parts[0::width].count(count) != n
        or parts[1::width].count(b"$3") != n
    ):
        return None
    command = parts[2::width]
    if command.count(names[0]) != n and sum(map(command.count, names)) != n:
        return None
    return parts


def get_run_keys(data: bytes) -> list[bytes] | None:
    """The keys, if ``data`` is exactly a run of canonically encoded GETs (keys under 64 KiB);
    None otherwise (an unfinished command, another command, a key holding CRLF...).

    The GET-only read's parser, cheaper than hiredis plus ``canonical_size`` (half the cost for 16
    GETs): split at every CRLF in C, then check the five parts of each command by slices. The
    parse is the RESP one: each key's declared length must equal its part's, so a key cannot hold
    a CRLF, and a part that is not where a command's parts fall fails a count.
    """
    parts = _run_parts(data, 5, b"*2", _GET_NAMES)
    if parts is None:
        return None
    keys = parts[4::5]
    try:
        if list(map(_DOLLAR_LENGTHS.__getitem__, map(len, keys))) != parts[3::5]:
            return None
    except IndexError:  # a key of 64 KiB or more
        return None
    return keys


def set_run_keys(data: bytes) -> list[bytes] | None:
    """The keys, if ``data`` is exactly a run of canonically encoded plain SETs (``SET key value``,
    no options; keys and values under 64 KiB, without CRLF in them); None otherwise.

    ``get_run_keys`` for writes (what ``redis-benchmark -t set -P 16`` and redis-py pipelines of
    SETs send): the same split at every CRLF and checks by slices, seven parts a command. A value
    holding CRLF splits into more parts, so its declared length no longer matches its part and
    the read takes the general path, which parses it with hiredis.
    """
    parts = _run_parts(data, 7, b"*3", _SET_NAMES)
    if parts is None:
        return None
    keys = parts[4::7]
    length = _DOLLAR_LENGTHS.__getitem__
    try:
        if (
            list(map(length, map(len, keys))) != parts[3::7]
            or list(map(length, map(len, parts[6::7]))) != parts[5::7]
        ):
            return None
    except IndexError:  # a key or value of 64 KiB or more
        return None
    return keys


# The bytes before a plain SET's key length (SET key value, no options).
SET_PREFIXES = (b"*3\r\n$3\r\nSET\r\n$", b"*3\r\n$3\r\nset\r\n$", b"*3\r\n$3\r\nSet\r\n$")


def _length_at(data: bytes, start: int) -> tuple[int, int]:
    """The canonical decimal length at ``start`` (ending in CRLF) and where its CRLF is; (-1, -1)
    for anything else (a sign, a leading zero, a space, no CRLF within 10 digits)."""
    eol = data.find(b"\r\n", start, start + 11)
    if eol <= start:
        return -1, -1
    digits = data[start:eol]
    if not digits.isdigit() or (digits[0] == 48 and len(digits) > 1):  # (48: "0")
        return -1, -1
    return int(digits), eol


def single_set_key(data: bytes) -> bytes | None:
    """The key, if ``data`` is exactly one canonically encoded plain SET (key and value, no
    options); None otherwise. The write path's parser, as ``single_get_key`` is the read path's:
    the value's declared length must reach exactly to the final CRLF, so a read holding more than
    one command, or less than one, never passes."""
    if not data.startswith(SET_PREFIXES) or not data.endswith(b"\r\n"):
        return None
    n, eol = _length_at(data, 14)
    if n < 0:
        return None
    start = eol + 2
    end = start + n
    if data[end : end + 3] != b"\r\n$":
        return None
    size, eol = _length_at(data, end + 3)
    if size < 0 or eol + 2 + size + 2 != len(data):
        return None
    return data[start:end]


# Decimal digits of every length below 65536: canonical_size's lookup table.
_DIGITS = bytes(map(len, LENGTH_DIGITS))


def canonical_size(cmds: list[list[bytes]], args: list[bytes], sizes: list[int]) -> int:
    """Bytes of ``cmds`` as RESP multibulks (what every client sends), counted in C loops:
    ``*<n>\r\n`` per command and ``$<len>\r\n<arg>\r\n`` per argument."""
    digit = _DIGITS.__getitem__
    try:
        digits = sum(map(digit, map(len, cmds))) + sum(map(digit, sizes))
    except IndexError:  # an argument of 64 KiB or more
        digits = sum(len(str(len(c))) for c in cmds) + sum(len(str(n)) for n in sizes)
    return 3 * len(cmds) + 5 * len(args) + digits + sum(sizes)


def split_commands(cmds: list[list[bytes]], raw: bytes) -> list[bytes | None]:
    """Each command's own bytes within ``raw``."""
    out: list[bytes | None] = []
    pos = 0
    for c in cmds:
        size = canonical_size([c], c, list(map(len, c)))
        out.append(raw[pos : pos + size])
        pos += size
    return out
