"""What a Mongo filter sees and what it may answer.

The proxy session (``meshproxy.transport.mongo_session``) turns every request it decodes into a
``MongoOperation`` and calls ``on_request`` on each filter in chain order; when the reply arrives it fills
in ``response`` and calls ``on_response`` in reverse order. Filters never see sockets or clocks: the
session stamps ``started_ns`` / ``finished_ns``.

A filter may:
- observe (return ``None``);
- delay the request (``Delay``), which holds this connection's later requests behind it, as a server
  would see them;
- answer locally (``LocalReply``), e.g. fault-injected aborts; the reply still flows back through
  ``on_response`` of the filters before it, with ``op.local_reply`` set;
- rewrite (``op.replace_request`` / ``op.replace_response``): the session then sends ``encode(new)``
  instead of the original bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshproxy.codecs.mongo import (
    MongoMessage,
    OpCompressed,
    OpDelete,
    OpGetMore,
    OpInsert,
    OpKillCursors,
    OpMsg,
    OpQuery,
    OpReply,
    OpUpdate,
    PlainMessage,
    payload,
)


@dataclass(slots=True)
class ConnectionInfo:
    """One downstream connection, as filters and access logs name it."""

    id: int
    client: str
    """``ip:port`` of the downstream peer."""
    listener: str
    """Listener name."""
    local_address: tuple[str, int]
    """Address the client connected to (the proxy's listener address)."""
    upstream: str | None = None
    """``ip:port`` of the upstream host once dialled."""


@dataclass(slots=True, frozen=True)
class Delay:
    """Hold the request this long before sending it upstream."""

    seconds: float


@dataclass(slots=True, frozen=True)
class LocalReply:
    """Answer the client with ``reply`` and never send the request upstream."""

    reply: MongoMessage


RequestAction = Delay | LocalReply

MONITORING_COMMANDS = frozenset({"hello", "isMaster", "ismaster"})
"""Commands drivers also use to *wait*: an awaitable ``hello`` parks at the server for up to
``maxAwaitTimeMS`` by design, so one pending at close or drain time is not interrupted work."""


_NO_NAMESPACE = (OpKillCursors, OpReply)
_REPLIED_LEGACY = (OpQuery, OpGetMore)
"""Tuples rather than ``A | B`` unions: isinstance checks them faster, and these run for every operation."""


class _Unset:
    """Marks a lazily read field that has not been read yet (None is a valid value)."""


_UNSET = _Unset()

_LEGACY_COMMANDS: dict[type, str] = {
    OpInsert: "insert",
    OpUpdate: "update",
    OpDelete: "delete",
    OpGetMore: "getMore",
    OpKillCursors: "killCursors",
}


@dataclass(slots=True)
class MongoOperation:
    """One request and its reply (or replies, for exhaust cursors and streamed ``hello``)."""

    connection: ConnectionInfo
    request: MongoMessage
    started_ns: int
    response: MongoMessage | None = None
    finished_ns: int = 0
    replies: int = 0
    """Replies seen so far; above 1 only for exhaust / streaming replies."""
    local_reply: bool = False
    request_replaced: bool = False
    response_replaced: bool = False
    upstream: str | None = None
    """``ip:port`` of the host the operation went to (hosts can differ per operation on one connection)."""
    routing: Any = None
    """The session's note of why it went there (``meshproxy.transport.mongo_routing.Route``), when it balances
    operations; filters need not read it."""
    _command: str | None = field(default=None, repr=False)
    _database: str | _Unset | None = field(default=_UNSET, repr=False)
    _collection: str | _Unset | None = field(default=_UNSET, repr=False)

    # -- what the request is --------------------------------------------------------------------------

    @property
    def plain_request(self) -> PlainMessage:
        return payload(self.request)

    @property
    def plain_response(self) -> PlainMessage | None:
        return payload(self.response) if self.response is not None else None

    @property
    def compressed(self) -> bool:
        return isinstance(self.request, OpCompressed)

    @property
    def command(self) -> str:
        """The operation's name: the command as the client spelled it for OP_MSG and ``$cmd`` queries
        (``find``, ``isMaster``, ``hello``), ``query`` for a legacy OP_QUERY on a collection, and the
        equivalent command name for the other legacy opcodes (OP_INSERT is ``insert``, ...)."""
        if self._command is None:
            message = self.plain_request
            if isinstance(message, OpMsg):
                self._command = message.command_name
            elif isinstance(message, OpQuery):
                self._command = message.command_name or "query"
            else:
                self._command = _LEGACY_COMMANDS.get(type(message), "unknown")
        return self._command

    @property
    def database(self) -> str | None:
        """The database, read once from the request (``$db``, or the legacy namespace)."""
        if self._database is _UNSET:
            self._database = self._read_database()
        return self._database  # type: ignore[return-value]

    def _read_database(self) -> str | None:
        message = self.plain_request
        if isinstance(message, OpMsg):
            return message.database
        if isinstance(message, _NO_NAMESPACE):
            return None
        return message.full_collection_name.partition(".")[0]

    @property
    def collection(self) -> str | None:
        """The collection the operation works on, when it names one (read once)."""
        if self._collection is _UNSET:
            self._collection = self._read_collection()
        return self._collection  # type: ignore[return-value]

    def _read_collection(self) -> str | None:
        message = self.plain_request
        if isinstance(message, OpMsg):
            if self.command == "getMore":
                return message.top_level_string("collection")
            return message.collection
        if isinstance(message, OpQuery):
            if message.is_command:
                return None
            return message.collection
        if isinstance(message, _NO_NAMESPACE):
            return None
        return message.full_collection_name.partition(".")[2]

    @property
    def is_monitoring(self) -> bool:
        return self.command in MONITORING_COMMANDS

    @property
    def expects_reply(self) -> bool:
        """False for fire-and-forget writes (OP_MSG moreToCome, legacy OP_INSERT/UPDATE/DELETE)."""
        message = self.plain_request
        if isinstance(message, OpMsg):
            return not message.more_to_come
        return isinstance(message, _REPLIED_LEGACY)

    @property
    def request_size(self) -> int:
        return len(self.request.raw)

    @property
    def response_size(self) -> int:
        return len(self.response.raw) if self.response is not None else 0

    @property
    def duration_ms(self) -> float:
        return (self.finished_ns - self.started_ns) / 1e6 if self.finished_ns else 0.0

    @property
    def more_to_come(self) -> bool:
        """True while the server will stream further replies to this operation (exhaust)."""
        reply = self.plain_response
        return isinstance(reply, OpMsg) and reply.more_to_come

    # -- rewriting ------------------------------------------------------------------------------------

    def replace_request(self, message: MongoMessage) -> None:
        self.request = message
        self.request_replaced = True
        self._command = None
        self._database = self._collection = _UNSET

    def replace_response(self, message: MongoMessage) -> None:
        self.response = message
        self.response_replaced = True


class MongoFilter:
    """Base class: every hook defaults to observing nothing. Override what you need."""

    def on_connection_open(self, connection: ConnectionInfo) -> None:
        """A client connected."""

    def on_request(self, op: MongoOperation) -> RequestAction | None:
        """A request was decoded. Return ``None`` to let it continue unchanged."""
        return None

    def on_response(self, op: MongoOperation) -> None:
        """A reply to ``op`` was decoded (``op.response``); called once per reply."""

    def on_connection_close(self, connection: ConnectionInfo, *, active_operations: int, local: bool) -> None:
        """The connection ended; ``local`` when the proxy closed it (drain, error, idle timeout)."""

    def close(self) -> None:
        """The listener is shutting down: flush and release resources (files, ...)."""
