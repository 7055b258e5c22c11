"""The few MongoDB wire-protocol bytes the benchmark needs, built by pymongo and bson, not by hand.

The load generator sends one real ``find`` OP_MSG, produced once by pymongo's own message code and then
re-stamped with a fresh requestID per operation (the only field that has to change). The canned backend
answers with a fixed, valid OP_MSG reply whose responseTo is copied from the request. Keeping both sides
this cheap is what makes the backend "not the bottleneck": per operation it does a slice and a join.
"""

from __future__ import annotations

import datetime
import struct

import bson
from bson.codec_options import DEFAULT_CODEC_OPTIONS

HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode
OP_REPLY = 1
OP_QUERY = 2004
OP_MSG = 2013
MORE_TO_COME = 1 << 1

BENCH_DB = "bench"
BENCH_COLLECTION = "c"

#: The canned answer to every ``find``: one document, cursor already exhausted.
FIND_REPLY_DOC: dict[str, object] = {
    "cursor": {"firstBatch": [{"_id": 1}], "id": 0, "ns": f"{BENCH_DB}.{BENCH_COLLECTION}"},
    "ok": 1.0,
}


def hello_reply_doc() -> dict[str, object]:
    """What the backend says to a handshake (``hello`` / ``isMaster``), so a real driver can talk to it."""
    return {
        "helloOk": True,
        "isWritablePrimary": True,
        "ismaster": True,
        "maxBsonObjectSize": 16 * 1024 * 1024,
        "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000,
        "localTime": datetime.datetime.now(tz=datetime.UTC),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": 1,
        "minWireVersion": 0,
        "maxWireVersion": 21,
        "readOnly": False,
        "ok": 1.0,
    }


def find_command() -> dict[str, object]:
    """The benchmark's one operation: a point lookup, as pymongo's ``find_one({"_id": 1})`` sends it."""
    return {"find": BENCH_COLLECTION, "filter": {"_id": 1}, "limit": 1, "singleBatch": True}


def encode_find_request() -> bytes:
    """One complete ``find`` OP_MSG (header included), encoded by pymongo's own ``_op_msg``."""
    from pymongo.message import _op_msg

    _request_id, data, _size, _max_doc = _op_msg(0, find_command(), BENCH_DB, None, DEFAULT_CODEC_OPTIONS)
    return bytes(data)


def split_request_template(request: bytes) -> tuple[bytes, bytes]:
    """Split a message around its requestID, so a new id costs one ``join`` (length, id, rest)."""
    return request[:4], request[8:]


def op_msg_reply_parts(doc: dict[str, object]) -> tuple[bytes, bytes]:
    """An OP_MSG reply carrying ``doc``, split around responseTo: ``head + responseTo + tail``.

    The reply's own requestID is fixed (nothing reads it), so per request the backend only copies the
    request's 4-byte requestID between the two halves.
    """
    body = struct.pack("<iB", 0, 0) + bson.encode(doc)  # flagBits, section kind 0, document
    length = HEADER.size + len(body)
    head = struct.pack("<ii", length, 1)
    tail = struct.pack("<i", OP_MSG) + body
    return head, tail


def op_reply_parts(doc: dict[str, object]) -> tuple[bytes, bytes]:
    """A legacy OP_REPLY carrying ``doc`` (the answer drivers expect to an OP_QUERY handshake)."""
    body = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(doc)  # flags, cursorID, startingFrom, numReturned
    length = HEADER.size + len(body)
    head = struct.pack("<ii", length, 1)
    tail = struct.pack("<i", OP_REPLY) + body
    return head, tail


def command_name(message: bytes | memoryview) -> str:
    """The first key of an OP_MSG kind-0 body or an OP_QUERY query document (slow path only)."""
    (opcode,) = struct.unpack_from("<i", message, 12)
    if opcode == OP_MSG:
        offset = 21  # header, flagBits, section kind byte
    elif opcode == OP_QUERY:
        end = bytes(message).index(b"\x00", 20)  # flags, then fullCollectionName cstring
        offset = end + 1 + 8  # numberToSkip, numberToReturn
    else:
        return ""
    end = bytes(message).index(b"\x00", offset + 5)
    return bytes(message[offset + 5 : end]).decode("utf-8", "replace")


def decode_op_msg_body(message: bytes) -> dict[str, object]:
    """Decode the kind-0 body of one OP_MSG (used by tests and checks, never on the hot path)."""
    (length,) = struct.unpack_from("<i", message, 21)
    doc: dict[str, object] = bson.decode(message[21 : 21 + length])
    return doc
