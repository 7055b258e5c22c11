"""What the decoder does with a peer that lies: every malformed message is one ``DecodeError`` with a stable
reason, nothing the peer declares is allocated before it is received, and a poisoned decoder stays poisoned.

The malformed messages are real recorded messages with one field broken.
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable

import pytest

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.mongo import MongoDecoder, MongoMessage, OpMsg, OpReply

Decode = Callable[[bytes], list[MongoMessage]]
Recorded = Callable[[str, str], bytes]


@pytest.fixture
def find(recorded: Recorded, decode_all: Decode) -> bytes:
    """A recorded OP_MSG ``find`` command (header 16 bytes, flagBits 4, kind 0 at offset 20, body at 21)."""
    message = decode_all(recorded("find_getmore", "c2s"))[2]
    assert isinstance(message, OpMsg)
    assert message.command_name == "find"
    return message.raw


def _refused(data: bytes, decoder: MongoDecoder | None = None) -> DecodeError:
    decoder = decoder or MongoDecoder()
    with pytest.raises(DecodeError) as error:
        decoder.feed(data)
    with pytest.raises(DecodeError):  # poisoned
        decoder.feed(b"")
    return error.value


def _relength(data: bytearray) -> bytes:
    struct.pack_into("<i", data, 0, len(data))
    return bytes(data)


def test_two_gigabyte_header_fails_with_only_its_length_fed() -> None:
    decoder = MongoDecoder()
    error = _refused(struct.pack("<i", 2**31 - 1), decoder)
    assert error.reason == "message_too_large"
    assert decoder.buffered < 16


def test_two_gigabyte_header_fails_when_its_length_arrives_a_byte_at_a_time() -> None:
    decoder = MongoDecoder()
    length = struct.pack("<i", 2**31 - 1)
    for byte in length[:3]:
        assert decoder.feed(bytes([byte])) == []
    error = _refused(length[3:], decoder)
    assert error.reason == "message_too_large"
    assert decoder.buffered < 16


def test_declared_but_unsent_message_buffers_only_what_arrived(find: bytes) -> None:
    declared = bytearray(find)
    struct.pack_into("<i", declared, 0, 40_000_000)
    decoder = MongoDecoder()
    tracemalloc.start()
    try:
        assert decoder.feed(bytes(declared)) == []
        for _ in range(10):
            assert decoder.feed(b"\x00" * 1000) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.buffered == len(find) + 10_000
    assert peak < 1_000_000


def test_message_smaller_than_its_header_is_refused() -> None:
    assert _refused(struct.pack("<iiii", 15, 1, 0, 2013)).reason == "message_too_small"
    assert _refused(struct.pack("<i", -5)).reason == "message_too_small"


def test_a_custom_limit_is_enforced(find: bytes) -> None:
    decoder = MongoDecoder(max_message_size=len(find) - 1)
    assert _refused(find, decoder).reason == "message_too_large"


def test_limit_below_a_header_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        MongoDecoder(max_message_size=15)


def test_truncated_message_then_nothing_is_no_message_and_no_error(find: bytes) -> None:
    decoder = MongoDecoder()
    assert decoder.feed(find[:-1]) == []
    assert decoder.feed(b"") == []
    assert decoder.buffered == len(find) - 1
    assert decoder.unconsumed() == find[:-1]
    (message,) = decoder.feed(find[-1:])
    assert message.raw == find


def test_corrupt_element_type_in_the_body_is_invalid_bson(find: bytes) -> None:
    data = bytearray(find)
    data[25] = 0x42  # the first element's type byte: no such BSON type
    error = _refused(bytes(data))
    assert error.reason == "invalid_bson"


def test_body_length_prefix_past_the_message_is_invalid_bson(find: bytes) -> None:
    data = bytearray(find)
    struct.pack_into("<i", data, 21, len(find))
    assert _refused(bytes(data)).reason == "invalid_bson"


def test_string_length_prefix_inside_the_body_that_overruns_is_invalid_bson(find: bytes) -> None:
    data = bytearray(find)
    at = find.index(b"find\x00") + 5  # {find: "items"}: the string's int32 length
    struct.pack_into("<i", data, at, 1000)
    assert _refused(bytes(data)).reason == "invalid_bson"


def test_body_without_its_terminating_nul_is_invalid_bson(find: bytes) -> None:
    data = bytearray(find)
    data[-1] = 0x01
    assert _refused(bytes(data)).reason == "invalid_bson"


def test_large_body_is_checked_by_the_element_walk_too(recorded: Recorded, decode_all: Decode) -> None:
    # An insert of a 20 KB document inline: over SMALL_DOCUMENT, validated by walking its elements.
    from meshproxy.codecs.mongo import encode_op_msg

    real = decode_all(recorded("insert_many", "c2s"))[1]
    assert isinstance(real, OpMsg)
    document = real.document()
    document["comment"] = "c" * 20_000
    data = bytearray(encode_op_msg(document, request_id=1).raw)
    data[25] = 0x42
    assert _refused(bytes(data)).reason == "invalid_bson"


def test_invalid_document_in_a_sequence_is_refused(recorded: Recorded, decode_all: Decode) -> None:
    insert = decode_all(recorded("insert_many", "c2s"))[1]
    assert isinstance(insert, OpMsg)
    data = bytearray(insert.raw)
    first_doc = insert.raw.index(insert.sequences[0].documents[0])
    struct.pack_into("<i", data, first_doc, 3)
    assert _refused(bytes(data)).reason == "invalid_bson"


def test_corrupt_element_type_inside_a_sequence_document_is_invalid_bson(
    recorded: Recorded, decode_all: Decode
) -> None:
    """Framing intact (length prefix and NUL fit), only an element type broken: the walk must catch it."""
    insert = decode_all(recorded("insert_many", "c2s"))[1]
    assert isinstance(insert, OpMsg)
    data = bytearray(insert.raw)
    first_doc = insert.raw.index(insert.sequences[0].documents[0])
    data[first_doc + 4] = 0x42  # type byte of the document's first element
    assert _refused(bytes(data)).reason == "invalid_bson"
    # A decoder told not to walk documents (a proxy's reply side) checks framing only.
    assert len(MongoDecoder(validate_documents=False).feed(bytes(data))) == 1


def test_corrupt_element_type_inside_an_op_reply_document_is_invalid_bson(
    recorded: Recorded, decode_all: Decode
) -> None:
    reply = decode_all(recorded("legacy_handshake", "s2c"))[0]
    assert isinstance(reply, OpReply)
    data = bytearray(reply.raw)
    data[36 + 4] = 0x42  # first element type of the first returned document
    assert _refused(bytes(data)).reason == "invalid_bson"


def test_document_sequence_whose_size_overruns_the_message_is_refused(
    recorded: Recorded, decode_all: Decode
) -> None:
    insert = decode_all(recorded("insert_many", "c2s"))[1]
    assert isinstance(insert, OpMsg)
    data = bytearray(insert.raw)
    size_at = insert.raw.index(b"\x01", 21 + len(insert.body)) + 1
    struct.pack_into("<i", data, size_at, len(data))
    assert _refused(bytes(data)).reason == "invalid_sections"


def test_unknown_opcode_is_refused(find: bytes) -> None:
    data = bytearray(find)
    struct.pack_into("<i", data, 12, 2010)  # 2010 was OP_COMMAND, removed from the protocol
    error = _refused(bytes(data))
    assert error.reason == "unknown_opcode"


def test_op_msg_with_an_unknown_required_flag_bit_is_refused(find: bytes) -> None:
    data = bytearray(find)
    struct.pack_into("<I", data, 16, 1 << 5)
    assert _refused(bytes(data)).reason == "unknown_flags"


def test_op_msg_with_an_unknown_optional_flag_bit_is_accepted(find: bytes) -> None:
    data = bytearray(find)
    struct.pack_into("<I", data, 16, 1 << 20)
    (message,) = MongoDecoder().feed(bytes(data))
    assert isinstance(message, OpMsg)
    assert message.flag_bits == 1 << 20


def test_op_msg_with_two_body_sections_is_refused(find: bytes) -> None:
    body = find[20:]  # kind 0 + the body document
    assert _refused(_relength(bytearray(find + body))).reason == "invalid_sections"


def test_op_msg_with_no_body_section_is_refused(recorded: Recorded, decode_all: Decode) -> None:
    insert = decode_all(recorded("insert_many", "c2s"))[1]
    assert isinstance(insert, OpMsg)
    sequence_at = 21 + len(insert.body)
    data = bytearray(insert.raw[:20] + insert.raw[sequence_at:])
    assert _refused(_relength(data)).reason == "invalid_sections"


def test_op_msg_with_an_unknown_section_kind_is_refused(find: bytes) -> None:
    data = bytearray(find)
    data[20] = 2
    assert _refused(bytes(data)).reason == "invalid_sections"


def test_op_msg_checksum_flag_on_a_message_too_short_for_it_is_refused(find: bytes) -> None:
    data = bytearray(find[:21])
    struct.pack_into("<I", data, 16, 1)
    assert _refused(_relength(data)).reason == "truncated"


def test_op_msg_too_short_for_a_section_is_refused(find: bytes) -> None:
    assert _refused(_relength(bytearray(find[:20]))).reason == "truncated"


def _kill_cursors(count: int, ids: list[int]) -> bytes:
    body = struct.pack("<ii", 0, count) + b"".join(struct.pack("<q", i) for i in ids)
    return struct.pack("<iiii", 16 + len(body), 5, 0, 2007) + body


def test_legacy_kill_cursors_whose_count_fits_decodes(recorded: Recorded, decode_all: Decode) -> None:
    from meshproxy.codecs.mongo import OpKillCursors, encode

    find_reply = decode_all(recorded("kill_cursors", "s2c"))[2]
    assert isinstance(find_reply, OpMsg)
    cursor_id = find_reply.document()["cursor"]["id"]  # a real cursor id from SecantusDB
    data = _kill_cursors(1, [cursor_id])
    (message,) = MongoDecoder().feed(data)
    assert isinstance(message, OpKillCursors)
    assert message.cursor_ids == [cursor_id]
    assert encode(message) == data


@pytest.mark.parametrize(("count", "ids"), [(3, [1, 2]), (1, [1, 2]), (-1, []), (2**31 - 1, [1])])
def test_legacy_kill_cursors_whose_count_does_not_fit_is_refused(count: int, ids: list[int]) -> None:
    assert _refused(_kill_cursors(count, ids)).reason == "invalid_kill_cursors"


def test_op_reply_whose_number_returned_disagrees_with_its_documents_is_refused(
    recorded: Recorded, decode_all: Decode
) -> None:
    reply = decode_all(recorded("legacy_handshake", "s2c"))[0]
    data = bytearray(reply.raw)
    struct.pack_into("<i", data, 32, 2)
    assert _refused(bytes(data)).reason == "invalid_reply"


def test_op_query_with_trailing_bytes_is_refused(recorded: Recorded, decode_all: Decode) -> None:
    query = decode_all(recorded("legacy_handshake", "c2s"))[0]
    assert _refused(_relength(bytearray(query.raw + b"\x00\x00"))).reason in {"invalid_bson", "trailing_bytes"}


def test_op_query_with_an_unterminated_namespace_is_refused(recorded: Recorded, decode_all: Decode) -> None:
    query = decode_all(recorded("legacy_handshake", "c2s"))[0]
    data = bytearray(query.raw)
    nul = query.raw.index(b"\x00", 20)
    data[20 : len(data)] = b"a" * (len(data) - 20)
    assert nul > 20
    assert _refused(bytes(data)).reason == "truncated"


def test_good_messages_before_a_bad_one_in_the_same_feed_are_kept(find: bytes) -> None:
    bad = bytearray(find)
    bad[20] = 7
    decoder = MongoDecoder()
    error = _refused(find + find + bytes(bad) + find, decoder)
    assert error.reason == "invalid_sections"
    assert [m.raw for m in decoder.decoded_before_error()] == [find, find]
    assert decoder.decoded_before_error() == []
    assert decoder.unconsumed() == bytes(bad) + find


def test_poisoned_decoder_refuses_even_valid_bytes(find: bytes) -> None:
    decoder = MongoDecoder()
    bad = bytearray(find)
    bad[25] = 0x42
    first = _refused(bytes(bad), decoder)
    with pytest.raises(DecodeError) as again:
        decoder.feed(find)
    assert again.value is first
