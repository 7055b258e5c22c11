"""``summarize_reply`` on the replies SecantusDB really sent to pymongo (tests/fixtures/mongo_streams)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshproxy.codecs.mongo import (
    REPLY_CURSOR_NOT_FOUND,
    REPLY_QUERY_FAILURE,
    MongoDecoder,
    MongoMessage,
    OpMsg,
    OpReply,
    ReplySummary,
    compress_message,
    encode_op_msg,
    encode_op_reply,
    summarize_reply,
)
from meshproxy.codecs.mongo._reply import SMALL_REPLY, summarize_document

Decode = Callable[[bytes], list[MongoMessage]]
Recorded = Callable[[str, str], bytes]


def _replies(scenario: str, recorded: Recorded, decode_all: Decode) -> list[ReplySummary]:
    return [summarize_reply(m) for m in decode_all(recorded(scenario, "s2c"))]


def test_find_and_getmores_report_each_batch_and_the_cursor_until_it_is_exhausted(
    recorded: Recorded, decode_all: Decode
) -> None:
    summaries = _replies("find_getmore", recorded, decode_all)[2:6]
    assert [s.num_docs for s in summaries] == [3, 3, 3, 1]
    cursor_id = summaries[0].cursor_id
    assert cursor_id is not None
    assert cursor_id != 0
    assert [s.cursor_id for s in summaries] == [cursor_id, cursor_id, cursor_id, 0]
    assert all(s.ok and s.code is None and not s.cursor_not_found for s in summaries)


def test_find_closed_early_leaves_its_cursor_open_until_kill_cursors(recorded: Recorded, decode_all: Decode) -> None:
    find, kill = _replies("kill_cursors", recorded, decode_all)[2:4]
    assert find.num_docs == 2
    assert find.cursor_id not in (None, 0)
    assert kill.ok
    assert kill.cursor_id is None  # killCursors' reply is not a cursor batch


def test_aggregate_reply_is_one_exhausted_batch(recorded: Recorded, decode_all: Decode) -> None:
    aggregate = _replies("aggregate", recorded, decode_all)[2]
    assert (aggregate.ok, aggregate.num_docs, aggregate.cursor_id) == (True, 2, 0)


def test_write_replies_are_ok_without_cursor_or_documents(recorded: Recorded, decode_all: Decode) -> None:
    for scenario in ("insert_many", "bulk_write", "transaction", "create_index"):
        for summary in _replies(scenario, recorded, decode_all):
            assert summary == ReplySummary(True, None, None, None, None, 0, False, False, ())


def test_duplicate_key_is_a_write_error_inside_an_ok_reply(recorded: Recorded, decode_all: Decode) -> None:
    single, unordered = _replies("duplicate_key", recorded, decode_all)[2:4]
    # SecantusDB, like mongod, puts no codeName in writeErrors entries: only code 11000.
    assert single.write_errors == ((11000, None),)
    assert single.ok
    assert single.code is None
    assert unordered.write_errors == ((11000, None),)


def test_duplicate_key_write_errors_read_the_same_by_the_large_reply_walk(
    recorded: Recorded, decode_all: Decode
) -> None:
    reply = decode_all(recorded("duplicate_key", "s2c"))[2]
    assert isinstance(reply, OpMsg)
    document = reply.document()
    document["writeErrors"][0]["codeName"] = "DuplicateKey"
    document["padding"] = "x" * (SMALL_REPLY + 1)  # forces the element walk instead of bson.decode
    large = encode_op_msg(document, request_id=9, response_to=1)
    assert len(large.body) > SMALL_REPLY
    summary = summarize_document(large.body)
    assert summary.write_errors == ((11000, "DuplicateKey"),)
    assert summary.ok


def test_large_cursor_reply_is_summarised_the_same_as_a_small_one(recorded: Recorded, decode_all: Decode) -> None:
    reply = decode_all(recorded("find_getmore", "s2c"))[2]
    assert isinstance(reply, OpMsg)
    small = summarize_reply(reply)
    document = reply.document()
    document["cursor"]["firstBatch"] = [{"_id": i, "blob": "y" * 100} for i in range(400)]
    (large,) = MongoDecoder().feed(encode_op_msg(document, request_id=1, response_to=2).raw)
    assert isinstance(large, OpMsg)
    assert len(large.body) > SMALL_REPLY
    assert summarize_reply(large) == small._replace(num_docs=400)


def test_legacy_is_master_reply_is_an_ok_command_reply(recorded: Recorded, decode_all: Decode) -> None:
    is_master, legacy_query = _replies("legacy_handshake", recorded, decode_all)[:2]
    assert is_master.ok
    assert is_master.num_docs == 1
    assert is_master.cursor_id == 0
    # SecantusDB answers a legacy collection query as an unknown command.
    assert not legacy_query.ok
    assert (legacy_query.code, legacy_query.code_name) == (59, "CommandNotFound")
    assert legacy_query.errmsg is not None


def test_compressed_reply_is_summarised_from_its_inner_message(recorded: Recorded, decode_all: Decode) -> None:
    reply = decode_all(recorded("find_getmore", "s2c"))[2]
    (compressed,) = MongoDecoder().feed(compress_message(reply, 2))
    assert summarize_reply(compressed) == summarize_reply(reply)


def test_query_failure_flag_makes_a_legacy_reply_fail() -> None:
    reply = encode_op_reply([{"$err": "bad query", "code": 2}], request_id=1, response_to=7,
                            response_flags=REPLY_QUERY_FAILURE)
    (decoded,) = MongoDecoder().feed(reply.raw)
    summary = summarize_reply(decoded)
    assert not summary.ok
    assert summary.query_failure
    assert (summary.code, summary.errmsg) == (2, "bad query")


def test_cursor_not_found_flag_makes_a_legacy_reply_fail() -> None:
    reply = encode_op_reply([], request_id=1, response_to=7, response_flags=REPLY_CURSOR_NOT_FOUND, cursor_id=0)
    (decoded,) = MongoDecoder().feed(reply.raw)
    summary = summarize_reply(decoded)
    assert summary.cursor_not_found
    assert not summary.ok
    assert summary.num_docs == 0


def test_a_request_is_not_a_reply(recorded: Recorded, decode_all: Decode) -> None:
    query = decode_all(recorded("legacy_handshake", "c2s"))[0]
    with pytest.raises(TypeError):
        summarize_reply(query)


def test_op_reply_with_documents_is_a_legacy_batch(recorded: Recorded, decode_all: Decode) -> None:
    reply = decode_all(recorded("legacy_handshake", "s2c"))[0]
    assert isinstance(reply, OpReply)
    documents = [{"_id": i} for i in range(3)]
    batch = encode_op_reply(documents, request_id=2, response_to=3, cursor_id=77)
    (decoded,) = MongoDecoder().feed(batch.raw)
    summary = summarize_reply(decoded)
    assert (summary.ok, summary.num_docs, summary.cursor_id) == (True, 3, 77)
