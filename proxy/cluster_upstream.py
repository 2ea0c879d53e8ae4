"""A Redis Cluster as the proxy's upstream (``--upstream redis-cluster://host:port[,host:port...]``).

Every connection the proxy opens upstream (a client's own, a shared one, the filler's, the
invalidation channel's, the health check's) is, with a cluster, a *virtual* connection
(``ClusterSession``): towards the rest of the proxy it is one Redis connection (a transport that
takes requests and gives back replies in order, as a TCP connection to one Redis would), and
towards the cluster it is a cluster-aware client with a connection per node it needs
(``NodeLink``). So the tier, the filler, the multiplexed pool and the session replay work over a
cluster unchanged. What a virtual connection does with each request:

* a command whose keys are in one slot goes to that slot's master (``ClusterTopology``'s map, read
  with ``CLUSTER SLOTS``); ``MOVED`` is followed (the map patched and refreshed) and ``ASK`` too
  (with ``ASKING``), the client seeing neither (at most ``MAX_REDIRECTS`` each);
* ``MGET``, ``MSET``, ``DEL``, ``UNLINK``, ``EXISTS``, ``TOUCH`` whose keys span slots are split by
  slot and the replies merged (``proxy.cluster``); any other command whose keys span slots gets
  Redis's ``CROSSSLOT`` error;
* commands without keys go to one node (the session's "home", the first master), except
  ``FLUSHALL``/``FLUSHDB``/``SCRIPT LOAD|FLUSH`` (every master), ``DBSIZE`` (summed), ``KEYS``
  (concatenated) and ``SCAN`` (each master in turn behind one cursor);
* connection state (``HELLO``, ``AUTH``, ``SELECT``, ``READONLY``, ``CLIENT SETNAME|SETINFO|
  TRACKING|NO-EVICT|NO-TOUCH``) is answered by the home node and replayed on every node link;
* a transaction goes whole to the node of its first key (``WATCH``'s key, or the first keyed
  command after ``MULTI``; Redis then refuses keys of other slots in it). A ``MOVED`` inside one
  (the map was stale) moves it whole to the new master, sent again from its ``MULTI``; with
  ``WATCH``, whose watch the old node held, it is aborted as when a watched key changed (``EXEC``
  answers a null array; the client retries). An ``ASK`` or ``TRYAGAIN`` inside one (its slot
  migrating) defers it: the rest is answered ``QUEUED``, and at ``EXEC`` it is run whole, again
  and again, at the importing node (``ASKING``) or the slot's master, until its keys are in one
  place (``Transaction``), what the client sends after it waiting for it;
* ``SUBSCRIBE``, ``PSUBSCRIBE``, ``SSUBSCRIBE``, ``MONITOR``, ``SYNC`` make the connection a pipe to
  one node (every frame passes through);
* client-side tracking with ``REDIRECT`` (the hot tier's coherence): ``CLIENT ID`` answers a
  virtual id, and the connection that gave it opens a link to every master and learns each one's
  own id; ``CLIENT TRACKING ON REDIRECT <virtual id>`` is sent to each node naming that node's id,
  so every key's invalidation comes from the node that owns it. A node link lost loses the whole
  virtual connection (the proxy then does what it does when its Redis connection drops: for the
  invalidation channel, flush the tier), and a tracked connection's loss loses the one its
  tracking redirects to, as nothing tells what the lost node's tracking covered.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import ssl
from binascii import crc_hqx
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
import structlog

from proxy.cluster import (
    CROSSSLOT,
    MULTI_KEY,
    SLOTS,
    Node,
    SlotMap,
    hash_tag,
    key_slot,
    parse_redirect,
    split,
)
from proxy.config import Settings, UpstreamAddress
from proxy.keyspace import CommandTable
from proxy.resp import encode_command
from proxy.scanner import PUSH, ReplyScanner, decode_reply
from proxy.upstream import UpstreamOpener, discard_unsent

log = structlog.get_logger("predis.cluster")

MAX_REDIRECTS = 5
# A transaction deferred by a migrating slot is run again after these pauses (doubling), for at
# most half the command timeout (the client's EXEC then gets TRYAGAIN, as a migrating slot's
# multi-key command does).
TX_RETRY_FIRST = 0.01
TX_RETRY_MOST = 0.2
# Connection state every node link of a virtual connection must share: (name, subcommand) -> the
# commands are replayed on a new link in the order they were first given.
STATE = {
    (b"HELLO", b""),
    (b"AUTH", b""),
    (b"SELECT", b""),
    (b"READONLY", b""),
    (b"READWRITE", b""),
    (b"CLIENT", b"SETNAME"),
    (b"CLIENT", b"SETINFO"),
    (b"CLIENT", b"TRACKING"),
    (b"CLIENT", b"NO-EVICT"),
    (b"CLIENT", b"NO-TOUCH"),
}
STATE_IN_MULTI_ERROR = (
    "-ERR Predis: {} inside MULTI is not supported with a Redis Cluster upstream "
    "(it would change the connection to one node only)\r\n"
)
FAN_OUT = {  # keyless commands every master runs: how their replies are merged
    b"FLUSHALL": "first",
    b"FLUSHDB": "first",
    b"DBSIZE": "sum",
    b"KEYS": "concat_all",
}
PIPE = {b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"MONITOR", b"SYNC", b"PSYNC"}
# Every command routed otherwise than by its keys alone (the rest take ``_by_keys`` at once).
SPECIAL = frozenset(
    {name for name, _ in STATE}
    | set(FAN_OUT)
    | PIPE
    | {b"CLIENT", b"SCRIPT", b"MULTI", b"EXEC", b"DISCARD", b"SCAN"}
)


class Request:
    """One command sent to a node, and its reply once it came (or a merged reply of its parts)."""

    __slots__ = (
        "args",
        "data",
        "reply",
        "parent",
        "parts",
        "how",
        "left",
        "callback",
        "redirects",
        "tx",
        "state",
        "piped",
        "scan",
        "txn",
        "gen",
    )

    def __init__(
        self,
        args: list[bytes],
        callback: Callable[[bytes], None] | None = None,
        parent: Request | None = None,
    ) -> None:
        self.args = args
        self.data = encode_command(args)
        self.reply: bytes | None = None
        self.parent = parent
        self.parts: list[Request] = []
        self.how = ""
        self.left = 0
        self.callback = callback  # an internal request: its reply goes here, not to the client
        self.redirects = 0
        self.tx = False  # sent inside MULTI: a redirect is Redis's verdict, not followed
        self.state: tuple[bytes, bytes] | None = None  # the connection state it sets, if any
        self.piped = False  # its replies pass straight through (subscribed, MONITOR...)
        self.scan: tuple[int, int] | None = None  # SCAN: (the master's place, how many masters)
        self.txn: Transaction | None = None  # the transaction it was sent in (MULTI to EXEC)
        self.gen = 0  # ...and where that transaction was when it was sent (Transaction.gen)


class Transaction:
    """One MULTI ... EXEC as sent: its node, every request of it sent (to send again elsewhere),
    and how often it moved. A MOVED inside it (the slot map was stale) moves it whole to the new
    master, or, with WATCH (whose watch the old node held), aborts it as a changed watched key.
    An ASK or TRYAGAIN inside it (its slot is migrating) defers it: the rest is answered QUEUED
    here, and at EXEC it is run whole where its keys all are (``ClusterSession._attempt``)."""

    __slots__ = (
        "node",
        "gen",
        "requests",
        "watch",
        "aborted",
        "deferred",
        "slot",
        "ask_node",
        "deadline",
        "exec_request",
        "delay",
        "hops",
        "holding",
        "refused",
    )

    def __init__(self, node: Node | None, watch: bool) -> None:
        self.node = node
        self.gen = 0  # bumped at each move: a reply to a request sent before it is not the client's
        self.requests: list[Request] = []
        self.watch = watch
        self.aborted = False
        self.deferred = False  # an ASK or TRYAGAIN came: run whole at EXEC
        self.refused = False  # a command was refused in it (connection state): EXEC answers EXECABORT
        self.slot = -1  # (deferred) its slot
        self.ask_node: Node | None = None  # (deferred) where ASK said all its keys are
        self.deadline = 0.0  # (deferred) when its runs give up
        self.exec_request: Request | None = None  # (deferred) the client's EXEC, answered by the run
        self.delay = 0.0  # (deferred) the pause before the next run
        self.hops = 0  # (deferred) runs sent again at once (a MOVED, an ASK) since the last pause
        self.holding = False  # (deferred) what the client sends after its EXEC waits for it


def _ignore(frame: bytes) -> None:
    if frame[:1] == b"-":  # (CLIENT SETINFO on Redis 7.0, say: the home node's refusal was the client's)
        log.debug(
            "cluster node refused replayed connection state", error=frame.strip().decode(errors="replace")
        )


class ClusterTopology:
    """The slot map and Redis's command table, read from any node that answers (the seeds first,
    then every node the map names), refreshed on redirects and on lost links."""

    def __init__(
        self, settings: Settings, address: UpstreamAddress, tls: ssl.SSLContext | None = None
    ) -> None:
        self.settings = settings
        self.tls = tls  # (rediss-cluster://: every node connection is TLS, verified as rediss:// is)
        self.password = address.password
        self.username = address.username or "default"
        self.seeds = [Node(h, p) for h, p in address.cluster]
        self.map: SlotMap | None = None
        self.overrides: dict[int, Node] = {}  # slots a MOVED reassigned since the last refresh
        self.table: CommandTable | None = None
        self.task: asyncio.Task[None] | None = None
        self.ids = itertools.count(1)
        self.targets: dict[int, ClusterSession] = {}  # virtual CLIENT ID -> its connection
        self.refreshes = 0
        self.redirects = 0  # MOVED followed
        self.asks = 0  # ASK followed (a slot migrating)
        self.deferred = 0  # transactions deferred by a migrating slot (run whole at EXEC)
        self.by_slot: list[Node | None] = [None] * SLOTS
        self.replica_reads = settings.cluster_replica_reads
        self.replicas_by_slot: list[list[Node]] = [[] for _ in range(SLOTS)]
        self.replicas: set[Node] = set()

    def master_for(self, slot: int) -> Node | None:
        return self.by_slot[slot]

    def _index(self) -> None:
        """Each slot's master, one list lookup on the request path (the map, then MOVED's)."""
        by_slot: list[Node | None] = [None] * SLOTS
        replicas: list[list[Node]] = [[] for _ in range(SLOTS)]
        for start, end, nodes in self.map.ranges if self.map is not None else []:
            if nodes:
                by_slot[start : end + 1] = [nodes[0]] * (end - start + 1)
                replicas[start : end + 1] = [nodes[1:]] * (end - start + 1)
        self.by_slot, self.replicas_by_slot = by_slot, replicas
        self.replicas = {n for _, _, nodes in self.map.ranges for n in nodes[1:]} if self.map else set()
        for slot, node in self.overrides.items():
            self.by_slot[slot] = node

    def masters(self) -> list[Node]:
        return self.map.masters() if self.map is not None else []

    def home(self) -> Node:
        masters = self.masters()
        return masters[0] if masters else self.seeds[0]

    async def ready(self) -> None:
        """A map and a command table, waiting for a refresh under way (after a failover a new
        connection should use the new map)."""
        if self.task is not None and not self.task.done():
            await asyncio.shield(self.task)
        if self.map is None or self.table is None:
            await self.refresh()

    def refresh_soon(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._refresh_logged())

    async def refresh(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._refresh())
        await asyncio.shield(self.task)

    async def _refresh_logged(self) -> None:
        try:
            await self._refresh()
        except OSError as exc:
            log.warning("cluster slot map refresh failed", error=str(exc))

    async def _refresh(self) -> None:
        known = [n for nodes in (self.map.ranges if self.map else []) for n in nodes[2]]
        candidates = list(dict.fromkeys([*known, *self.seeds]))
        last: Exception | None = None
        for node in candidates:
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    slots, table = await self._ask(node)
            except (OSError, TimeoutError, ValueError, hiredis.ProtocolError) as exc:
                last = exc
                continue
            new = SlotMap.from_slots_reply(slots)
            if new.covered() == 0:
                last = ConnectionError(f"{node.host}:{node.port} serves no slots")
                continue
            changed = self.map is None or new.ranges != self.map.ranges or self.overrides
            self.map, self.overrides = new, {}
            if changed:  # (the health check refreshes every second: most find the same map)
                self._index()
            if table is not None:
                self.table = table
            self.refreshes += 1
            return
        raise ConnectionError(f"no Redis Cluster node answered CLUSTER SLOTS ({last})")

    async def _ask(self, node: Node) -> tuple[list[Any], CommandTable | None]:
        reader, writer = await asyncio.open_connection(
            node.host, node.port, ssl=self.tls, server_hostname=node.host if self.tls else None
        )
        try:
            commands = [[b"CLUSTER", b"SLOTS"]]
            if self.password:
                commands.insert(0, [b"AUTH", self.username.encode(), self.password.encode()])
            if self.table is None:
                commands.append([b"COMMAND"])
            writer.write(b"".join(encode_command(c) for c in commands))
            parser = hiredis.Reader()
            replies: list[Any] = []
            while len(replies) < len(commands):
                data = await reader.read(1 << 16)
                if not data:
                    raise ConnectionError("closed while answering")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    replies.append(reply)
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    raise ConnectionError(str(reply))
            if self.password:
                del replies[0]
            table = CommandTable.from_reply(replies[1]) if len(replies) > 1 else None
            return replies[0], table
        finally:
            writer.close()

    def moved(self, slot: int, node: Node) -> None:
        self.redirects += 1
        self.overrides[slot] = node
        self.by_slot[slot] = node
        self.refresh_soon()


class VirtualTransport(asyncio.Transport):
    """The proxy's side of a ``ClusterSession``: what a TCP transport to one Redis would be."""

    def __init__(self, session: ClusterSession) -> None:
        super().__init__()
        self.session = session
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closing:
            self.session.feed(bytes(data))

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.session.close()

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("redis-cluster", 0)
        return default

    def pause_reading(self) -> None:
        self.session.pause(True)

    def resume_reading(self) -> None:
        self.session.pause(False)

    def is_reading(self) -> bool:
        return not self.session.paused

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return False


class NodeLink(asyncio.Protocol):
    """One virtual connection's TCP connection to one cluster node: requests go out in order
    (waiting in ``outbox`` while it opens, behind the connection state replayed first), replies
    come back to the requests in ``waiting`` in order; push frames go straight to the session."""

    def __init__(self, session: ClusterSession, node: Node) -> None:
        self.session = session
        self.node = node
        self.transport: asyncio.Transport | None = None
        self.up = False
        self.outbox: list[Request] = []
        self.waiting: deque[Request] = deque()
        self.scanner = ReplyScanner()
        self.partial: list[bytes] = []
        self.pipe = False  # every frame passes straight through (subscribed, MONITOR, SYNC)
        self.out: list[bytes] = []  # requests written this event-loop turn, sent as one write

    async def open(self, settings: Settings) -> None:
        loop = asyncio.get_running_loop()
        session = self.session
        try:
            async with asyncio.timeout(settings.connect_timeout):
                tls = session.topology.tls
                await loop.create_connection(
                    lambda: self,
                    self.node.host,
                    self.node.port,
                    ssl=tls,
                    server_hostname=self.node.host if tls else None,
                )
                prelude = await session.prelude_for(self.node)
        except (OSError, TimeoutError) as exc:
            session.lost(self, exc)
            return
        if session.closed or self.transport is None:
            if self.transport is not None:
                self.transport.abort()
            return
        for args, callback in prelude:
            self._write(Request(args, callback=callback))
        self.up = True
        for request in self.outbox:
            self._write(request)
        self.outbox.clear()
        self.push()

    def send(self, request: Request) -> None:
        if self.up:
            self._write(request)
        else:
            self.outbox.append(request)

    def _write(self, request: Request) -> None:
        if not request.piped:
            self.waiting.append(request)
        if not self.out:
            self.session.mark(self)
        self.out.append(request.data)

    def push(self) -> None:
        """Send what was written since the last push, in one write (one system call for a
        pipeline's requests to this node, not one each)."""
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        session = self.session
        if self.pipe and not self.waiting:
            session.deliver_piped(data)
            return
        session.feeding += 1  # (redirected requests go out in one write after these replies)
        try:
            self._replies(data)
        finally:
            session.feeding -= 1
        session.push_writes()

    def _replies(self, data: bytes) -> None:
        session = self.session
        try:
            ends = self.scanner.feed(data)
        except ValueError as exc:
            session.lost(self, ConnectionError(f"bad reply from {self.node.host}:{self.node.port}: {exc}"))
            return
        start = 0
        for end, kind in ends:
            if self.partial:
                self.partial.append(data[start:end])
                frame = b"".join(self.partial)
                self.partial = []
            else:
                frame = data[start:end]
            start = end
            if kind == PUSH:
                session.deliver_push(frame)
            elif self.waiting:
                session.on_reply(self, self.waiting.popleft(), frame)
                if self.pipe and not self.waiting:  # (the replies owed before it became a pipe)
                    self.partial = []
                    session.flush()
                    if end < len(data):
                        session.deliver_piped(data[end:])
                    return
            else:
                session.lost(self, ConnectionError("a reply nothing asked for"))
                return
        if start < len(data):
            self.partial.append(data[start:])
        session.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.up = False
        self.session.lost(self, exc or ConnectionResetError(f"{self.node.host}:{self.node.port} closed"))

    def close(self) -> None:
        """Reset, not closed: requests the kernel has not sent yet must never reach the node
        later (as ``UpstreamLink.drop``: a write the client was told had failed would land)."""
        if self.transport is not None:
            discard_unsent(self.transport)
            self.transport.abort()


class ClusterSession:
    """One virtual connection: the proxy's requests in, routed to the nodes; replies out, in the
    order the requests came."""

    def __init__(self, opener: ClusterOpener, protocol: asyncio.BaseProtocol) -> None:
        self.opener = opener
        self.topology = opener.topology
        self.protocol = protocol
        self.transport = VirtualTransport(self)
        self.parser = hiredis.Reader()
        self.pending: deque[Request] = deque()
        self.links: dict[Node, NodeLink] = {}
        self.state: dict[tuple[bytes, bytes], list[bytes]] = {}
        self.resp3 = False
        self.home = self.topology.home()
        self.in_multi = False
        self.tx_node: Node | None = None
        self.tx_asking = False  # WATCH was sent on by ASK: the transaction goes there after ASKING
        self.held: list[Request] = []  # MULTI and what follows it until a key names the node
        self.txn: Transaction | None = None  # the open transaction (MULTI sent or held)
        self.pipe: NodeLink | None = None
        self.piped_early: list[bytes] = []  # the pipe's bytes that came before the replies owed
        self.closed = False
        self.paused = False
        self.flush_scheduled = False
        self.feeding = 0  # inside feed or a link's replies: written requests are pushed after
        self.dirty: list[NodeLink] = []  # links with requests written and not yet pushed
        self.push_scheduled = False
        self.vid = 0  # the virtual CLIENT ID, once asked
        self.node_ids: dict[Node, int] = {}
        self.id_waiters: dict[Node, asyncio.Future[int]] = {}
        self.tracking_to = 0  # the virtual id CLIENT TRACKING ... REDIRECT names
        self.spread = next(self.topology.ids)  # which of a slot's replicas it reads (replica reads)
        # Requests held while a deferred transaction or a request refused with TRYAGAIN (a slot
        # migrating) is run again: what the client sends after it waits for it (``holds``: how
        # many such are running)...
        self.stalled: list[list[bytes]] | None = None
        self.holds = 0
        # ...and so do the requests sent after it that came back redirected.
        self.redirected: list[tuple[Request, tuple[str, int, Node]]] = []
        self.retries: dict[Request, list[float]] = {}  # TRYAGAIN: request -> [deadline, pause]

    # ------------------------------------------------------------------ requests in

    def feed(self, data: bytes) -> None:
        if self.closed:
            return
        parser = self.parser
        parser.feed(data)
        self.feeding += 1
        try:
            while (args := parser.gets()) is not False:
                if not isinstance(args, list) or not args or not all(isinstance(a, bytes) for a in args):
                    raise ValueError("not a command")
                self._command(args)
        except (ValueError, hiredis.ProtocolError) as exc:
            self.lost(None, ConnectionError(f"cannot route a request: {exc}"))
        finally:
            self.feeding -= 1
        self.push_writes()

    def mark(self, link: NodeLink) -> None:
        """``link`` has requests to push: now if inside ``feed`` or a link's replies (at their
        end), else at the next event-loop turn."""
        self.dirty.append(link)
        if not self.feeding and not self.push_scheduled:
            self.push_scheduled = True
            asyncio.get_running_loop().call_soon(self.push_writes)

    def push_writes(self) -> None:
        self.push_scheduled = False
        if self.feeding:
            return
        dirty, self.dirty = self.dirty, []
        for link in dirty:
            link.push()

    def _command(self, args: list[bytes]) -> None:
        if self.stalled is not None:
            self.stalled.append(args)
            return
        name = args[0].upper()
        request = Request(args)
        if self.pipe is not None:
            request.piped = True  # (its replies pass straight through)
            self.pipe.send(request)
            return
        self.pending.append(request)
        if name not in SPECIAL and not self.in_multi:  # (the common case: routed by its keys)
            topology = self.topology
            sliced = topology.table.sliced.get(name) if topology.table is not None else None
            if sliced is not None and not topology.replica_reads and name != b"WATCH":
                keys = args[sliced[0] : sliced[1] : sliced[2]]
                if len(keys) == 1:  # (GET, SET, INCR...: one key, its slot's master, at once)
                    key = keys[0]
                    node = topology.by_slot[crc_hqx(hash_tag(key) if b"{" in key else key, 0) & 16383]
                    if node is not None:
                        self._send(node, request)
                        return
            self._by_keys(name, request)
            return
        sub = args[1].upper() if len(args) > 1 and name in (b"CLIENT", b"SCRIPT") else b""
        if self.in_multi or name in (b"MULTI", b"EXEC", b"DISCARD"):
            if self.in_multi and self.txn is not None and ((name, sub) in STATE or (name, b"") in STATE):
                # Run inside the transaction it would change one node's link of the connection
                # only: refused when queued, as Redis refuses a bad command, so EXEC aborts.
                self.txn.refused = True
                what = (name + b" " + sub if sub else name).decode("ascii", "replace")
                self._answer(request, STATE_IN_MULTI_ERROR.format(what).encode())
                return
            self._transaction(name, request)
            return
        if (name, sub) in STATE or (name, b"") in STATE:
            self._state(name, sub, request)
            return
        if name == b"CLIENT" and sub == b"ID":
            self._client_id(request)
            return
        if name == b"SCAN":
            self._scan(request)
            return
        if name in PIPE:
            self._pipe(name, request)
            return
        if name in FAN_OUT or (name == b"SCRIPT" and sub in (b"LOAD", b"FLUSH")):
            self._fan_out(FAN_OUT.get(name, "first"), request)
            return
        self._by_keys(name, request)

    def _by_keys(self, name: bytes, request: Request) -> None:
        args = request.args
        table = self.topology.table
        keys = table.keys(name, args) if table is not None else None
        if not keys:  # no keys, or none the table can tell: the home node
            where = self.tx_node or self.home  # (UNWATCH: where WATCH went)
            if name == b"UNWATCH":
                self.tx_node, self.tx_asking = None, False
            self._send(where, request)
            return
        slot = key_slot(keys[0])
        for key in keys[1:]:
            if key_slot(key) != slot:
                self._cross_slot(name, request)
                return
        node: Node | None
        topology = self.topology
        if name == b"WATCH":
            node = self.tx_node or topology.master_for(slot)
            self.tx_node = node
            if self.tx_asking and node is not None:  # (the watch is at a slot's importing node)
                self._send(node, Request([b"ASKING"], callback=_ignore))
        elif (
            topology.replica_reads
            and not self.tracking_to
            and self.tx_node is None
            and table is not None
            and table.readonly(name)
            and topology.replicas_by_slot[slot]
        ):
            replicas = topology.replicas_by_slot[slot]
            node = replicas[self.spread % len(replicas)]
        else:
            node = topology.master_for(slot)
        if node is None:
            self._answer(request, b"-CLUSTERDOWN Hash slot not served\r\n")
            self.topology.refresh_soon()
            return
        self._send(node, request)

    def _cross_slot(self, name: bytes, request: Request) -> None:
        parts = split(request.args) if name in MULTI_KEY else None
        if not parts:
            self._answer(request, CROSSSLOT)
            return
        request.how = MULTI_KEY[name][1]
        request.left = len(parts)
        for part in parts:
            child = Request(part.args, parent=request)
            request.parts.append(child)
            node = self.topology.master_for(part.slot)
            if node is None:
                self._answer(request, b"-CLUSTERDOWN Hash slot not served\r\n")
                return
            self._send(node, child)

    def _scan(self, request: Request) -> None:
        """SCAN over every master in turn, as one cursor: a cursor is the master's own cursor
        times the number of masters, plus that master's place among them (sorted by address);
        a master done, the next one starts at 0. Redis's guarantee (every key present for the
        whole scan is returned) holds while the masters and their slots stay as they are; a
        reshard or a failover during a scan may miss or repeat keys, as with a cluster client."""
        args = request.args
        masters = sorted(self.topology.masters() or [self.home], key=lambda n: (n.host, n.port))
        cursor = args[1] if len(args) > 1 else b""
        if not cursor.isdigit():  # (Redis's own error for a bad cursor or arity)
            self._send(self.home, request)
            return
        value = int(cursor)
        place, own = value % len(masters), value // len(masters)
        request.how = "scan"
        request.scan = (place, len(masters))
        request.left = 1
        child = Request([args[0], str(own).encode(), *args[2:]], parent=request)
        request.parts.append(child)
        self._send(masters[place], child)

    def _fan_out(self, how: str, request: Request) -> None:
        masters = self.topology.masters() or [self.home]
        request.how = how
        request.left = len(masters)
        for node in masters:
            child = Request(request.args, parent=request)
            request.parts.append(child)
            self._send(node, child)

    def _transaction(self, name: bytes, request: Request) -> None:
        """MULTI and what follows it to EXEC or DISCARD: to the node of WATCH's key, else of the
        first keyed command. Until a key names the node, MULTI is answered here (+OK) and keyless
        commands too (+QUEUED), and they are sent, their replies dropped, when it is known."""
        request.tx = True
        if name == b"EXEC" and self.txn is not None and self.txn.refused:
            self._refused_exec(request, self.txn)
            return
        if name == b"MULTI" and not self.in_multi:
            self.in_multi = True
            self.txn = Transaction(self.tx_node, watch=self.tx_node is not None)
            if self.tx_node is None:
                self._answer(request, b"+OK\r\n")
                self.held.append(Request(request.args, callback=_ignore))
            else:
                if self.tx_asking:  # (its flag lasts inside MULTI, to EXEC)
                    self._send(self.tx_node, Request([b"ASKING"], callback=_ignore))
                self._send_tx(request)
            return
        txn = self.txn
        if txn is not None and txn.aborted:  # (a watch lost to a moved slot: nothing is sent)
            self._answer(request, self._aborted_reply(name))
        elif txn is not None and txn.deferred:  # (its slot is migrating: run whole at EXEC)
            txn.requests.append(request)
            self._deferred_step(request, txn)
        elif self.tx_node is None:
            table = self.topology.table
            keys = table.keys(name, request.args) if table is not None else None
            if keys:
                self.tx_node = self.topology.master_for(key_slot(keys[0])) or self.home
            elif name not in (b"EXEC", b"DISCARD"):
                self._answer(request, b"+QUEUED\r\n")
                self.held.append(Request(request.args, callback=_ignore))
                return
            for held in self.held:
                self._send_tx(held)
            self.held.clear()
            self._send_tx(request)
        else:
            self._send_tx(request)
        if name in (b"EXEC", b"DISCARD"):
            self.in_multi = False
            self.tx_node, self.tx_asking = None, False
            self.txn = None

    def _refused_exec(self, request: Request, txn: Transaction) -> None:
        """EXEC of a transaction a command was refused in: EXECABORT, as Redis answers, and the
        transaction discarded where it was opened (``_redirect_in_transaction`` answers the
        replies it still owes)."""
        if self.tx_node is not None and not txn.deferred:  # (deferred: _defer discarded it)
            self._send(txn.node or self.tx_node, Request([b"DISCARD"], callback=_ignore))
        txn.deferred = False
        self.held.clear()  # (MULTI and keyless commands never sent: no node was chosen)
        self._answer(request, b"-EXECABORT Transaction discarded because of previous errors.\r\n")
        self.in_multi = False
        self.tx_node, self.tx_asking = None, False
        self.txn = None

    def _send_tx(self, request: Request) -> None:
        txn = self.txn
        node = self.tx_node or self.home
        if txn is not None:
            request.txn, request.gen = txn, txn.gen
            txn.node = node
            txn.requests.append(request)
        self._send(node, request)

    def _aborted_reply(self, name: bytes) -> bytes:
        """A request of a transaction aborted for its watch: EXEC's reply when a watched key
        changed (a null array), DISCARD's OK, any other command's QUEUED."""
        if name == b"EXEC":
            return b"_\r\n" if self.resp3 else b"*-1\r\n"
        return b"+OK\r\n" if name == b"DISCARD" else b"+QUEUED\r\n"

    def _redirect_in_transaction(self, request: Request, txn: Transaction, frame: bytes) -> bool:
        """A reply to a request of a transaction: True when it is handled here, not the client's.
        From a node the transaction has left: sent again where it is now (or answered, if it was
        aborted). A MOVED: without WATCH, the transaction so far is sent again to the new master
        (MULTI and the commands before this one, their replies dropped: the client had them) and
        this one after it; with WATCH, it is aborted (the old node held the watch)."""
        if txn.aborted:
            self._answer_tx(request, self._aborted_reply(request.args[0].upper()))
            return True
        if txn.refused and txn is not self.txn:  # (its EXEC was answered EXECABORT)
            # A node's own answer is the client's (QUEUED, or an error of that command); one that
            # would have moved or deferred it is answered as Redis would have, QUEUED.
            if request.gen == txn.gen and not frame.startswith((b"-ASK ", b"-TRYAGAIN", b"-MOVED ")):
                return False
            self._answer_tx(request, self._aborted_reply(request.args[0].upper()))
            return True
        if request.gen != txn.gen:
            if txn.deferred:
                self._deferred_step(request, txn)
                return True
            request.gen = txn.gen
            self._send(txn.node or self.home, request)
            return True
        if frame.startswith((b"-ASK ", b"-TRYAGAIN")):
            self._defer(request, txn, frame)
            return True
        if not frame.startswith(b"-MOVED ") or txn.gen >= MAX_REDIRECTS:
            return False
        redirect = parse_redirect(frame)
        if redirect is None:
            return False
        _, slot, node = redirect
        self.topology.moved(slot, node)
        old = txn.node or self.home
        self._send(old, Request([b"DISCARD"], callback=_ignore))  # (its MULTI there, closed)
        if txn.watch:
            txn.aborted = True
            self._answer_tx(request, self._aborted_reply(request.args[0].upper()))
            return True
        txn.gen += 1
        txn.node = node
        if self.txn is txn:
            self.tx_node = node  # (what the client sends next in it goes there too)
        self._send(node, Request([b"MULTI"], callback=_ignore))
        for sent in txn.requests:
            if sent is request:
                break
            if sent.args[0].upper() != b"MULTI":
                self._send(node, Request(sent.args, callback=_ignore))
        request.gen = txn.gen
        self._send(node, request)
        return True

    def _defer(self, request: Request, txn: Transaction, frame: bytes) -> None:
        """An ASK or TRYAGAIN inside a transaction: its slot is migrating, and the node flagged
        it (its EXEC would answer EXECABORT). Its MULTI there is closed; with WATCH it is aborted
        (the node held the watch), else deferred: what the client sends in it is answered QUEUED
        here (Redis checked the command before it redirected it) and at EXEC it runs whole."""
        self._send(txn.node or self.home, Request([b"DISCARD"], callback=_ignore))
        txn.gen += 1  # (the replies still owed by that node are not the client's)
        if txn.watch:
            txn.aborted = True
            self._answer_tx(request, self._aborted_reply(request.args[0].upper()))
            return
        txn.deferred = True
        self.topology.deferred += 1
        redirect = parse_redirect(frame)
        if redirect is not None:  # ASK: the slot, and where the keys the command named are
            txn.slot, txn.ask_node = redirect[1], None
        else:
            txn.slot = self._slot_of(txn)
        if self.txn is not txn:  # (its EXEC is sent: what the client sent after it waits for it)
            self._hold_for(txn)
        self._deferred_step(request, txn)

    def _keys(self, args: list[bytes]) -> list[bytes] | None:
        """A command's keys by Redis's command table (None before the table is read)."""
        table = self.topology.table
        return table.keys(args[0].upper(), args) if table is not None else None

    def _slot_of(self, txn: Transaction) -> int:
        for request in txn.requests:
            keys = self._keys(request.args)
            if keys:
                return key_slot(keys[0])
        return -1

    def _deferred_step(self, request: Request, txn: Transaction) -> None:
        """A request of a deferred transaction: EXEC runs it; anything else gets the reply a node
        queuing it would give."""
        name = request.args[0].upper()
        if name == b"EXEC":
            txn.exec_request = request
            txn.deadline = asyncio.get_running_loop().time() + self.opener.settings.command_timeout / 2
            txn.delay = TX_RETRY_FIRST
            self._hold_for(txn)
            self._attempt(txn)
        elif name == b"DISCARD":
            txn.deferred = False
            self._answer_tx(request, b"+OK\r\n")
        else:
            self._answer_tx(request, b"+OK\r\n" if name == b"MULTI" else b"+QUEUED\r\n")

    def _attempt(self, txn: Transaction) -> None:
        """Run a deferred transaction whole (MULTI, its commands, EXEC, their replies read here):
        at the node ASK named when ASK came for every key of it (ASKING first, whose flag lasts
        to EXEC inside MULTI), else at the slot's master."""
        if self.closed:
            return
        node = txn.ask_node or (self.topology.master_for(txn.slot) if txn.slot >= 0 else None) or self.home
        link = self._link(node)
        if txn.ask_node is not None:
            self.topology.asks += 1
            link.send(Request([b"ASKING"], callback=_ignore))
        link.send(Request([b"MULTI"], callback=_ignore))
        commands = [r.args for r in txn.requests if r.args[0].upper() not in (b"MULTI", b"EXEC", b"DISCARD")]
        replies: list[bytes] = []
        for args in commands:
            link.send(Request(args, callback=replies.append))
        link.send(
            Request([b"EXEC"], callback=functools.partial(self._attempted, txn, node, commands, replies))
        )
        self.push_writes()

    def _attempted(
        self, txn: Transaction, node: Node, commands: list[list[bytes]], replies: list[bytes], frame: bytes
    ) -> None:
        """A deferred transaction's run answered: EXEC's reply is the client's unless the slot's
        migration refused it (MOVED: again at the new master; ASK for every keyed command, or for
        EXEC: again where ASK said; TRYAGAIN, or some keys here and some there: again after a
        pause, until they are in one place)."""
        if self.closed:
            return
        redirects = [f for f in [*replies, frame] if f.startswith((b"-MOVED ", b"-ASK ", b"-TRYAGAIN"))]
        if not redirects:  # (an array, a null one, or EXECABORT for an error of Redis's own)
            self._deferred_done(txn, frame)
            return
        table = self.topology.table
        keyed = [
            reply
            for args, reply in zip(commands, replies, strict=False)
            if table is None or table.keys(args[0].upper(), args)
        ]
        moved = next((f for f in redirects if f.startswith(b"-MOVED ")), None)
        asked = frame if frame.startswith(b"-ASK ") else None
        if asked is None and keyed and all(f.startswith(b"-ASK ") for f in keyed):
            asked = keyed[0]
        again_now = False
        if moved is not None and (redirect := parse_redirect(moved)) is not None:
            self.topology.moved(redirect[1], redirect[2])
            txn.ask_node, again_now = None, True
        elif asked is not None and txn.ask_node is None and (redirect := parse_redirect(asked)) is not None:
            txn.ask_node, again_now = redirect[2], True
        else:
            txn.ask_node = None
        loop = asyncio.get_running_loop()
        if again_now and txn.hops < MAX_REDIRECTS:
            txn.hops += 1
            self._attempt(txn)
        elif loop.time() >= txn.deadline:
            log.warning(
                "transaction gave up on a migrating slot", slot=txn.slot, node=f"{node.host}:{node.port}"
            )
            self._deferred_done(txn, b"-TRYAGAIN the transaction's slot stayed split between two nodes\r\n")
        else:
            txn.hops = 0
            loop.call_later(min(txn.delay, txn.deadline - loop.time()), self._attempt, txn)
            txn.delay = min(txn.delay * 2, TX_RETRY_MOST)

    def _deferred_done(self, txn: Transaction, frame: bytes) -> None:
        txn.deferred = False
        if txn.exec_request is not None:
            self._answer_tx(txn.exec_request, frame)
        if txn.holding:
            txn.holding = False
            self._release()

    def _hold_for(self, txn: Transaction) -> None:
        if not txn.holding:
            txn.holding = True
            self._hold()

    def _try_again(self, request: Request) -> bool:
        """A request refused with TRYAGAIN (a multi-key command whose slot is migrating, some of
        its keys moved): sent again after a pause, doubling, to its slot's master (which may
        answer ASK or MOVED, followed as ever) for at most half the command timeout; False once
        that is spent (the client then gets TRYAGAIN)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        retry = self.retries.get(request)
        if retry is None:
            retry = self.retries[request] = [now + self.opener.settings.command_timeout / 2, TX_RETRY_FIRST]
            self._hold()
        elif now >= retry[0]:
            del self.retries[request]
            self._release()
            return False
        loop.call_later(min(retry[1], retry[0] - now), self._resend, request)
        retry[1] = min(retry[1] * 2, TX_RETRY_MOST)
        return True

    def _resend(self, request: Request) -> None:
        if self.closed:
            return
        keys = self._keys(request.args)
        node = (self.topology.master_for(key_slot(keys[0])) if keys else None) or self.home
        self._send(node, request)
        self.push_writes()

    def _hold(self) -> None:
        self.holds += 1
        if self.stalled is None:
            self.stalled = []

    def _release(self) -> None:
        self.holds -= 1
        if self.holds:
            return
        redirected, self.redirected = self.redirected, []
        for request, redirect in redirected:
            self._follow(request, redirect)
        self._unstall()

    def _unstall(self) -> None:
        """What the client sent while something held it, routed now, in order."""
        stalled, self.stalled = self.stalled, None
        if not stalled:
            self.push_writes()
            return
        self.feeding += 1
        try:
            for i, args in enumerate(stalled):
                if self.stalled is not None:  # (another hold among them)
                    self.stalled.extend(stalled[i:])
                    break
                self._command(args)
        finally:
            self.feeding -= 1
        self.push_writes()

    def _answer_tx(self, request: Request, frame: bytes) -> None:
        if request.callback is not None:
            request.callback(frame)
        else:
            self._answer(request, frame)

    def _state(self, name: bytes, sub: bytes, request: Request) -> None:
        args = request.args
        if name == b"HELLO" and len(args) > 1:
            self.resp3 = args[1] == b"3"
        kind = (name, sub if (name, sub) in STATE else b"")
        if name == b"CLIENT" and sub == b"SETINFO" and len(args) > 2:
            kind = (name, sub + b" " + args[2].upper())
        if name == b"CLIENT" and sub == b"TRACKING":
            self.tracking_to = _redirect_of(args)
        if name == b"READONLY":
            self.state.pop((b"READWRITE", b""), None)
        if name == b"READWRITE":
            self.state.pop((b"READONLY", b""), None)
        self.state[kind] = args
        request.state = kind  # (forgotten again if the home node refuses it)
        # The home node's reply is the client's; every other open link gets the same, its reply
        # only logged if it refused.
        try:
            request.args = self._for_node(self.home, args)
            request.data = encode_command(request.args)
        except KeyError:
            self._answer(request, b"-ERR the tracking redirect's connection is gone\r\n")
            return
        self._send(self.home, request)
        for node, link in self.links.items():
            if node != self.home:
                try:
                    link.send(Request(self._for_node(node, args), callback=_ignore))
                except KeyError:
                    self.lost(link, ConnectionError("the tracking redirect's connection has no link there"))
                    return

    def _for_node(self, node: Node, args: list[bytes]) -> list[bytes]:
        """``args`` as ``node`` must get them: a tracking REDIRECT names that node's own id of the
        virtual connection it names (KeyError: unknown there)."""
        if not self.tracking_to or args[0].upper() != b"CLIENT":
            return args
        out = list(args)
        for i in range(2, len(out) - 1):
            if out[i].upper() == b"REDIRECT":
                target = self.topology.targets[self.tracking_to]
                out[i + 1] = str(target.node_ids[node]).encode()
        return out

    async def prelude_for(self, node: Node) -> list[tuple[list[bytes], Callable[[bytes], None]]]:
        """What a new link to ``node`` sends first: the connection's state, then (for a tracking
        redirect's target) a CLIENT ID whose answer is that node's id of this connection."""
        out: list[tuple[list[bytes], Callable[[bytes], None]]] = []
        for args in self.state.values():
            if self.tracking_to and args[0].upper() == b"CLIENT" and args[1].upper() == b"TRACKING":
                target = self.topology.targets.get(self.tracking_to)
                if target is None:
                    raise ConnectionError("the tracking redirect's connection is gone")
                await target.node_id(node)
            out.append((self._for_node(node, args), _ignore))
        if self.vid:
            out.append(([b"CLIENT", b"ID"], functools.partial(self._learnt_id, node)))
        if node in self.topology.replicas:  # (a replica answers reads only after READONLY)
            out.append(([b"READONLY"], _ignore))
        return out

    def _client_id(self, request: Request) -> None:
        """Answered once this connection has a link to every master and knows its id on each."""
        if not self.vid:
            self.vid = next(self.topology.ids)
            self.topology.targets[self.vid] = self
        waits = [self.node_id(node) for node in self.topology.masters() or [self.home]]

        async def answer() -> None:
            try:
                await asyncio.gather(*waits)
            except (OSError, TimeoutError) as exc:
                self.lost(None, exc)
                return
            self._answer(request, b":%d\r\n" % self.vid)

        asyncio.get_running_loop().create_task(answer())

    async def node_id(self, node: Node) -> int:
        known = self.node_ids.get(node)
        if known is not None:
            return known
        waiter = self.id_waiters.get(node)
        if waiter is None:
            waiter = self.id_waiters[node] = asyncio.get_running_loop().create_future()
            if node in self.links:  # (opened before CLIENT ID: ask it now)
                self.links[node].send(
                    Request([b"CLIENT", b"ID"], callback=lambda f: self._learnt_id(node, f))
                )
            else:
                self._link(node)
        async with asyncio.timeout(self.opener.settings.connect_timeout):
            return await asyncio.shield(waiter)

    def _learnt_id(self, node: Node, frame: bytes) -> None:
        waiter = self.id_waiters.get(node)
        if frame[:1] != b":":
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError(f"CLIENT ID failed: {frame!r}"))
            return
        self.node_ids[node] = int(frame[1:].strip())
        if waiter is not None and not waiter.done():
            waiter.set_result(self.node_ids[node])

    def _pipe(self, name: bytes, request: Request) -> None:
        node = self.home
        if name == b"SSUBSCRIBE" and len(request.args) > 1:
            node = self.topology.master_for(key_slot(request.args[1])) or self.home
        self.pending.pop()  # (its replies, and all that follow, pass straight through)
        request.piped = True
        link = self._link(node)
        self.pipe = link
        link.pipe = True
        link.send(request)

    # ------------------------------------------------------------------ replies out

    def _send(self, node: Node, request: Request) -> None:
        self._link(node).send(request)

    def _link(self, node: Node) -> NodeLink:
        link = self.links.get(node)
        if link is None:
            link = self.links[node] = NodeLink(self, node)
            asyncio.get_running_loop().create_task(link.open(self.opener.settings))
        return link

    def _answer(self, request: Request, frame: bytes) -> None:
        request.reply = frame
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def on_reply(self, link: NodeLink, request: Request, frame: bytes) -> None:
        if request.txn is not None and self._redirect_in_transaction(request, request.txn, frame):
            return
        if request.callback is not None:
            request.callback(frame)
            return
        if frame[:1] == b"-" and not request.tx:
            if frame.startswith(b"-TRYAGAIN") and self._try_again(request):
                return
            redirect = parse_redirect(frame) if frame[1:5] in (b"MOVE", b"ASK ") else None
            if redirect is not None and request.redirects < MAX_REDIRECTS:
                request.redirects += 1
                if self.stalled is not None and request not in self.retries:  # (it follows what holds)
                    self.redirected.append((request, redirect))
                else:
                    self._follow(request, redirect)
                return
        if self.retries and self.retries.pop(request, None) is not None:
            self._release()
        parent = request.parent
        if parent is None:
            request.reply = frame
            if request.state is not None and frame[:1] == b"-":
                self.state.pop(request.state, None)
            return
        request.reply = frame
        parent.left -= 1
        if parent.left == 0:
            parent.reply = self._merge(parent)

    def _follow(self, request: Request, redirect: tuple[str, int, Node]) -> None:
        kind, slot, node = redirect
        if kind == "MOVED":
            self.topology.moved(slot, node)
            if self.tx_node is not None and request.args[0].upper() == b"WATCH":
                self.tx_node = node  # (the watch is where the key is: its MULTI goes there)
        else:
            self.topology.asks += 1
            self._link(node).send(Request([b"ASKING"], callback=_ignore))
            if self.tx_node is not None and request.args[0].upper() == b"WATCH":
                # (the watch is at the importing node: so is the key, and its transaction goes
                # there, after ASKING)
                self.tx_node, self.tx_asking = node, True
        self._link(node).send(request)

    def _merge(self, parent: Request) -> bytes:
        frames = [p.reply or b"" for p in parent.parts]
        for frame in frames:
            if frame[:1] == b"-" or frame[:1] == b"!":
                return frame
        how = parent.how
        if how in ("first", "ok"):
            return frames[0]
        if parent.scan is not None:
            place, count = parent.scan
            own, keys = decode_reply(frames[0])
            nxt = int(own)
            # (A master done: the next one from its start, or, after the last, the scan is over.)
            cursor = nxt * count + place if nxt else (place + 1) % count
            text = str(cursor).encode()
            out = [b"*2\r\n$%d\r\n%s\r\n*%d\r\n" % (len(text), text, len(keys))]
            out += [b"$%d\r\n%s\r\n" % (len(key), key) for key in keys]
            return b"".join(out)
        if how == "sum":
            return b":%d\r\n" % sum(int(decode_reply(f)) for f in frames)
        values = [decode_reply(f) for f in frames]
        if how == "concat_all":
            flat = [v for value in values for v in value]
        else:  # "concat": each part's values back at their keys' positions
            parts = split(parent.args) or []
            flat = [None] * sum(len(p.positions) for p in parts)
            for part, value in zip(parts, values, strict=True):
                for position, item in zip(part.positions, value, strict=True):
                    flat[position] = item
        null = b"_\r\n" if self.resp3 else b"$-1\r\n"
        out = [b"*%d\r\n" % len(flat)]
        for item in flat:
            out.append(null if item is None else b"$%d\r\n%s\r\n" % (len(item), item))
        return b"".join(out)

    def flush(self) -> None:
        """Give the proxy every reply now due, in the order of the requests."""
        self.flush_scheduled = False
        pending = self.pending
        if not pending or pending[0].reply is None or self.closed:
            return
        out = []
        while pending and pending[0].reply is not None:
            out.append(pending.popleft().reply or b"")
        if not pending and self.piped_early:
            out += self.piped_early
            self.piped_early = []
        self.protocol.data_received(b"".join(out))  # type: ignore[attr-defined]

    def deliver_push(self, frame: bytes) -> None:
        if not self.closed:
            self.protocol.data_received(frame)  # type: ignore[attr-defined]

    def deliver_piped(self, data: bytes) -> None:
        if self.closed:
            return
        if self.pending:
            self.piped_early.append(data)
            return
        self.protocol.data_received(data)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ life

    def pause(self, on: bool) -> None:
        self.paused = on
        for link in self.links.values():
            if link.transport is not None and not link.transport.is_closing():
                if on:
                    link.transport.pause_reading()
                else:
                    link.transport.resume_reading()

    def lost(self, link: NodeLink | None, exc: Exception | None) -> None:
        """A node link (or the routing) failed: the whole virtual connection is lost, as a TCP
        connection to one Redis would be; the map is refreshed."""
        if self.closed:
            return
        where = f"{link.node.host}:{link.node.port}" if link is not None else "routing"
        log.warning("cluster connection lost", node=where, error=str(exc))
        self._shut()
        self.topology.refresh_soon()
        self.transport.closing = True
        if self.tracking_to:  # (what its tracking covered on a lost node cannot be told)
            target = self.topology.targets.get(self.tracking_to)
            if target is not None:
                target.lost(None, ConnectionError("a connection tracking towards it was lost"))
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, exc)

    def close(self) -> None:
        if self.closed:
            return
        self._shut()
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def _shut(self) -> None:
        self.closed = True
        for link in self.links.values():
            link.close()
        if self.vid:
            self.topology.targets.pop(self.vid, None)
            for waiter in self.id_waiters.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("the connection closed"))
                    waiter.exception()  # (retrieved: nobody may be waiting any more)


def _redirect_of(args: list[bytes]) -> int:
    """The virtual id a ``CLIENT TRACKING ... REDIRECT id`` names (0: none, or tracking off)."""
    if len(args) > 2 and args[2].upper() == b"OFF":
        return 0
    for i in range(2, len(args) - 1):
        if args[i].upper() == b"REDIRECT" and args[i + 1].isdigit():
            return int(args[i + 1])
    return 0


class ClusterOpener(UpstreamOpener):
    """``UpstreamOpener``'s face over a Redis Cluster: every connection it opens is a
    ``ClusterSession``."""

    def __init__(self, settings: Settings, address: UpstreamAddress) -> None:
        super().__init__(settings, address)
        self.topology = ClusterTopology(settings, address, self.ssl)

    async def open(self, factory: Callable[[], Any]) -> tuple[asyncio.BaseTransport, Any]:
        await self.topology.ready()
        protocol = factory()
        session = ClusterSession(self, protocol)
        protocol.connection_made(session.transport)
        return session.transport, protocol

    async def open_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """(The health check's: each also refreshes the slot map, which otherwise changes only
        on redirects and lost connections, and would never learn of a replica added later.)"""
        self.topology.refresh_soon()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await self.open(lambda: protocol)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)  # type: ignore[arg-type]
