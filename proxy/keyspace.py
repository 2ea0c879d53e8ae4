"""Which keys a command may change, from Redis's own command table (``COMMAND``).

The hot tier must drop a key before the reply to any command that can change it reaches the client.
Instead of a hand-written list, the proxy reads Redis's command table at start: the ``write`` flag
and the key specifications (``begin_search`` / ``find_keys``, with RW/OW/RM flags on the keys that
are written), subcommands included. What the table cannot resolve is handled conservatively: a
write whose keys cannot be found, scripts and functions (which may touch undeclared keys),
FLUSHALL and SWAPDB flush the whole tier; FLUSHDB flushes the client's database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Results of CommandTable.effect().
KEYS = "keys"
FLUSH_DB = "flush_db"
FLUSH_ALL = "flush_all"

# Commands that run code which may write keys it never declared.
SCRIPTS = frozenset({b"EVAL", b"EVALSHA", b"FCALL"})
WRITE_KEY_FLAGS = frozenset({b"RW", b"OW", b"RM"})


@dataclass(frozen=True)
class KeySpec:
    begin: str  # "index", "keyword" or "unknown"
    index: int = 0
    keyword: bytes = b""
    startfrom: int = 0
    find: str = "range"  # "range", "keynum" or "unknown"
    lastkey: int = 0
    keystep: int = 1
    limit: int = 0
    keynumidx: int = 0
    firstkey: int = 1


@dataclass
class CommandInfo:
    name: bytes
    write: bool
    specs: list[KeySpec] = field(default_factory=list)  # only the specs of written keys
    key_specs: list[KeySpec] = field(default_factory=list)  # every key's (a cluster's routing)
    readonly: bool = False  # Redis's "readonly" flag: a replica may answer it


def _get(mapping: Any, key: bytes) -> Any:
    """Field of a RESP3 map (dict) or a RESP2 flat key/value array."""
    if isinstance(mapping, dict):
        return mapping.get(key)
    if isinstance(mapping, list):
        for i in range(0, len(mapping) - 1, 2):
            if mapping[i] == key:
                return mapping[i + 1]
    return None


def _parse_spec(raw: Any, any_key: bool = False) -> KeySpec | None:
    """One key specification; None for one whose keys are only read (unless ``any_key``)."""
    flags = set(_get(raw, b"flags") or [])
    if not any_key and not flags & WRITE_KEY_FLAGS:
        return None
    begin = _get(raw, b"begin_search") or {}
    find = _get(raw, b"find_keys") or {}
    btype = (_get(begin, b"type") or b"unknown").decode()
    bspec = _get(begin, b"spec") or {}
    ftype = (_get(find, b"type") or b"unknown").decode()
    fspec = _get(find, b"spec") or {}
    return KeySpec(
        begin=btype,
        index=int(_get(bspec, b"index") or 0),
        keyword=(_get(bspec, b"keyword") or b"").upper(),
        startfrom=int(_get(bspec, b"startfrom") or 0),
        find=ftype,
        lastkey=int(_get(fspec, b"lastkey") or 0),
        keystep=int(_get(fspec, b"keystep") or 1),
        limit=int(_get(fspec, b"limit") or 0),
        keynumidx=int(_get(fspec, b"keynumidx") or 0),
        firstkey=int(_get(fspec, b"firstkey") or 1),
    )


class CommandTable:
    def __init__(self, commands: dict[bytes, CommandInfo]) -> None:
        self.commands = commands
        # Writes whose keys are one plain slice of the arguments (SET, INCR, DEL, MSET, ...):
        # name -> (start, stop or None, step). The request path resolves them in one step.
        self.simple: dict[bytes, tuple[int, int | None, int]] = {}
        # The same for every key, read or written (GET, MGET, SET...): a cluster's routing.
        self.sliced: dict[bytes, tuple[int, int | None, int]] = {}
        for name, info in commands.items():
            if name in SCRIPTS or b"|" in name:
                continue
            if info.write and len(info.specs) == 1:
                found = _slice_of(info.specs[0])
                if found is not None:
                    self.simple[name] = found
            if len(info.key_specs) == 1 and name != b"MIGRATE":
                found = _slice_of(info.key_specs[0])
                if found is not None:
                    self.sliced[name] = found

    @classmethod
    def from_reply(cls, reply: list[Any]) -> CommandTable:
        """Build from the reply to ``COMMAND`` (RESP2 or RESP3)."""
        commands: dict[bytes, CommandInfo] = {}

        def add(entry: list[Any]) -> None:
            name = entry[0].upper()
            flags = set(entry[2])
            raw_specs = entry[8] if len(entry) > 8 else []
            specs = [s for s in (_parse_spec(r) for r in raw_specs) if s]
            key_specs = [s for s in (_parse_spec(r, any_key=True) for r in raw_specs) if s]
            commands[name] = CommandInfo(name, b"write" in flags, specs, key_specs, b"readonly" in flags)
            for sub in entry[9] if len(entry) > 9 else []:
                add(sub)

        for entry in reply:
            add(entry)
        if b"SET" not in commands:
            raise ValueError("COMMAND reply has no SET: not a Redis command table")
        return cls(commands)

    def effect(self, name: bytes, args: list[bytes]) -> tuple[str, Any] | None:
        """None if the command cannot change a key; else (KEYS, keys), (FLUSH_DB, None) or
        (FLUSH_ALL, None). ``name`` is upper case; ``args`` includes it."""
        simple = self.simple.get(name)
        if simple is not None:
            return (KEYS, args[simple[0] : simple[1] : simple[2]])
        if name in SCRIPTS:
            return (FLUSH_ALL, None)
        info = self.commands.get(name)
        if info is not None and not info.write and not info.specs and len(args) > 1:
            sub = self.commands.get(name + b"|" + args[1].upper())
            if sub is not None:
                info = sub
        if info is None or not info.write:
            return None
        if name == b"FLUSHDB":
            return (FLUSH_DB, None)
        if not info.specs:
            return (FLUSH_ALL, None)  # FLUSHALL, SWAPDB, and any write naming no keys
        keys: list[bytes] = []
        for spec in info.specs:
            found = _keys_for(spec, args)
            if found is None:
                if name == b"SORT":
                    found = _sort_store(args)
                if found is None:
                    return (FLUSH_ALL, None)
            keys.extend(found)
        return (KEYS, keys)

    def readonly(self, name: bytes) -> bool:
        info = self.commands.get(name)
        return info is not None and info.readonly

    def keys(self, name: bytes, args: list[bytes]) -> list[bytes] | None:
        """Every key the command names, read or written (a cluster routes by them): [] for a
        command that names none, None where the table cannot tell (an unknown command, a key
        specification it cannot resolve). ``name`` is upper case; ``args`` includes it."""
        sliced = self.sliced.get(name)
        if sliced is not None:
            return args[sliced[0] : sliced[1] : sliced[2]]
        info = self.commands.get(name)
        if info is not None and not info.key_specs and len(args) > 1:
            sub = self.commands.get(name + b"|" + args[1].upper())
            if sub is not None:
                info = sub
        if info is None:
            return None
        keys: list[bytes] = []
        for spec in info.key_specs:
            found = _keys_for(spec, args)
            if found is None:
                found = _sort_store(args) if name in (b"SORT", b"SORT_RO") else None
                if found is None:
                    return None
            keys.extend(found)
        if name == b"MIGRATE" and len(args) > 3 and args[3] == b"":  # (the keys follow KEYS instead)
            keys.remove(b"")
        return keys


def _slice_of(spec: KeySpec) -> tuple[int, int | None, int] | None:
    """The keys of a spec that are one plain slice of the arguments, as (start, stop, step)."""
    if spec.begin == "index" and spec.find == "range" and spec.limit <= 1:
        if spec.lastkey >= 0:
            return (spec.index, spec.index + spec.lastkey + 1, max(spec.keystep, 1))
        if spec.lastkey == -1:
            return (spec.index, None, max(spec.keystep, 1))
    return None


def _keys_for(spec: KeySpec, args: list[bytes]) -> list[bytes] | None:
    """The keys one spec selects in ``args``; None if it cannot tell."""
    n = len(args)
    if spec.begin == "index":
        start = spec.index
    elif spec.begin == "keyword":
        start = -1
        positions = range(spec.startfrom, n) if spec.startfrom >= 0 else range(n + spec.startfrom, 0, -1)
        for i in positions:
            if 0 < i < n and args[i].upper() == spec.keyword:
                start = i + 1
                break
        if start < 0:
            return []  # the keyword is absent: this spec names no key here
    else:
        return None
    if start >= n:
        return []
    if spec.find == "range":
        if spec.lastkey >= 0:
            last = start + spec.lastkey
        elif spec.limit > 1:
            last = start + (n - 1 - start) // spec.limit
        else:
            last = n + spec.lastkey
        return list(args[start : min(last, n - 1) + 1 : max(spec.keystep, 1)])
    if spec.find == "keynum":
        try:
            count = int(args[start + spec.keynumidx])
        except (IndexError, ValueError):
            return None
        first = start + spec.firstkey
        return list(args[first : first + count * spec.keystep : max(spec.keystep, 1)])
    return None


def _sort_store(args: list[bytes]) -> list[bytes] | None:
    """SORT's STORE destination (its key spec is 'unknown'): the argument after STORE, if any."""
    for i in range(2, len(args) - 1):
        if args[i].upper() == b"STORE":
            return [args[i + 1]]
    return []
