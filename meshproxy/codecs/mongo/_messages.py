"""Typed MongoDB wire messages.

Every message keeps the exact bytes it was decoded from in ``raw`` so that a proxy forwards unchanged
messages byte for byte (design.md, principle 2). Bodies are *not* decoded up front: the command name,
``$db`` and collection are read straight from the raw BSON (``_bson_peek``), and a full ``bson.decode``
happens only when a filter asks for ``document()``.

A filter that wants to change a message builds a new one (``OpMsg.from_document`` ...) and the proxy
sends ``encode(new)``; a replacement is always sent uncompressed, which the wire protocol allows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from meshproxy.codecs.mongo import _bson_peek


class OpCode(enum.IntEnum):
    """Wire-protocol opcodes (MongoDB wire protocol reference)."""

    REPLY = 1
    UPDATE = 2001
    INSERT = 2002
    QUERY = 2004
    GET_MORE = 2005
    DELETE = 2006
    KILL_CURSORS = 2007
    COMPRESSED = 2012
    MSG = 2013


class Compressor(enum.IntEnum):
    """Compressor ids of OP_COMPRESSED (the compression spec)."""

    NOOP = 0
    SNAPPY = 1
    ZLIB = 2
    ZSTD = 3


# OP_MSG flagBits (OP_MSG spec).
CHECKSUM_PRESENT = 1 << 0
MORE_TO_COME = 1 << 1
EXHAUST_ALLOWED = 1 << 16

# OP_QUERY flags.
QUERY_TAILABLE_CURSOR = 1 << 1
QUERY_SLAVE_OK = 1 << 2
QUERY_NO_CURSOR_TIMEOUT = 1 << 4
QUERY_AWAIT_DATA = 1 << 5
QUERY_EXHAUST = 1 << 6
QUERY_PARTIAL = 1 << 7

# OP_REPLY responseFlags.
REPLY_CURSOR_NOT_FOUND = 1 << 0
REPLY_QUERY_FAILURE = 1 << 1
REPLY_AWAIT_CAPABLE = 1 << 3


class MsgHeader(NamedTuple):
    """The 16-byte standard message header (a tuple: built for every message, so it must be cheap)."""

    message_length: int
    request_id: int
    response_to: int
    op_code: int


@dataclass(slots=True)
class DocumentSequence:
    """An OP_MSG kind-1 section: an identifier (``documents``, ``updates``, ...) and raw BSON documents."""

    identifier: str
    documents: list[bytes]


@dataclass(slots=True)
class OpMsg:
    """OP_MSG (opcode 2013), the only message modern drivers send after the handshake."""

    header: MsgHeader
    flag_bits: int
    body: bytes
    """Raw BSON of the kind-0 section: the command (request) or its reply."""
    sequences: list[DocumentSequence]
    checksum: int | None
    raw: bytes
    _document: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def more_to_come(self) -> bool:
        return bool(self.flag_bits & MORE_TO_COME)

    @property
    def exhaust_allowed(self) -> bool:
        return bool(self.flag_bits & EXHAUST_ALLOWED)

    @property
    def command_name(self) -> str:
        """First key of the body: the command, as the client spelled it (``isMaster``, ``find``, ...)."""
        document = self._document
        if document is not None:
            return next(iter(document), "")
        return _bson_peek.first_key(self.body)

    @property
    def database(self) -> str | None:
        """The ``$db`` field of the body (from the decoded body when the decoder kept it, else read from
        the raw bytes without decoding)."""
        return self.top_level_string("$db")

    def top_level_string(self, key: str) -> str | None:
        """A top-level string field of the body."""
        document = self._document
        if document is not None:
            value = document.get(key)
            return value if type(value) is str else None
        return _bson_peek.top_level_string(self.body, key)

    @property
    def collection(self) -> str | None:
        """The value of the first key when it is a string (``{find: "users"}``), else ``None``."""
        document = self._document
        if document is not None:
            for value in document.values():
                return value if type(value) is str else None
            return None
        return _bson_peek.first_value_if_string(self.body)

    def document(self) -> dict[str, Any]:
        """The decoded body (cached). Costs a full BSON decode: keep it off the hot path."""
        if self._document is None:
            self._document = _bson_peek.decode(self.body)
        return self._document

    def document_count(self) -> int:
        """Documents carried in kind-1 sequences (e.g. an ``insert`` split into a sequence)."""
        return sum(len(seq.documents) for seq in self.sequences)

    @classmethod
    def from_document(
        cls,
        document: dict[str, Any],
        *,
        request_id: int,
        response_to: int = 0,
        flag_bits: int = 0,
        sequences: list[DocumentSequence] | None = None,
    ) -> OpMsg:
        """Build a new message (never compressed, no checksum) whose ``raw`` is its encoding."""
        from meshproxy.codecs.mongo._encode import encode_op_msg

        return encode_op_msg(
            document,
            request_id=request_id,
            response_to=response_to,
            flag_bits=flag_bits & ~CHECKSUM_PRESENT,
            sequences=sequences or [],
        )


@dataclass(slots=True)
class OpQuery:
    """OP_QUERY (2004): legacy queries and, still today, the first ``isMaster`` of a handshake."""

    header: MsgHeader
    flags: int
    full_collection_name: str
    number_to_skip: int
    number_to_return: int
    query: bytes
    return_fields_selector: bytes | None
    raw: bytes
    _document: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def database(self) -> str:
        return self.full_collection_name.partition(".")[0]

    @property
    def collection(self) -> str:
        """Collection part of the namespace; ``$cmd`` for commands sent as queries."""
        return self.full_collection_name.partition(".")[2]

    @property
    def is_command(self) -> bool:
        return self.collection == "$cmd"

    @property
    def command_name(self) -> str | None:
        """For a ``db.$cmd`` query, the command (first key, unwrapping ``$query``/``query``); else None."""
        if not self.is_command:
            return None
        first = _bson_peek.first_key(self.query)
        if first in ("$query", "query"):
            inner = _bson_peek.top_level_document(self.query, first)
            return _bson_peek.first_key(inner) if inner is not None else first
        return first

    def document(self) -> dict[str, Any]:
        if self._document is None:
            self._document = _bson_peek.decode(self.query)
        return self._document


@dataclass(slots=True)
class OpReply:
    """OP_REPLY (1): the answer to OP_QUERY / OP_GET_MORE."""

    header: MsgHeader
    response_flags: int
    cursor_id: int
    starting_from: int
    number_returned: int
    documents: list[bytes]
    raw: bytes
    _first: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def first_document(self) -> dict[str, Any] | None:
        """The first returned document decoded (the command reply for ``$cmd`` queries)."""
        if not self.documents:
            return None
        if self._first is None:
            self._first = _bson_peek.decode(self.documents[0])
        return self._first


@dataclass(slots=True)
class OpInsert:
    """Legacy OP_INSERT (2002), removed in MongoDB 6.0 but still on the wire of old clients."""

    header: MsgHeader
    flags: int
    full_collection_name: str
    documents: list[bytes]
    raw: bytes


@dataclass(slots=True)
class OpUpdate:
    """Legacy OP_UPDATE (2001)."""

    header: MsgHeader
    full_collection_name: str
    flags: int
    selector: bytes
    update: bytes
    raw: bytes


@dataclass(slots=True)
class OpDelete:
    """Legacy OP_DELETE (2006)."""

    header: MsgHeader
    full_collection_name: str
    flags: int
    selector: bytes
    raw: bytes


@dataclass(slots=True)
class OpGetMore:
    """Legacy OP_GET_MORE (2005)."""

    header: MsgHeader
    full_collection_name: str
    number_to_return: int
    cursor_id: int
    raw: bytes


@dataclass(slots=True)
class OpKillCursors:
    """Legacy OP_KILL_CURSORS (2007)."""

    header: MsgHeader
    cursor_ids: list[int]
    raw: bytes


PlainMessage = OpMsg | OpQuery | OpReply | OpInsert | OpUpdate | OpDelete | OpGetMore | OpKillCursors


@dataclass(slots=True)
class OpCompressed:
    """OP_COMPRESSED (2012): ``inner`` is the decompressed message; ``raw`` the compressed wire bytes.

    The proxy forwards ``raw`` untouched; filters look at ``inner`` (see ``payload()``).
    """

    header: MsgHeader
    original_op_code: int
    uncompressed_size: int
    compressor: Compressor
    inner: PlainMessage
    raw: bytes


MongoMessage = PlainMessage | OpCompressed


def payload(message: MongoMessage) -> PlainMessage:
    """The message a filter should look at: the decompressed one for OP_COMPRESSED, else itself."""
    return message.inner if isinstance(message, OpCompressed) else message
