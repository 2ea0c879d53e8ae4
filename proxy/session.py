"""Per-connection Redis state the proxy must follow: what each special command does to the reply
stream (the slots it queues, see ``proxy.slots``), and what a reconnect must replay. No I/O here:
``Session.special`` decides and returns; the connection acts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

from proxy import commands
from proxy.config import UpstreamAddress
from proxy.resp import as_str, encode_bulk, encode_command, encode_error, encode_verbatim
from proxy.scanner import decode_reply
from proxy.slots import NO_SLOT, PASSTHROUGH, RAW, Answer, Capture, Run, discard_reply
from proxy.stats import Stats

RESET_FRAME = b"+RESET\r\n"
# CLIENT subcommands that change the connection's state when they run, and the CLIENT INFO field
# that says, after an EXEC, whether one queued inside MULTI ran (Session.on_client_info).
_STATE_IN_MULTI = {b"SETNAME": b"name", b"SETINFO": b"lib", b"TRACKING": b"flags"}


# Commands that leave the fast path: state tracking, local answers, special reply counts.
SPECIAL = frozenset(
    {
        b"INFO", b"PREDIS", b"HELLO", b"AUTH", b"SELECT", b"CLIENT", b"MULTI", b"EXEC",
        b"DISCARD", b"WATCH", b"UNWATCH", b"MONITOR", b"RESET", b"QUIT",
        b"READONLY", b"READWRITE", b"ASKING",  # (a cluster connection's state: the pool pins on them)
        b"REPLCONF", b"SCRIPT",  # (a replica's flags, SCRIPT DEBUG's debugger: the same)
    }
    | commands.BLOCKING
    | commands.MAYBE_BLOCKING
    | commands.SUBSCRIBE
    | commands.UNSUBSCRIBE
    | commands.REPLICATION
)  # fmt: skip


class Session:
    """One client connection's Redis state (AUTH, SELECT, HELLO, MULTI, subscriptions, CLIENT
    REPLY) and what each special command does to it."""

    def __init__(
        self,
        address: UpstreamAddress,
        stats: Stats,
        on_db_change: Callable[[int], None] | None = None,
        admin_users: frozenset[str] = frozenset({"default"}),
    ) -> None:
        self.upstream_address = address
        self.stats = stats
        self.admin_users = admin_users  # who may run the PREDIS commands that change the proxy
        self.on_db_change = on_db_change  # told of every change of ``db`` (the tier's per-db index)
        # Replayed on reconnect; updated only once Redis acknowledged the command that set it, so
        # the prelude never repeats a command still in flight.
        self.auth: tuple[str | bytes, str | bytes] | None = None
        self.db = 0
        self.client_name: bytes | None = None
        self.replay_resp3 = False
        self.setinfo: dict[bytes, bytes] = {}  # CLIENT SETINFO's attributes, replayed on reconnect
        self.default_state()
        # The protocol as seen on the request side (before Redis answers): it decides how RESP3
        # SUBSCRIBE confirmations are counted.
        self.resp3 = False
        # State that cannot be replayed: losing the upstream connection closes the client.
        self.in_multi = False
        # Connection state queued inside MULTI (SELECT, AUTH, HELLO, CLIENT SETNAME|SETINFO|
        # TRACKING): its +QUEUED changes nothing; whether it ran is known only from the EXEC
        # (aborted by a WATCH, refused, or an error of its own), so after that EXEC the proxy asks
        # Redis (``on_client_info``) for the fields named here: db, user, name, resp, flags, lib.
        self.state_in_multi: set[bytes] = set()
        self.auth_in_multi: tuple[bytes, bytes] | None = None
        self.watching = False
        self.tracking = False
        self.subscribed = False  # a RESP3 SUBSCRIBE was sent (until RESET: unsubscribing is not followed)
        self.passthrough_req = False  # RESP2 pub/sub or MONITOR: requests are no longer inspected
        self.passthrough_rep = False  # ...and replies are no longer matched to requests
        self.reply_mode = b"ON"  # CLIENT REPLY ON | OFF | SKIP
        # SELECT/AUTH/HELLO/RESET requests whose replies have not come back: until they do, the
        # request side does not know the connection's db or user, and the hot tier stays out.
        self.state_pending = 0
        # Whether Redis has accepted this connection's commands as its current user: set by a
        # successful AUTH or HELLO, or by a reply that is not NOAUTH. Until then the hot tier never
        # serves it, so a connection that must AUTH first gets Redis's NOAUTH, not a cached value.
        self.verified = False
        self.verify_pending = False

    def db_changed(self) -> None:
        if self.on_db_change is not None:
            self.on_db_change(self.db)

    def reader(self) -> tuple[tuple[str, str] | None, str]:
        """Whom this client reads as: the credentials a fill on its behalf authenticates with
        (None: the connection's default user), and the ACL user name its tier entries carry."""
        auth = self.auth
        if auth is None:
            return None, "default"
        user = as_str(auth[0])
        return (user, as_str(auth[1])), user

    def default_state(self) -> None:
        """The state a new upstream connection starts from: the upstream URL's user and db."""
        address = self.upstream_address
        self.auth = (address.username or "default", address.password) if address.password else None
        self.db = address.db
        self.db_changed()
        self.client_name = None
        self.replay_resp3 = False

    def special(self, name: bytes, args: list[bytes], now: float) -> Any:
        """Decide what to do with a command that is not a plain forward.

        Returns the slot(s) for a forwarded command (one slot, or a tuple of slots), NO_SLOT for a
        forwarded command that gets no reply, RAW for one after which the connection is a raw
        byte pipe, or an Answer for a command the proxy answers itself (not forwarded).
        """
        if name in commands.REPLICATION and not self.in_multi and not self.passthrough_req:
            # (Inside MULTI Redis refuses it with an ordinary error; so it does while subscribed.)
            return RAW
        if self.passthrough_req:
            if name == b"RESET":
                self.reset_request_state()
                return self._state_capture(now, self.on_reset_reply)
            if name == b"QUIT":
                return Answer(None, close=True)
            return NO_SLOT
        if self.reply_mode != b"ON":
            # CLIENT REPLY OFF/SKIP: Redis sends no reply, so no slot is queued.
            if name == b"CLIENT" and len(args) == 3 and args[1].upper() == b"REPLY":
                mode = args[2].upper()
                if mode in (b"ON", b"OFF", b"SKIP"):
                    self.reply_mode = mode
                    return Run(1, now) if mode == b"ON" else NO_SLOT
            if self.reply_mode == b"SKIP":
                self.reply_mode = b"ON"
            if name == b"PREDIS":
                return Answer(None)
            if name == b"QUIT":
                return Answer(None, close=True)
            self.track_state(name, args, now)
            return NO_SLOT
        if name == b"PREDIS":
            return Answer(self.predis_command(args))
        if name == b"QUIT":
            return Answer(b"+OK\r\n", close=True)
        if name == b"INFO":
            if self.in_multi or not commands.info_wants_predis(args):
                return Run(1, now)
            return Capture(now, self.append_info_section)
        if name == b"CLIENT" and len(args) >= 3 and args[1].upper() == b"REPLY":
            mode = args[2].upper()
            if mode in (b"ON", b"OFF", b"SKIP") and len(args) == 3:
                self.reply_mode = mode
                return Run(1, now) if mode == b"ON" else NO_SLOT
            return Run(1, now)
        if name in commands.BLOCKING or name in commands.MAYBE_BLOCKING:
            return Run(1, 0.0) if commands.is_blocking(name, args) else Run(1, now)
        if name in commands.SUBSCRIBE:
            if len(args) < 2:
                return Run(1, now)  # arity error: an ordinary error reply
            if self.resp3:
                self.subscribed = True
                return NO_SLOT  # RESP3: confirmations arrive as push frames
            # RESP2: one confirmation per channel, then the connection is a message stream.
            self.passthrough_req = True
            return (Run(len(args) - 1, now), PASSTHROUGH)
        if name in commands.UNSUBSCRIBE and self.resp3:
            return NO_SLOT
        if name == b"MONITOR":
            self.passthrough_req = True
            return (Run(1, now), PASSTHROUGH)
        return self.track_state(name, args, now)

    def track_state(self, name: bytes, args: list[bytes], now: float) -> Any:
        """Remember connection state that a reconnect must replay or must not silently drop."""
        if name == b"SELECT" and len(args) == 2:
            if self.in_multi:
                self.state_in_multi.add(b"db")
                return Run(1, now)
            return self._state_capture(now, partial(self.on_select, db=args[1]))
        if name == b"AUTH" and len(args) in (2, 3):
            cred = (b"default", args[1]) if len(args) == 2 else (args[1], args[2])
            if self.in_multi:  # (a failed AUTH in EXEC must not make the tier serve as that user)
                self.state_in_multi.add(b"user")
                self.auth_in_multi = cred
                return Run(1, now)
            return self._state_capture(now, partial(self.on_auth, cred=cred))
        if name == b"HELLO":
            if self.in_multi:  # (it runs at EXEC, if at all: in the protocol it asks for then)
                self.state_in_multi.update((b"resp", b"name"))
                for i in range(2, len(args) - 2):
                    if args[i].upper() == b"AUTH":
                        self.state_in_multi.add(b"user")
                        self.auth_in_multi = (args[i + 1], args[i + 2])
                return Run(1, now)
            before = self.resp3
            if len(args) > 1 and args[1] in (b"2", b"3"):
                self.resp3 = args[1] == b"3"  # now, so pipelined SUBSCRIBEs are counted right
            return self._state_capture(now, partial(self.on_hello, args=args, resp3_before=before))
        if name == b"RESET":
            self.reset_request_state()
            return self._state_capture(now, self.on_reset_reply)
        if name == b"MULTI":
            self.in_multi = True
        elif name in (b"EXEC", b"DISCARD"):
            self.in_multi = False
            self.watching = False
            if name == b"DISCARD":
                self.state_in_multi, self.auth_in_multi = set(), None
        elif name == b"WATCH":
            self.watching = True
        elif name == b"UNWATCH":
            self.watching = False
        elif name == b"CLIENT" and len(args) >= 3:
            sub = args[1].upper()
            if self.in_multi and sub in _STATE_IN_MULTI:
                self.state_in_multi.add(_STATE_IN_MULTI[sub])
                return Run(1, now)
            if sub == b"SETNAME" and len(args) == 3:
                return Capture(now, partial(self.on_setname, name=args[2]))
            if sub == b"SETINFO" and len(args) == 4:
                return Capture(now, partial(self.on_setinfo, attr=args[2].upper(), value=args[3]))
            if sub == b"TRACKING":
                self.tracking = args[2].upper() == b"ON"
        return Run(1, now)

    def _state_capture(self, now: float, fn: Callable[[bytes], bytes | None]) -> Capture:
        self.state_pending += 1

        def done(frame: bytes) -> bytes | None:
            self.state_pending -= 1
            return fn(frame)

        return Capture(now, done)

    def on_select(self, frame: bytes, db: bytes) -> bytes:
        if frame.startswith(b"+"):
            self.db = int(db)
            self.db_changed()
        return frame

    def after_exec(self, now: float) -> tuple[bytes, Capture] | None:
        """After an EXEC whose transaction queued a SELECT or AUTH: the proxy's own CLIENT INFO, sent
        behind it, and the slot for its reply (read here, never the client's)."""
        if not self.state_in_multi:
            return None
        queued, self.state_in_multi = self.state_in_multi, set()
        return encode_command([b"CLIENT", b"INFO"]), self._state_capture(
            now, partial(self.on_client_info, queued=queued)
        )

    def on_client_info(self, frame: bytes, queued: set[bytes]) -> None:
        """CLIENT INFO's reply: the connection's state that its transaction queued a change of
        (``queued``), whatever the transaction did: its database, user (an AUTH or HELLO AUTH in it
        counts if the connection's user is now the one it named), name, protocol, tracking and
        library attributes."""
        cred, self.auth_in_multi = self.auth_in_multi, None
        if frame[:1] not in (b"$", b"="):
            discard_reply(frame)  # (an error is logged)
            return
        line = frame.split(b"\r\n")[1].strip()  # (RESP3 sends it as verbatim text, "txt:id=...")
        fields = dict(f.split(b"=", 1) for f in line.split(b" ") if b"=" in f)
        digits = fields.get(b"db", b"")
        if b"db" in queued and digits.isdigit() and int(digits) != self.db:
            self.db = int(digits)
            self.db_changed()
        current = as_str(self.auth[0]) if self.auth else "default"
        if cred is not None and fields.get(b"user") == cred[0] and as_str(cred[0]) != current:
            self.auth = cred  # (the same user as before keeps the credentials that worked)
            self.verified = True
        if b"name" in queued and b"name" in fields:
            self.client_name = fields[b"name"] or None
        if b"resp" in queued and fields.get(b"resp") in (b"2", b"3"):
            self.resp3 = self.replay_resp3 = fields[b"resp"] == b"3"
        if b"flags" in queued and b"flags" in fields:
            self.tracking = b"t" in fields[b"flags"]
        if b"lib" in queued:
            for attr in (b"LIB-NAME", b"LIB-VER"):
                value = fields.get(attr.lower())
                if value:
                    self.setinfo[attr] = value
                elif value is not None:
                    self.setinfo.pop(attr, None)

    def on_setname(self, frame: bytes, name: bytes) -> bytes:
        if frame.startswith(b"+"):
            self.client_name = name or None
        return frame

    def on_setinfo(self, frame: bytes, attr: bytes, value: bytes) -> bytes:
        if frame.startswith(b"+"):
            self.setinfo[attr] = value
        return frame

    def on_auth(self, frame: bytes, cred: tuple[bytes, bytes]) -> bytes:
        if frame.startswith(b"+"):
            self.auth = cred
            self.verified = True
        return frame

    def on_verify(self, frame: bytes) -> bytes:
        self.verify_pending = False
        # Only a success proves it: Redis reports some errors (an unknown command) before it
        # checks authentication.
        if not frame.startswith((b"-", b"!")):
            self.verified = True
        return frame

    def on_hello(self, frame: bytes, args: list[bytes], resp3_before: bool) -> bytes:
        if frame[:1] not in (b"%", b"*"):
            self.resp3 = resp3_before  # HELLO failed: the protocol did not change
            return frame
        self.resp3 = self.replay_resp3 = frame.startswith(b"%")
        self.verified = True  # HELLO answers NOAUTH to a connection that must authenticate first
        i = 2
        while i < len(args):
            word = args[i].upper()
            if word == b"AUTH" and i + 2 < len(args):
                self.auth = (args[i + 1], args[i + 2])
                i += 3
            elif word == b"SETNAME" and i + 1 < len(args):
                self.client_name = args[i + 1] or None
                i += 2
            else:
                i += 1
        return frame

    def prelude(self) -> list[bytes]:
        """Commands that put a fresh upstream connection in this client's state."""
        out: list[bytes] = []
        if self.replay_resp3 or (self.auth and self.client_name):
            hello: list[Any] = [b"HELLO", b"3" if self.replay_resp3 else b"2"]
            if self.auth:
                hello += [b"AUTH", *self.auth]
            if self.client_name:
                hello += [b"SETNAME", self.client_name]
            out.append(encode_command(hello))
        else:
            if self.auth:
                out.append(encode_command([b"AUTH", *self.auth]))
            if self.client_name:
                out.append(encode_command([b"CLIENT", b"SETNAME", self.client_name]))
        if self.db:
            out.append(encode_command([b"SELECT", str(self.db).encode()]))
        for attr, value in self.setinfo.items():
            out.append(encode_command([b"CLIENT", b"SETINFO", attr, value]))
        return out

    def poolable(self) -> bool:
        """Whether the connection is in the state a shared upstream connection is in (the URL's
        user and database, RESP2 or RESP3, no name, nothing stateful, replies on, no state change in
        flight): it may use the pool (proxy.multiplex)."""
        address = self.upstream_address
        auth = (address.username or "default", address.password) if address.password else None
        return (
            self.auth == auth
            and self.db == address.db
            and self.resp3 == self.replay_resp3
            and self.client_name is None
            and self.reply_mode == b"ON"
            and not self.state_pending
            and not self.stateful()
        )

    def stateful(self) -> bool:
        """Whether the connection holds state a new upstream connection cannot restore."""
        return (
            self.in_multi
            or self.watching
            or self.tracking
            or self.subscribed
            or self.passthrough_req
            or self.passthrough_rep
        )

    def reset_request_state(self) -> None:
        self.resp3 = False
        self.in_multi = self.watching = self.tracking = self.subscribed = False
        self.state_in_multi, self.auth_in_multi = set(), None
        self.passthrough_req = False
        self.reply_mode = b"ON"

    def on_reset_reply(self, frame: bytes) -> bytes:
        self.passthrough_rep = False
        if frame == RESET_FRAME:
            self.default_state()
            self.verified = False
        return frame

    def append_info_section(self, frame: bytes) -> bytes:
        reply = decode_reply(frame)
        if not isinstance(reply, bytes):
            return frame  # an error or something unexpected: pass it on untouched
        # hiredis strips the "txt:" format prefix of a RESP3 verbatim string.
        section = self.stats.info_text()
        if self.stats.ab is not None:
            section += b"\r\n" + self.stats.ab_text()
        text = reply + b"\r\n" + section if reply.strip() else section
        return encode_verbatim(text) if frame.startswith(b"=") else encode_bulk(text)

    def admin_refusal(self, what: str) -> bytes | None:
        """None if this connection may run ``what`` (a command that changes the proxy), else the
        error it gets: its ACL user (the one it authenticated as, or the upstream URL's) must be one
        of ``admin_users``, and, with no credentials at all, Redis must be taking connections
        without them (the health check's unauthenticated PING is answered) or have accepted this
        one."""
        if self.state_pending:
            return encode_error(f"ERR {what}: an AUTH, HELLO or RESET of this connection is still in flight")
        creds, user = self.reader()
        if user not in self.admin_users:
            return encode_error(f"NOPERM user '{user}' may not run {what} (the proxy's admin_users)")
        if creds is None and not self.verified and self.stats.upstream_status != "up":
            return encode_error("NOAUTH Authentication required.")
        return None

    def predis_command(self, args: list[bytes]) -> bytes:
        if self.in_multi:
            return encode_error("ERR PREDIS is not allowed inside MULTI")
        sub = args[1].upper() if len(args) > 1 else b""
        if sub == b"STATS" and len(args) == 2:
            return encode_bulk(self.stats.info_text())
        if sub == b"STATS" and len(args) == 3 and args[2].upper() == b"JSON":
            return encode_bulk(self.stats.json_text())
        if sub == b"STATS" and len(args) == 3 and args[2].upper() == b"WORKERS":
            return encode_bulk(self.stats.workers_json())
        if sub == b"AB" and len(args) == 2:
            return encode_bulk(self.stats.ab_text())
        if sub == b"AB" and len(args) == 3 and args[2].upper() == b"JSON":
            return encode_bulk(json.dumps(self.stats.ab_report()).encode())
        if sub in (b"AB", b"MODEL") and len(args) == 3 and args[2].upper() in (b"RESET", b"ROLLBACK"):
            refused = self.admin_refusal(f"PREDIS {sub.decode()} {args[2].upper().decode()}")
            if refused is not None:
                return refused
        if sub == b"AB" and len(args) == 3 and args[2].upper() == b"RESET":
            if self.stats.ab is None:
                return encode_error("ERR no A/B experiment is running (predis serve --ab A=SPEC,B=SPEC)")
            self.stats.ab.reset_ab()
            return b"+OK\r\n"
        if sub == b"MODEL" and len(args) == 2:
            return encode_bulk(json.dumps(self.stats.model_report()).encode())
        if sub == b"MODEL" and len(args) == 3 and args[2].upper() == b"ROLLBACK":
            try:
                changes = self.stats.model_rollback()
            except ValueError as exc:
                return encode_error(f"ERR {exc}")
            return encode_bulk(json.dumps(changes).encode())
        if sub == b"HELP":
            lines = [
                b"PREDIS STATS: the # Predis section of INFO, as text",
                b"PREDIS STATS JSON: the same figures as a JSON object",
                b"PREDIS STATS WORKERS: each worker's figures (--workers) and which one answered, as JSON",
                b"PREDIS AB: the # Predis A/B section (live prefetching's arms and their tests)",
                b"PREDIS AB JSON: the same as a JSON object (null when no experiment runs)",
                b"PREDIS AB RESET: start the experiment's figures again",
                b"PREDIS MODEL: each model arm's model (version, when loaded, swaps, gate figures) as JSON",
                b"PREDIS MODEL ROLLBACK: make each model arm's registry current at its version before",
            ]
            return b"*%d\r\n" % len(lines) + b"".join(b"+%s\r\n" % line for line in lines)
        text = sub.decode(errors="replace")
        return encode_error(
            f"ERR unknown subcommand or wrong number of arguments for 'PREDIS {text}'. Try PREDIS HELP."
        )
