"""``encode`` and the builders: what a filter sends when it changes a message or answers one itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import bson
import pytest

from meshproxy.codecs.mongo import (
    CHECKSUM_PRESENT,
    REPLY_QUERY_FAILURE,
    Compressor,
    DocumentSequence,
    MongoDecoder,
    MongoMessage,
    OpCompressed,
    OpMsg,
    OpQuery,
    OpReply,
    compress_message,
    encode,
    encode_op_msg,
    error_reply,
)

Decode = Callable[[bytes], list[MongoMessage]]
Recorded = Callable[[str, str], bytes]


def _one(data: bytes) -> MongoMessage:
    (message,) = MongoDecoder().feed(data)
    return message


def test_error_reply_to_op_msg_is_an_op_msg_answering_it(recorded: Recorded, decode_all: Decode) -> None:
    find = decode_all(recorded("find_getmore", "c2s"))[2]
    reply = error_reply(find, code=91, code_name="ShutdownInProgress", errmsg="draining", request_id=500)
    assert isinstance(reply, OpMsg)
    assert reply.header.response_to == find.header.request_id
    assert reply.header.request_id == 500
    decoded = _one(reply.raw)
    assert isinstance(decoded, OpMsg)
    assert decoded.document() == {"ok": 0.0, "errmsg": "draining", "code": 91, "codeName": "ShutdownInProgress"}
    assert decoded.flag_bits == 0
    assert encode(decoded) == reply.raw


def test_error_reply_to_a_cmd_op_query_is_an_op_reply_with_the_command_error(
    recorded: Recorded, decode_all: Decode
) -> None:
    is_master = decode_all(recorded("legacy_handshake", "c2s"))[0]
    assert isinstance(is_master, OpQuery)
    reply = error_reply(is_master, code=13, code_name="Unauthorized", errmsg="no", request_id=8)
    decoded = _one(reply.raw)
    assert isinstance(decoded, OpReply)
    assert decoded.header.response_to == is_master.header.request_id
    assert decoded.response_flags == 0
    assert decoded.first_document() == {"ok": 0.0, "errmsg": "no", "code": 13, "codeName": "Unauthorized"}


def test_error_reply_to_a_legacy_query_sets_query_failure_with_err(recorded: Recorded, decode_all: Decode) -> None:
    query = decode_all(recorded("legacy_handshake", "c2s"))[1]
    assert isinstance(query, OpQuery)
    assert not query.is_command
    reply = error_reply(query, code=2, code_name="BadValue", errmsg="nope", request_id=9)
    decoded = _one(reply.raw)
    assert isinstance(decoded, OpReply)
    assert decoded.response_flags == REPLY_QUERY_FAILURE
    assert decoded.number_returned == 1
    assert decoded.first_document() == {"$err": "nope", "code": 2}


def test_error_reply_to_a_compressed_request_answers_its_inner_message_uncompressed(
    pymongo_op_msg: Callable[..., bytes],
) -> None:
    request = _one(pymongo_op_msg({"insert": "users", "documents": [{"a": 1}]}, compressor="zstd"))
    assert isinstance(request, OpCompressed)
    reply = error_reply(request, code=11600, code_name="InterruptedAtShutdown", errmsg="bye", request_id=3)
    assert isinstance(reply, OpMsg)
    assert reply.header.response_to == request.header.request_id


def test_a_field_edited_op_msg_is_encoded_as_it_now_is(recorded: Recorded, decode_all: Decode) -> None:
    insert = decode_all(recorded("insert_many", "c2s"))[4]
    assert isinstance(insert, OpMsg)
    first_two = DocumentSequence("documents", insert.sequences[0].documents[:2])
    shortened = dataclasses.replace(insert, sequences=[first_two])
    decoded = _one(encode(shortened))
    assert isinstance(decoded, OpMsg)
    assert decoded.document_count() == 2
    assert decoded.body == insert.body
    assert decoded.header.request_id == insert.header.request_id


def test_from_document_never_sets_the_checksum_bit_it_cannot_honour_for_the_caller() -> None:
    message = OpMsg.from_document({"ping": 1, "$db": "admin"}, request_id=4, flag_bits=CHECKSUM_PRESENT)
    assert message.flag_bits == 0
    assert message.checksum is None
    assert _one(message.raw).raw == message.raw  # type: ignore[union-attr]


def test_encode_op_msg_with_checksum_writes_a_crc_the_decoder_accepts() -> None:
    message = encode_op_msg({"ping": 1, "$db": "admin"}, request_id=4, flag_bits=CHECKSUM_PRESENT)
    decoded = _one(message.raw)
    assert isinstance(decoded, OpMsg)
    assert decoded.checksum == message.checksum
    assert decoded.header == message.header


def test_encode_op_msg_matches_what_pymongo_sends_for_the_same_command(pymongo_op_msg: Callable[..., bytes]) -> None:
    theirs = _one(pymongo_op_msg({"find": "users", "filter": {"x": 1}}, "shop"))
    assert isinstance(theirs, OpMsg)
    ours = encode_op_msg(theirs.document(), request_id=theirs.header.request_id)
    assert ours.raw == theirs.raw


@pytest.mark.parametrize("compressor", [Compressor.NOOP, Compressor.SNAPPY, Compressor.ZLIB, Compressor.ZSTD])
def test_compress_message_wraps_a_recorded_message_that_decodes_back(
    compressor: Compressor, recorded: Recorded, decode_all: Decode
) -> None:
    for message in decode_all(recorded("aggregate", "s2c")):
        compressed = _one(compress_message(message, compressor))
        assert isinstance(compressed, OpCompressed)
        assert compressed.compressor == compressor
        assert compressed.inner.raw == message.raw
        assert compressed.original_op_code == message.header.op_code
        assert encode(compressed) == compressed.raw


def test_compressed_requests_from_pymongo_re_encode_to_their_bytes(pymongo_op_msg: Callable[..., bytes]) -> None:
    command = {"insert": "users", "documents": [{"_id": i, "name": "n" * 20} for i in range(20)]}
    for compressor in ("zlib", "zstd", "snappy"):
        data = pymongo_op_msg(command, "shop", compressor=compressor)
        message = _one(data)
        assert isinstance(message, OpCompressed)
        # pymongo compresses with the same libraries and defaults as ``encode``.
        assert encode(message) == data
        inner = message.inner
        assert isinstance(inner, OpMsg)
        (sequence,) = inner.sequences  # pymongo moves "documents" into a kind-1 section
        assert bson.decode(sequence.documents[19])["_id"] == 19
