"""The legacy write and cursor opcodes (OP_INSERT, OP_UPDATE, OP_DELETE, OP_GET_MORE, OP_KILL_CURSORS).

No client installed here sends them any more: pymongo 4 dropped them and MongoDB 6.0 removed them, and
SecantusDB does not speak them. So these frames are laid out from the wire-protocol reference around
documents that pymongo's ``bson`` encodes, and the tests check that the decoder reads every field the
reference defines, that ``encode`` writes the same bytes back, and that the operation names the proxy's
stats use come out right.
"""

from __future__ import annotations

import struct

import bson
import pytest

from meshproxy.codecs import DecodeError
from meshproxy.codecs.mongo import (
    MongoDecoder,
    OpCode,
    OpDelete,
    OpGetMore,
    OpInsert,
    OpKillCursors,
    OpUpdate,
    encode,
)
from meshproxy.filters.mongo.api import ConnectionInfo, MongoOperation


def _frame(op_code: int, body: bytes, request_id: int = 42) -> bytes:
    return struct.pack("<iiii", 16 + len(body), request_id, 0, op_code) + body


def _operation(frame: bytes) -> MongoOperation:
    (message,) = MongoDecoder().feed(frame)
    return MongoOperation(ConnectionInfo(1, "c", "l", ("127.0.0.1", 1)), message, 0)


DOCS = [bson.encode({"_id": 1, "sku": "a"}), bson.encode({"_id": 2, "sku": "b"})]
SELECTOR = bson.encode({"_id": 1})
UPDATE = bson.encode({"$set": {"sku": "z"}})


def test_op_insert_carries_its_flags_namespace_and_every_document() -> None:
    frame = _frame(OpCode.INSERT, struct.pack("<i", 1) + b"shop.orders\x00" + b"".join(DOCS))
    op = _operation(frame)
    message = op.request
    assert isinstance(message, OpInsert)
    assert (message.flags, message.full_collection_name, message.documents) == (1, "shop.orders", DOCS)
    assert (op.command, op.database, op.collection, op.expects_reply) == ("insert", "shop", "orders", False)
    assert encode(message) == frame == message.raw


def test_op_update_carries_selector_and_update() -> None:
    frame = _frame(OpCode.UPDATE, b"\0\0\0\0" + b"shop.orders\x00" + struct.pack("<i", 2) + SELECTOR + UPDATE)
    op = _operation(frame)
    message = op.request
    assert isinstance(message, OpUpdate)
    assert (message.flags, message.selector, message.update) == (2, SELECTOR, UPDATE)
    assert (op.command, op.collection, op.expects_reply) == ("update", "orders", False)
    assert encode(message) == frame


def test_op_delete_carries_its_selector() -> None:
    frame = _frame(OpCode.DELETE, b"\0\0\0\0" + b"shop.orders\x00" + struct.pack("<i", 1) + SELECTOR)
    op = _operation(frame)
    assert isinstance(op.request, OpDelete)
    assert op.request.selector == SELECTOR
    assert (op.command, op.collection) == ("delete", "orders")
    assert encode(op.request) == frame


def test_op_get_more_carries_cursor_id_and_batch_size_and_expects_a_reply() -> None:
    frame = _frame(OpCode.GET_MORE, b"\0\0\0\0" + b"shop.orders\x00" + struct.pack("<iq", 100, 1234567890123))
    op = _operation(frame)
    assert isinstance(op.request, OpGetMore)
    assert (op.request.number_to_return, op.request.cursor_id) == (100, 1234567890123)
    assert (op.command, op.collection, op.expects_reply) == ("getMore", "orders", True)
    assert encode(op.request) == frame


def test_op_kill_cursors_lists_every_cursor() -> None:
    frame = _frame(OpCode.KILL_CURSORS, b"\0\0\0\0" + struct.pack("<i3q", 3, 7, 8, 9))
    op = _operation(frame)
    assert isinstance(op.request, OpKillCursors)
    assert op.request.cursor_ids == [7, 8, 9]
    assert (op.command, op.database, op.expects_reply) == ("killCursors", None, False)
    assert encode(op.request) == frame


@pytest.mark.parametrize(
    "frame",
    [
        _frame(OpCode.UPDATE, b"\0\0\0\0" + b"shop.orders\x00" + struct.pack("<i", 0) + SELECTOR),  # no update
        _frame(OpCode.GET_MORE, b"\0\0\0\0" + b"shop.orders\x00" + struct.pack("<i", 1)),  # no cursor id
        _frame(OpCode.INSERT, struct.pack("<i", 0) + b"shop.orders"),  # unterminated namespace
    ],
    ids=["update-without-update-document", "get-more-without-cursor-id", "insert-unterminated-namespace"],
)
def test_a_truncated_legacy_frame_is_a_decode_error(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        MongoDecoder().feed(frame)
