"""Messages back to bytes: for messages a filter built or changed, and for replies the proxy makes itself.

Unchanged messages never come here: the proxy forwards their ``raw`` bytes. ``encode`` serialises from the
fields, so a message whose fields were edited is written as it now is.
"""

from __future__ import annotations

import struct
from typing import Any

import bson
import crc32c

from meshproxy.codecs.mongo._compression import compress
from meshproxy.codecs.mongo._messages import (
    CHECKSUM_PRESENT,
    REPLY_QUERY_FAILURE,
    DocumentSequence,
    MongoMessage,
    MsgHeader,
    OpCode,
    OpCompressed,
    OpDelete,
    OpGetMore,
    OpInsert,
    OpKillCursors,
    OpMsg,
    OpQuery,
    OpReply,
    OpUpdate,
)

_HEADER = struct.Struct("<iiii")


def _with_header(request_id: int, response_to: int, op_code: int, body: bytes) -> bytes:
    return _HEADER.pack(16 + len(body), request_id, response_to, op_code) + body


def _cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def _sections(body: bytes, sequences: list[DocumentSequence]) -> bytes:
    parts = [b"\x00", body]
    for sequence in sequences:
        payload = _cstring(sequence.identifier) + b"".join(sequence.documents)
        parts += [b"\x01", struct.pack("<i", 4 + len(payload)), payload]
    return b"".join(parts)


def _op_msg_bytes(header: MsgHeader, flag_bits: int, body: bytes, sequences: list[DocumentSequence]) -> bytes:
    payload = struct.pack("<I", flag_bits) + _sections(body, sequences)
    if flag_bits & CHECKSUM_PRESENT:
        unsigned = _HEADER.pack(16 + len(payload) + 4, header.request_id, header.response_to, OpCode.MSG) + payload
        return unsigned + struct.pack("<I", crc32c.crc32c(unsigned))
    return _with_header(header.request_id, header.response_to, OpCode.MSG, payload)


def _body(message: MongoMessage) -> bytes:
    """Everything after the 16-byte header."""
    return encode(message)[16:]


def encode(message: MongoMessage) -> bytes:
    """The wire bytes of ``message`` as its fields now say."""
    header = message.header
    rid, rto = header.request_id, header.response_to
    if isinstance(message, OpMsg):
        return _op_msg_bytes(header, message.flag_bits, message.body, message.sequences)
    if isinstance(message, OpQuery):
        payload = (
            struct.pack("<i", message.flags) + _cstring(message.full_collection_name)
            + struct.pack("<ii", message.number_to_skip, message.number_to_return) + message.query
            + (message.return_fields_selector or b"")
        )
        return _with_header(rid, rto, OpCode.QUERY, payload)
    if isinstance(message, OpReply):
        payload = struct.pack(
            "<iqii", message.response_flags, message.cursor_id, message.starting_from, len(message.documents)
        ) + b"".join(message.documents)
        return _with_header(rid, rto, OpCode.REPLY, payload)
    if isinstance(message, OpInsert):
        payload = struct.pack("<i", message.flags) + _cstring(message.full_collection_name) + b"".join(
            message.documents
        )
        return _with_header(rid, rto, OpCode.INSERT, payload)
    if isinstance(message, OpUpdate):
        payload = (
            b"\x00\x00\x00\x00" + _cstring(message.full_collection_name) + struct.pack("<i", message.flags)
            + message.selector + message.update
        )
        return _with_header(rid, rto, OpCode.UPDATE, payload)
    if isinstance(message, OpDelete):
        payload = (
            b"\x00\x00\x00\x00" + _cstring(message.full_collection_name) + struct.pack("<i", message.flags)
            + message.selector
        )
        return _with_header(rid, rto, OpCode.DELETE, payload)
    if isinstance(message, OpGetMore):
        payload = (
            b"\x00\x00\x00\x00" + _cstring(message.full_collection_name)
            + struct.pack("<iq", message.number_to_return, message.cursor_id)
        )
        return _with_header(rid, rto, OpCode.GET_MORE, payload)
    if isinstance(message, OpKillCursors):
        ids = message.cursor_ids
        payload = b"\x00\x00\x00\x00" + struct.pack(f"<i{len(ids)}q", len(ids), *ids)
        return _with_header(rid, rto, OpCode.KILL_CURSORS, payload)
    if isinstance(message, OpCompressed):
        inner = _body(message.inner)
        payload = struct.pack("<iiB", message.original_op_code, len(inner), message.compressor) + compress(
            message.compressor, inner
        )
        return _with_header(rid, rto, OpCode.COMPRESSED, payload)
    raise TypeError(f"not a Mongo message: {type(message).__name__}")


def compress_message(message: MongoMessage, compressor: int, *, zlib_level: int = -1) -> bytes:
    """OP_COMPRESSED bytes wrapping ``message`` (a driver's view of compression, for tests and stages)."""
    raw = message.raw
    header = message.header
    payload = compress(compressor, raw[16:], zlib_level=zlib_level)
    body = struct.pack("<iiB", header.op_code, len(raw) - 16, compressor) + payload
    return _with_header(header.request_id, header.response_to, OpCode.COMPRESSED, body)


def encode_op_msg(
    document: dict[str, Any],
    *,
    request_id: int,
    response_to: int = 0,
    flag_bits: int = 0,
    sequences: list[DocumentSequence] | None = None,
) -> OpMsg:
    """A new OP_MSG carrying ``document``; its ``raw`` is its encoding."""
    body = bson.encode(document)
    sequences = sequences or []
    provisional = MsgHeader(0, request_id, response_to, OpCode.MSG)
    raw = _op_msg_bytes(provisional, flag_bits, body, sequences)
    header = MsgHeader(len(raw), request_id, response_to, OpCode.MSG)
    checksum = struct.unpack_from("<I", raw, len(raw) - 4)[0] if flag_bits & CHECKSUM_PRESENT else None
    return OpMsg(header, flag_bits, body, sequences, checksum, raw, document)


def encode_op_reply(
    documents: list[dict[str, Any]],
    *,
    request_id: int,
    response_to: int,
    response_flags: int = 0,
    cursor_id: int = 0,
    starting_from: int = 0,
) -> OpReply:
    """A new OP_REPLY carrying ``documents``; its ``raw`` is its encoding."""
    raw_documents = [bson.encode(d) for d in documents]
    payload = struct.pack("<iqii", response_flags, cursor_id, starting_from, len(raw_documents)) + b"".join(
        raw_documents
    )
    raw = _with_header(request_id, response_to, OpCode.REPLY, payload)
    header = MsgHeader(len(raw), request_id, response_to, OpCode.REPLY)
    return OpReply(header, response_flags, cursor_id, starting_from, len(raw_documents), raw_documents, raw)


def error_reply(
    request: MongoMessage, *, code: int, code_name: str, errmsg: str, request_id: int
) -> MongoMessage:
    """The error a server would send for ``request``: what a fault-injecting filter answers with.

    OP_MSG gets an OP_MSG ``{ok: 0, errmsg, code, codeName}``; a ``$cmd`` OP_QUERY gets that document in an
    OP_REPLY; a legacy query or getMore gets an OP_REPLY with the QueryFailure flag and ``{$err, code}``.
    """
    if isinstance(request, OpCompressed):
        request = request.inner
    response_to = request.header.request_id
    document: dict[str, Any] = {"ok": 0.0, "errmsg": errmsg, "code": code, "codeName": code_name}
    if isinstance(request, OpMsg):
        return encode_op_msg(document, request_id=request_id, response_to=response_to)
    if isinstance(request, OpQuery) and request.is_command:
        return encode_op_reply([document], request_id=request_id, response_to=response_to)
    return encode_op_reply(
        [{"$err": errmsg, "code": code}],
        request_id=request_id,
        response_to=response_to,
        response_flags=REPLY_QUERY_FAILURE,
    )
