"""The decoder on the bytes real pymongo sent and a real SecantusDB answered (tests/fixtures/mongo_streams).

Every recorded stream decodes entirely, into the messages the scenario made the driver send, and each
message's ``raw`` is exactly its slice of the stream, so a proxy forwarding ``raw`` forwards the stream.
"""

from __future__ import annotations

from collections.abc import Callable

import bson
import crc32c
import pytest
from conftest import SCENARIOS

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.mongo import (
    EXHAUST_ALLOWED,
    MORE_TO_COME,
    Compressor,
    MongoDecoder,
    MongoMessage,
    OpCompressed,
    OpMsg,
    OpQuery,
    OpReply,
    encode,
    summarize_reply,
)

Decode = Callable[[bytes], list[MongoMessage]]
Recorded = Callable[[str, str], bytes]

# (command_name, $db, collection) of every client message, in order, per scenario.
EXPECTED_REQUESTS: dict[str, list[tuple[str, str, str | None]]] = {
    "handshake": [("ismaster", "admin", None), ("hello", "admin", None), ("ping", "admin", None),
                  ("endSessions", "admin", None)],
    "insert_many": [("ismaster", "admin", None)] + [("insert", "app", "people")] * 4
    + [("endSessions", "admin", None)],
    "find_getmore": [("ismaster", "admin", None), ("insert", "app", "items"), ("find", "app", "items")]
    + [("getMore", "app", None)] * 3 + [("endSessions", "admin", None)],
    "exhaust": [("ismaster", "admin", None), ("insert", "app", "stream"), ("find", "app", "stream"),
                ("getMore", "app", None), ("endSessions", "admin", None)],
    "kill_cursors": [("ismaster", "admin", None), ("insert", "app", "logs"), ("find", "app", "logs"),
                     ("killCursors", "app", "logs"), ("endSessions", "admin", None)],
    "bulk_write": [("ismaster", "admin", None), ("insert", "app", "orders"), ("update", "app", "orders"),
                   ("delete", "app", "orders"), ("endSessions", "admin", None)],
    "aggregate": [("ismaster", "admin", None), ("insert", "app", "sales"), ("aggregate", "app", "sales"),
                  ("endSessions", "admin", None)],
    "create_index": [("ismaster", "admin", None), ("createIndexes", "app", "users"),
                     ("endSessions", "admin", None)],
    "transaction": [("ismaster", "admin", None), ("insert", "app", "accounts"), ("update", "app", "accounts"),
                    ("insert", "app", "accounts"), ("commitTransaction", "admin", None),
                    ("endSessions", "admin", None)],
    "unacknowledged": [("ismaster", "admin", None), ("insert", "app", "events"), ("ping", "admin", None),
                       ("endSessions", "admin", None)],
    "duplicate_key": [("ismaster", "admin", None)] + [("insert", "app", "unique")] * 3
    + [("endSessions", "admin", None)],
}


def test_every_scenario_was_recorded() -> None:
    assert set(SCENARIOS) == {*EXPECTED_REQUESTS, "legacy_handshake"}


@pytest.mark.parametrize("scenario", sorted(EXPECTED_REQUESTS))
def test_client_stream_decodes_to_the_commands_the_driver_sent(
    scenario: str, recorded: Recorded, decode_all: Decode
) -> None:
    messages = decode_all(recorded(scenario, "c2s"))
    assert all(type(m) is OpMsg for m in messages)
    seen = [(m.command_name, m.database, m.collection) for m in messages if isinstance(m, OpMsg)]
    assert seen == EXPECTED_REQUESTS[scenario]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_each_message_raw_is_its_exact_slice_of_the_stream(
    scenario: str, direction: str, recorded: Recorded, decode_all: Decode
) -> None:
    data = recorded(scenario, direction)
    messages = decode_all(data)
    assert messages
    offset = 0
    for message in messages:
        assert message.raw == data[offset : offset + message.header.message_length]
        assert len(message.raw) == message.header.message_length
        offset += len(message.raw)
    assert offset == len(data)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_encoding_a_decoded_message_gives_back_its_wire_bytes(
    scenario: str, direction: str, recorded: Recorded, decode_all: Decode
) -> None:
    messages = decode_all(recorded(scenario, direction))
    for message in messages:
        assert encode(message) == message.raw


@pytest.mark.parametrize("scenario", sorted(set(EXPECTED_REQUESTS) - {"exhaust"}))
def test_every_reply_answers_the_request_before_it(scenario: str, recorded: Recorded, decode_all: Decode) -> None:
    requests = decode_all(recorded(scenario, "c2s"))
    replies = decode_all(recorded(scenario, "s2c"))
    answered = [r.header.request_id for r in requests if not (isinstance(r, OpMsg) and r.more_to_come)]
    assert [r.header.response_to for r in replies] == answered
    assert all(r.header.response_to == 0 for r in requests)


def test_exhaust_getmore_is_answered_by_replies_flagged_more_to_come_until_the_last(
    recorded: Recorded, decode_all: Decode
) -> None:
    requests = decode_all(recorded("exhaust", "c2s"))
    replies = decode_all(recorded("exhaust", "s2c"))
    get_more = requests[3]
    assert isinstance(get_more, OpMsg)
    assert get_more.flag_bits == EXHAUST_ALLOWED
    assert get_more.exhaust_allowed
    streamed = replies[3:7]
    assert all(isinstance(r, OpMsg) for r in streamed)
    assert [r.more_to_come for r in streamed if isinstance(r, OpMsg)] == [True, True, True, False]
    # SecantusDB answers every streamed reply to the getMore itself (mongod chains them to the previous
    # reply); a proxy must accept both, so the codec keeps responseTo as sent.
    assert {r.header.response_to for r in streamed} == {get_more.header.request_id}
    assert [summarize_reply(r).num_docs for r in streamed] == [3, 3, 1, 0]


def test_insert_many_split_into_batches_decodes_to_one_op_msg_per_batch(
    recorded: Recorded, decode_all: Decode
) -> None:
    inserts = [m for m in decode_all(recorded("insert_many", "c2s")) if isinstance(m, OpMsg)][1:5]
    assert [m.document_count() for m in inserts] == [250, 250, 250, 10]
    for batch, message in enumerate(inserts):
        (sequence,) = message.sequences
        assert sequence.identifier == "documents"
        assert "documents" not in message.document()
        # The documents stay raw BSON; the first _id says where the batch starts.
        assert bson.decode(sequence.documents[0])["_id"] == 250 * batch
    assert sum(m.document_count() for m in inserts) == 760


def test_bulk_write_sends_one_command_per_kind_with_its_own_sequence_identifier(
    recorded: Recorded, decode_all: Decode
) -> None:
    writes = [m for m in decode_all(recorded("bulk_write", "c2s")) if isinstance(m, OpMsg)][1:4]
    assert [(m.command_name, [(s.identifier, len(s.documents)) for s in m.sequences]) for m in writes] == [
        ("insert", [("documents", 2)]),
        ("update", [("updates", 2)]),
        ("delete", [("deletes", 1)]),
    ]


def test_getmore_names_its_collection_in_the_body_not_as_first_value(
    recorded: Recorded, decode_all: Decode
) -> None:
    get_mores = [m for m in decode_all(recorded("find_getmore", "c2s")) if isinstance(m, OpMsg)][3:6]
    for message in get_mores:
        assert message.command_name == "getMore"
        assert message.collection is None  # getMore's first value is the cursor id
        assert message.top_level_string("collection") == "items"


def test_kill_cursors_names_the_cursor_the_find_left_open(recorded: Recorded, decode_all: Decode) -> None:
    requests = decode_all(recorded("kill_cursors", "c2s"))
    replies = decode_all(recorded("kill_cursors", "s2c"))
    find_reply = replies[2]
    assert isinstance(find_reply, OpMsg)
    cursor_id = find_reply.document()["cursor"]["id"]
    kill = requests[3]
    assert isinstance(kill, OpMsg)
    assert kill.document()["cursors"] == [cursor_id]


def test_transaction_statements_carry_the_session_and_txn_number(recorded: Recorded, decode_all: Decode) -> None:
    messages = [m for m in decode_all(recorded("transaction", "c2s")) if isinstance(m, OpMsg)]
    update, insert, commit = (m.document() for m in messages[2:5])
    assert update["startTransaction"] is True
    assert "startTransaction" not in insert
    assert update["txnNumber"] == insert["txnNumber"] == commit["txnNumber"]
    assert update["lsid"] == insert["lsid"] == commit["lsid"]
    assert commit["autocommit"] is False


def test_unacknowledged_write_is_more_to_come_and_gets_no_reply(recorded: Recorded, decode_all: Decode) -> None:
    requests = decode_all(recorded("unacknowledged", "c2s"))
    replies = decode_all(recorded("unacknowledged", "s2c"))
    insert = requests[1]
    assert isinstance(insert, OpMsg)
    assert insert.flag_bits == MORE_TO_COME
    assert insert.more_to_come
    assert insert.document()["writeConcern"] == {"w": 0}
    assert insert.header.request_id not in {r.header.response_to for r in replies}
    assert len(replies) == len(requests) - 1


def test_legacy_handshake_is_an_op_query_on_admin_cmd_answered_by_op_reply(
    recorded: Recorded, decode_all: Decode
) -> None:
    requests = decode_all(recorded("legacy_handshake", "c2s"))
    replies = decode_all(recorded("legacy_handshake", "s2c"))
    assert [type(m) for m in requests] == [OpQuery, OpQuery, OpMsg, OpMsg]
    assert [type(m) for m in replies] == [OpReply, OpReply, OpMsg, OpMsg]
    is_master = requests[0]
    assert isinstance(is_master, OpQuery)
    assert (is_master.database, is_master.collection, is_master.is_command) == ("admin", "$cmd", True)
    assert is_master.command_name == "isMaster"
    assert is_master.number_to_return == -1
    assert is_master.document()["client"]["driver"]["name"] == "PyMongo"
    reply = replies[0]
    assert isinstance(reply, OpReply)
    assert (reply.number_returned, reply.cursor_id, reply.response_flags) == (1, 0, 0)
    first = reply.first_document()
    assert first is not None
    assert first["ismaster"] is True
    hello, ping = requests[2:]
    assert isinstance(hello, OpMsg)
    assert isinstance(ping, OpMsg)
    assert (hello.command_name, ping.command_name) == ("hello", "ping")


def test_legacy_query_on_a_collection_is_not_a_command(recorded: Recorded, decode_all: Decode) -> None:
    query = decode_all(recorded("legacy_handshake", "c2s"))[1]
    assert isinstance(query, OpQuery)
    assert (query.database, query.collection) == ("app", "items")
    assert not query.is_command
    assert query.command_name is None
    assert query.document() == {"$query": {"x": 1}, "$orderby": {"x": 1}}
    assert query.number_to_return == 5


def test_handshake_reply_carries_the_limits_the_recorder_gave_pymongo(
    recorded: Recorded, decode_all: Decode
) -> None:
    reply = decode_all(recorded("insert_many", "s2c"))[0]
    assert isinstance(reply, OpMsg)
    assert reply.document()["maxWriteBatchSize"] == 250  # lowered in place by the recorder
    assert reply.document()["maxMessageSizeBytes"] == 48_000_000


@pytest.mark.parametrize("compressor", [Compressor.ZLIB, Compressor.ZSTD, Compressor.SNAPPY])
def test_pymongo_compressed_find_decodes_to_op_compressed_with_the_inner_command(
    compressor: Compressor, pymongo_op_msg: Callable[..., bytes]
) -> None:
    command = {"find": "users", "filter": {"age": {"$gt": 30}}, "limit": 5}
    data = pymongo_op_msg(command, "shop", compressor=compressor.name.lower())
    (message,) = MongoDecoder().feed(data)
    assert isinstance(message, OpCompressed)
    assert message.compressor == compressor
    assert message.raw == data
    inner = message.inner
    assert isinstance(inner, OpMsg)
    assert (inner.command_name, inner.database, inner.collection) == ("find", "shop", "users")
    assert inner.document()["filter"] == {"age": {"$gt": 30}}
    assert message.uncompressed_size == len(inner.raw) - 16
    assert inner.header.request_id == message.header.request_id
    assert encode(message)[:25] == data[:25]
    (again,) = MongoDecoder().feed(encode(message))
    assert isinstance(again, OpCompressed)
    assert again.inner.raw == inner.raw


@pytest.mark.parametrize("compressor", ["zlib", "zstd", "snappy"])
def test_every_recorded_request_survives_compression_by_pymongo_then_decoding(
    compressor: str, recorded: Recorded, decode_all: Decode, pymongo_op_msg: Callable[..., bytes]
) -> None:
    for message in decode_all(recorded("bulk_write", "c2s")):
        assert isinstance(message, OpMsg)
        document = message.document()
        db = document.pop("$db")
        for sequence in message.sequences:
            document[sequence.identifier] = [bson.decode(d) for d in sequence.documents]
        (compressed,) = MongoDecoder().feed(pymongo_op_msg(document, db, compressor=compressor))
        assert isinstance(compressed, OpCompressed)
        assert compressed.inner.command_name == message.command_name  # type: ignore[union-attr]


def test_checksummed_op_msg_verifies_and_keeps_its_checksum(
    recorded: Recorded, decode_all: Decode, checksummed: Callable[[bytes], bytes]
) -> None:
    for original in decode_all(recorded("find_getmore", "c2s")):
        data = checksummed(original.raw)
        (message,) = MongoDecoder().feed(data)
        assert isinstance(message, OpMsg)
        assert isinstance(original, OpMsg)
        assert message.checksum == crc32c.crc32c(data[:-4])
        assert message.body == original.body
        assert message.command_name == original.command_name
        assert encode(message) == data


def test_checksummed_op_msg_with_a_flipped_byte_is_a_bad_checksum(
    recorded: Recorded, decode_all: Decode, checksummed: Callable[[bytes], bytes]
) -> None:
    find = decode_all(recorded("find_getmore", "c2s"))[2]
    data = bytearray(checksummed(find.raw))
    data[len(data) // 2] ^= 0x01
    decoder = MongoDecoder()
    with pytest.raises(DecodeError) as error:
        decoder.feed(bytes(data))
    assert error.value.reason == "bad_checksum"
    with pytest.raises(DecodeError):
        decoder.feed(b"")


def test_a_checksum_mismatch_is_accepted_when_verification_is_off(
    recorded: Recorded, decode_all: Decode, checksummed: Callable[[bytes], bytes]
) -> None:
    find = decode_all(recorded("find_getmore", "c2s"))[2]
    data = bytearray(checksummed(find.raw))
    data[-1] ^= 0xFF
    (message,) = MongoDecoder(verify_checksum=False).feed(bytes(data))
    assert isinstance(message, OpMsg)
    assert message.command_name == "find"


def test_whole_conversation_decodes_the_same_with_document_validation_off(
    recorded: Recorded, decode_all: Decode
) -> None:
    for scenario in SCENARIOS:
        data = recorded(scenario, "s2c")
        fast = MongoDecoder(validate_documents=False).feed(data)
        assert [m.raw for m in fast] == [m.raw for m in decode_all(data)]
