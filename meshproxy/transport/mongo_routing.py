"""Which host each MongoDB operation goes to when a listener balances operations, not connections.

Why per operation: a driver keeps few connections per server, and every connection to the sidecar looks like
one server to it, so balancing connections leaves one busy client on one host. The hosts behind a Mongo
cluster are usually stateless ``mongos`` routers, where any operation may go anywhere, except where state lives
on the host that began it:

- a cursor lives on the host that opened it: ``getMore`` and ``killCursors`` go there;
- a transaction lives on the host of its first operation (``startTransaction``): every later operation with
  the same ``lsid`` and ``txnNumber`` (``autocommit: false``), ``commitTransaction`` and ``abortTransaction``
  go there;
- an exhaust cursor streams on the connection it asked on, which the session keeps by design;
- authentication proves a client to one server connection: a connection that authenticates keeps its home
  host for everything (the proxy never holds credentials, so it cannot authenticate other connections);
- handshakes and monitoring (``hello``) go to the connection's home host, so the driver's view of "the
  server" is one real server's answer (rewritten by the topology filter).

The state is listener-wide, not per connection: pymongo sends a cursor's ``getMore`` and a transaction's
operations on whichever pooled connection is free.

Cursor ids are chosen by each server and may repeat across servers (nothing makes them unique between two
processes). A client sees one server, so the router hands out the server's id unchanged when it is new to
the listener, and a fresh id (rewriting the reply and later requests) only when two hosts' ids collide.
Both tables are bounded: past their limit the oldest entry is forgotten, so a client that never closes its
cursors costs a bounded amount of memory; a forgotten cursor's ``getMore`` goes to the home host and at worst
gets the server's ``CursorNotFound``.
"""

from __future__ import annotations

import enum
import random
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bson.int64 import Int64

from meshproxy.codecs.mongo import OpMsg, payload, summarize_reply
from meshproxy.codecs.mongo._bson_peek import INT32, INT64, elements
from meshproxy.stats import Counter

if TYPE_CHECKING:
    from meshproxy.cluster import Cluster, Host
    from meshproxy.codecs.mongo import ReplySummary
    from meshproxy.filters.mongo.api import MongoOperation

HOME_COMMANDS = frozenset(
    {"hello", "isMaster", "ismaster", "saslStart", "saslContinue", "authenticate", "getnonce", "logout"}
)
"""Handshake, monitoring and authentication: answered by the connection's home host."""
AUTH_COMMANDS = frozenset({"saslStart", "saslContinue", "authenticate"})
RETRYABLE_READS = frozenset(
    {"find", "aggregate", "count", "distinct", "listCollections", "listIndexes", "listDatabases"}
)
"""The retryable reads of the drivers' specification (``getMore`` is not one: its cursor is gone)."""
RETRYABLE_WRITES = frozenset({"insert", "update", "delete", "findAndModify", "findandmodify"})
"""Writes a driver may mark retryable, by giving them a ``txnNumber`` outside a transaction."""

_TXN_MARKER = b"\x12txnNumber\x00"
"""A ``txnNumber`` int64 element: only bodies containing it can belong to a transaction, so the body is
decoded for nothing else."""

DEFAULT_MAX_ENTRIES = 100_000
FAILED_HOST_MEMORY = 1.0
"""Seconds the listener's movable operations avoid a host it could not connect to, or that dropped a
connection with requests in flight (unless no other host is left). The driver retries such a request at
once, on whichever pooled connection is free (pymongo retries once): without this, the retry would have a
fair chance of landing on the same host before health checking or outlier detection has noticed. Short,
so outlier detection still sees the host fail and ejects it properly."""


class Via(enum.Enum):
    """Why an operation went where it went (one stat each: ``mongo.<prefix>.route_<name>``)."""

    HOME = "home"
    BALANCED = "balanced"
    CURSOR = "cursor"
    TRANSACTION = "transaction"


@dataclass(slots=True)
class Route:
    """The routing of one operation, kept on it (``op.routing``) until its reply has been seen."""

    via: Via
    host: Host | None
    """None: the connection's home host."""
    cursor: int = 0
    """``getMore``: the client's cursor id."""
    transaction: tuple[bytes, int] | None = None
    """``startTransaction``: (lsid, txnNumber) to pin to the host that answers it."""
    attempts: int = 0
    """Retries the proxy made of this operation (``retry`` on the listener)."""

    @property
    def movable(self) -> bool:
        """Whether the operation may go to another host when its own cannot be reached: state pins it."""
        return self.via is Via.HOME or self.via is Via.BALANCED


def retryable(op: MongoOperation) -> bool:
    """Whether the proxy may send ``op`` again elsewhere after its host was lost: only what a driver itself
    would retry (``RETRYABLE_READS``; ``RETRYABLE_WRITES`` the driver marked with a ``txnNumber``), never
    an operation bound to a cursor or transaction, never one that was partly answered."""
    route = op.routing
    if route is None or not route.movable or route.transaction is not None or op.replies:
        return False
    message = op.plain_request
    if type(message) is not OpMsg:
        return False
    command, body = op.command, message.body
    if command in RETRYABLE_READS:
        return command != "aggregate" or (b"$out" not in body and b"$merge" not in body)
    if command in RETRYABLE_WRITES:
        return _TXN_MARKER in body and b"autocommit\x00" not in body
    return False


class MongoRouter:
    """Cursor and transaction affinity for one listener; see the module docstring."""

    def __init__(
        self, *, hash_key: str = "collection", max_entries: int = DEFAULT_MAX_ENTRIES, translated: Counter | None = None
    ) -> None:
        self.hash_key = hash_key
        self.max_entries = max_entries
        self.cursors: dict[int, tuple[Host, int]] = {}
        """Client-visible cursor id -> (host, the host's own id)."""
        self._by_server: dict[tuple[tuple[str, int], int], int] = {}
        """(host address, the host's id) -> client-visible id."""
        self.transactions: dict[bytes, tuple[int, Host]] = {}
        """lsid -> (txnNumber, host) of the session's latest transaction."""
        self.translated = translated or Counter()
        """Cursor ids handed out in place of a colliding server id."""
        self.retries_in_flight = 0
        """Proxy retries waiting for their back-off, for the retry budget."""
        self._failed: dict[tuple[str, int], float] = {}
        """Host address -> when it last failed (see ``FAILED_HOST_MEMORY``)."""

    def avoid(self, address: tuple[str, int], now: float) -> None:
        """The host at ``address`` just failed a connection or request."""
        self._failed[address] = now

    def avoided(self, address: tuple[str, int], now: float) -> bool:
        """Whether movable operations should go elsewhere for now."""
        since = self._failed.get(address)
        if since is None:
            return False
        if now - since > FAILED_HOST_MEMORY:
            del self._failed[address]
            return False
        return True

    # -- requests -------------------------------------------------------------------------------------

    def route(self, op: MongoOperation, cluster: Cluster) -> Route:
        """Decide where ``op`` goes; may rewrite it (a translated cursor id)."""
        message = op.plain_request
        command = op.command
        if type(message) is not OpMsg or command in HOME_COMMANDS:
            return Route(Via.HOME, None)
        if command == "getMore":
            return self._route_get_more(op, message)
        if command == "killCursors":
            return self._route_kill_cursors(op, message)
        if _TXN_MARKER in message.body:
            route = self._route_transaction(message, cluster, op)
            if route is not None:
                return route
        return Route(Via.BALANCED, cluster.pick(self._key(op) if cluster.hashes_keys else None))

    def _key(self, op: MongoOperation) -> bytes | None:
        database = op.database
        if database is None:
            return None
        if self.hash_key == "database":
            return database.encode()
        return f"{database}.{op.collection or ''}".encode()

    def _route_get_more(self, op: MongoOperation, message: OpMsg) -> Route:
        cursor = _first_int(message.body)
        entry = self.cursors.get(cursor) if cursor is not None else None
        if entry is None:  # opened before balancing began, or forgotten: its connection's home is the best guess
            return Route(Via.HOME, None)
        host, server_id = entry
        if server_id != cursor:
            document = dict(message.document())
            document[next(iter(document))] = Int64(server_id)
            op.replace_request(_rebuilt(message, document))
        assert cursor is not None
        return Route(Via.CURSOR, host, cursor=cursor)

    def _route_kill_cursors(self, op: MongoOperation, message: OpMsg) -> Route:
        document = message.document()
        ids = [int(i) for i in document.get("cursors", ()) if isinstance(i, int)]
        known = [(i, self.cursors[i]) for i in ids if i in self.cursors]
        for i in ids:
            self._forget(i)
        if not known:
            return Route(Via.HOME, None)
        # A driver kills one cursor at a time; should one request name cursors of several hosts, the host of
        # the first gets the request and the others time their cursors out (10 minutes on mongod).
        host = known[0][1][0]
        on_host = [(i, server_id) for i, (owner, server_id) in known if owner is host]
        if len(on_host) != len(ids) or any(i != server_id for i, server_id in on_host):
            rewritten = dict(document)
            rewritten["cursors"] = [Int64(server_id) for _, server_id in on_host]
            op.replace_request(_rebuilt(message, rewritten))
        return Route(Via.CURSOR, host)

    def _route_transaction(self, message: OpMsg, cluster: Cluster, op: MongoOperation) -> Route | None:
        document = message.document()
        if document.get("autocommit") is not False:
            return None  # a retryable write: no state on the host beyond its own reply
        lsid = _lsid(document)
        number = document.get("txnNumber")
        if lsid is None or not isinstance(number, int):
            return None
        if document.get("startTransaction"):
            host = cluster.pick(self._key(op) if cluster.hashes_keys else None)
            return Route(Via.BALANCED, host, transaction=(lsid, int(number)))
        entry = self.transactions.get(lsid)
        if entry is None or entry[0] != number:
            return Route(Via.HOME, None)
        return Route(Via.TRANSACTION, entry[1])

    # -- replies --------------------------------------------------------------------------------------

    def on_reply(self, op: MongoOperation, host: Host) -> ReplySummary | None:
        """Learn from ``op``'s reply from ``host``: cursors it opened or closed, the host of a transaction it
        began; rewrite a colliding cursor id. Returns the reply's summary (for outlier detection)."""
        route = op.routing
        response = op.response
        if route is None or response is None:
            return None
        summary = summarize_reply(response)
        if route.transaction is not None and op.replies == 1:
            self._remember(self.transactions, route.transaction[0], (route.transaction[1], host))
        server_id = summary.cursor_id
        if route.via is Via.CURSOR and route.cursor:
            if server_id == 0 or summary.cursor_not_found:
                self._forget(route.cursor)
            return summary
        if not server_id:
            return summary
        key = (host.address, server_id)
        client_id = self._by_server.get(key)
        if client_id is None:
            client_id = server_id
            if client_id in self.cursors:
                client_id = self._fresh_id()
                self.translated.inc()
            self._remember(self.cursors, client_id, (host, server_id))
            self._by_server[key] = client_id
        if client_id != server_id:
            message = payload(response)
            if isinstance(message, OpMsg):
                document = dict(message.document())
                cursor = dict(document["cursor"])
                cursor["id"] = Int64(client_id)
                document["cursor"] = cursor
                op.replace_response(_rebuilt(message, document))
        return summary

    # -- bookkeeping ----------------------------------------------------------------------------------

    def _forget(self, client_id: int) -> None:
        entry = self.cursors.pop(client_id, None)
        if entry is not None:
            self._by_server.pop((entry[0].address, entry[1]), None)

    def _remember(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        if len(table) > self.max_entries:
            oldest = next(iter(table))
            if table is self.cursors:
                self._forget(oldest)
            else:
                del table[oldest]

    def _fresh_id(self) -> int:
        while True:
            candidate = random.getrandbits(63)
            if candidate and candidate not in self.cursors:
                return candidate


def _first_int(body: bytes) -> int | None:
    for kind, _, start, _ in elements(body):
        if kind == INT64:
            return int(struct.unpack_from("<q", body, start)[0])
        if kind == INT32:
            return int(struct.unpack_from("<i", body, start)[0])
        return None
    return None


def _lsid(document: dict[str, Any]) -> bytes | None:
    lsid = document.get("lsid")
    if not isinstance(lsid, dict):
        return None
    session_id = lsid.get("id")
    return bytes(session_id) if isinstance(session_id, bytes | bytearray) else None


def _rebuilt(message: OpMsg, document: dict[str, Any]) -> OpMsg:
    return OpMsg.from_document(
        document,
        request_id=message.header.request_id,
        response_to=message.header.response_to,
        flag_bits=message.flag_bits,
        sequences=message.sequences,
    )
