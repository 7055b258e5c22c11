"""Everyday pymongo workloads through the sidecar give exactly the results they give against the server.

Chain: pymongo (plain ``mongodb://127.0.0.1:<sidecar port>``, no ``directConnection``) -> sidecar ->
SecantusDB. Each test also checks a count from the sidecar, so no test can pass with the driver talking
to SecantusDB behind the proxy's back.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from pymongo import (
    ASCENDING,
    DESCENDING,
    CursorType,
    DeleteMany,
    DeleteOne,
    InsertOne,
    MongoClient,
    ReplaceOne,
    UpdateMany,
    UpdateOne,
)
from pymongo.errors import OperationFailure

from meshproxy.proxy import ProxyThread

from .support import PREFIX, admin_view, client_for

pytestmark = pytest.mark.integration

Client = MongoClient[dict[str, Any]]

P = f"mongo.{PREFIX}"


def stat(proxy: ProxyThread, name: str) -> float:
    return proxy.stats.values().get(f"{P}.{name}", 0)


def test_crud_round_trip_returns_exact_results(client: Client, sidecar: ProxyThread) -> None:
    books = client.workloads.books
    books.insert_one({"_id": 1, "title": "Dune", "year": 1965, "tags": ["sf"]})
    books.insert_many(
        [
            {"_id": 2, "title": "Solaris", "year": 1961, "tags": ["sf", "pl"]},
            {"_id": 3, "title": "Emma", "year": 1815, "tags": []},
        ]
    )

    assert books.find_one({"_id": 2}) == {"_id": 2, "title": "Solaris", "year": 1961, "tags": ["sf", "pl"]}
    assert [b["title"] for b in books.find({"tags": "sf"}, sort=[("year", ASCENDING)])] == ["Solaris", "Dune"]
    assert books.count_documents({"year": {"$gt": 1900}}) == 2
    assert sorted(books.distinct("tags")) == ["pl", "sf"]

    updated = books.update_many({"tags": "sf"}, {"$inc": {"year": 1}, "$push": {"tags": "read"}})
    assert (updated.matched_count, updated.modified_count) == (2, 2)
    replaced = books.replace_one({"_id": 3}, {"title": "Emma", "year": 1816})
    assert (replaced.matched_count, replaced.modified_count) == (1, 1)
    upserted = books.update_one({"_id": 4}, {"$set": {"title": "Ubik"}}, upsert=True)
    assert upserted.upserted_id == 4
    assert books.find_one_and_update({"_id": 4}, {"$set": {"year": 1969}}, projection={"_id": 0}) == {"title": "Ubik"}

    assert list(books.find({}, sort=[("_id", ASCENDING)])) == [
        {"_id": 1, "title": "Dune", "year": 1966, "tags": ["sf", "read"]},
        {"_id": 2, "title": "Solaris", "year": 1962, "tags": ["sf", "pl", "read"]},
        {"_id": 3, "title": "Emma", "year": 1816},
        {"_id": 4, "title": "Ubik", "year": 1969},
    ]
    assert books.delete_many({"year": {"$lt": 1900}}).deleted_count == 1
    assert books.delete_one({"_id": 4}).deleted_count == 1
    assert sorted(b["_id"] for b in books.find()) == [1, 2]

    assert stat(sidecar, "cmd.insert.total") == 2
    assert stat(sidecar, "cmd.update.total") == 3
    assert stat(sidecar, "cmd.findAndModify.total") == 1
    assert stat(sidecar, "cmd.delete.total") == 2
    assert stat(sidecar, "db.workloads.collection.books.cmd.find.total") == 4
    assert stat(sidecar, "decoding_error") == 0


def test_an_insert_many_over_48_mb_is_split_into_two_inserts_and_every_document_arrives(
    client: Client, sidecar: ProxyThread
) -> None:
    # The cheapest real split: SecantusDB advertises maxWriteBatchSize 100000 (100001 tiny documents take
    # ~4 s to insert) and maxMessageSizeBytes 48,000,000. Seven documents of 7 MB (49 MB) take under a
    # second: pymongo packs six (42 MB) into the first OP_MSG and sends the seventh in a second one.
    blobs = client.workloads.blobs
    blobs.drop()
    size = 7_000_000
    docs = [{"_id": i, "blob": bytes([65 + i]) * size} for i in range(7)]

    result = blobs.insert_many(docs)

    assert result.inserted_ids == list(range(7))
    assert stat(sidecar, "cmd.insert.total") == 2
    assert stat(sidecar, "db.workloads.collection.blobs.cmd.insert.total") == 2
    assert blobs.count_documents({}) == 7
    for i in (0, 6):
        stored = blobs.find_one({"_id": i})
        assert stored is not None
        assert stored["blob"] == bytes([65 + i]) * size
    assert stat(sidecar, "db.workloads.collection.blobs.cmd.insert.request_bytes") > 7 * size
    assert stat(sidecar, "decoding_error") == 0


def test_a_cursor_of_500_documents_in_batches_of_10_takes_exactly_50_getmores(
    client: Client, sidecar: ProxyThread
) -> None:
    numbers = client.workloads.numbers
    numbers.drop()
    numbers.insert_many([{"_id": i, "cube": i**3} for i in range(500)])

    cubes = [doc["cube"] for doc in numbers.find({}, sort=[("_id", ASCENDING)], batch_size=10)]

    assert cubes == [i**3 for i in range(500)]
    # find brings documents 0-9 and getMores 1..49 the other 490. SecantusDB, like MongoDB, does not
    # look ahead: the batch holding the last document still carries a live cursor id, so the driver asks
    # once more and an empty 50th batch (cursor id 0) ends it.
    assert stat(sidecar, "cmd.find.total") == 1
    assert stat(sidecar, "cmd.getMore.total") == 50
    assert stat(sidecar, "db.workloads.collection.numbers.cmd.getMore.total") == 50
    view = admin_view(sidecar)
    assert view.sample_sum("meshproxy_mongo_cmd_reply_num_docs_count", command="getMore") == 50
    assert view.sample_sum("meshproxy_mongo_cmd_reply_num_docs_sum", command="getMore") == 490
    assert view.sample_sum("meshproxy_mongo_cmd_reply_num_docs_bucket", command="getMore", le="0.0") == 1
    assert stat(sidecar, "cursor.opened") == 1
    assert stat(sidecar, "cursor.exhausted") == 1
    assert stat(sidecar, "cursor.killed") == 0


def test_a_cursor_closed_early_is_killed_and_counted_so(client: Client, sidecar: ProxyThread) -> None:
    letters = client.workloads.letters
    letters.drop()
    letters.insert_many([{"_id": i} for i in range(100)])

    cursor = letters.find({}, sort=[("_id", ASCENDING)], batch_size=10)
    assert [next(cursor)["_id"] for _ in range(15)] == list(range(15))  # the find's batch and one getMore
    cursor.close()

    assert stat(sidecar, "cmd.getMore.total") == 1
    assert stat(sidecar, "cmd.killCursors.total") == 1
    assert stat(sidecar, "cursor.opened") == 1
    assert stat(sidecar, "cursor.killed") == 1
    assert stat(sidecar, "cursor.exhausted") == 0
    assert letters.count_documents({}) == 100


def test_bulk_write_with_every_kind_of_operation_reports_exact_counts(client: Client, sidecar: ProxyThread) -> None:
    stock = client.workloads.stock
    stock.drop()
    stock.insert_many([{"_id": name, "n": n} for name, n in [("apple", 1), ("pear", 2), ("plum", 3), ("fig", 0)]])

    result = stock.bulk_write(
        [
            InsertOne({"_id": "kiwi", "n": 5}),
            UpdateOne({"_id": "apple"}, {"$inc": {"n": 10}}),
            UpdateMany({"n": {"$gte": 2}}, {"$set": {"checked": True}}),
            UpdateOne({"_id": "lime"}, {"$set": {"n": 7}}, upsert=True),
            ReplaceOne({"_id": "pear"}, {"n": 20}),
            DeleteOne({"_id": "plum"}),
            DeleteMany({"n": 0}),
        ],
        ordered=True,
    )

    assert result.inserted_count == 1
    assert result.upserted_ids == {3: "lime"}
    assert result.matched_count == 1 + 4 + 1  # apple; apple, pear, plum, kiwi (n >= 2); pear
    assert result.modified_count == 6
    assert result.deleted_count == 2
    assert sorted((d["_id"], d["n"], d.get("checked", False)) for d in stock.find()) == [
        ("apple", 11, True),
        ("kiwi", 5, True),
        ("lime", 7, False),
        ("pear", 20, False),
    ]
    # An ordered bulk is sent as runs of the same kind: insert (2: the seed and the bulk's), one update
    # run (UpdateOne, UpdateMany, upsert, replace), one delete run.
    assert stat(sidecar, "cmd.insert.total") == 2
    assert stat(sidecar, "cmd.update.total") == 1
    assert stat(sidecar, "cmd.delete.total") == 1


def test_aggregate_groups_filters_and_sorts(client: Client, sidecar: ProxyThread) -> None:
    sales = client.workloads.sales
    sales.drop()
    sales.insert_many(
        [
            {"shop": shop, "amount": amount, "paid": paid}
            for shop, amount, paid in [("a", 5, True), ("b", 7, True), ("a", 3, True), ("c", 1, False), ("b", 2, True)]
        ]
    )

    pipeline: list[dict[str, Any]] = [
        {"$match": {"paid": True}},
        {"$group": {"_id": "$shop", "total": {"$sum": "$amount"}, "count": {"$sum": 1}}},
        {"$sort": {"total": DESCENDING}},
    ]
    assert list(sales.aggregate(pipeline)) == [
        {"_id": "b", "total": 9, "count": 2},
        {"_id": "a", "total": 8, "count": 2},
    ]
    assert stat(sidecar, "db.workloads.collection.sales.cmd.aggregate.total") == 1
    assert stat(sidecar, "db.workloads.collection.sales.cmd.aggregate.errors") == 0


def test_create_index_then_list_indexes_and_the_index_is_enforced(client: Client, sidecar: ProxyThread) -> None:
    users = client.workloads.users
    users.drop()

    assert users.create_index([("email", ASCENDING)], unique=True, name="by_email") == "by_email"
    assert users.create_index([("age", DESCENDING), ("name", ASCENDING)]) == "age_-1_name_1"

    indexes = {index["name"]: index for index in users.list_indexes()}
    assert set(indexes) == {"_id_", "by_email", "age_-1_name_1"}
    assert dict(indexes["by_email"]["key"]) == {"email": 1}
    assert indexes["by_email"]["unique"] is True
    assert dict(indexes["age_-1_name_1"]["key"]) == {"age": -1, "name": 1}
    users.insert_one({"email": "a@example.org"})
    with pytest.raises(OperationFailure) as failure:
        users.insert_one({"email": "a@example.org"})
    assert failure.value.code == 11000

    assert stat(sidecar, "cmd.createIndexes.total") == 2
    assert stat(sidecar, "db.workloads.collection.users.cmd.listIndexes.total") == 1
    assert stat(sidecar, "cmd.insert.error.DuplicateKey") == 1


def test_a_transaction_commits_and_another_aborts(client: Client, sidecar: ProxyThread) -> None:
    accounts = client.workloads.accounts
    accounts.drop()
    accounts.insert_many([{"_id": "alice", "balance": 100}, {"_id": "bob", "balance": 0}])

    with client.start_session() as session, session.start_transaction():
        accounts.update_one({"_id": "alice"}, {"$inc": {"balance": -30}}, session=session)
        accounts.update_one({"_id": "bob"}, {"$inc": {"balance": 30}}, session=session)

    with client.start_session() as session:
        session.start_transaction()
        accounts.update_one({"_id": "alice"}, {"$inc": {"balance": -1000}}, session=session)
        # Inside the transaction the write is visible; outside it is not.
        assert accounts.find_one({"_id": "alice"}, session=session) == {"_id": "alice", "balance": -930}
        assert accounts.find_one({"_id": "alice"}) == {"_id": "alice", "balance": 70}
        session.abort_transaction()

    assert sorted((a["_id"], a["balance"]) for a in accounts.find()) == [("alice", 70), ("bob", 30)]
    assert stat(sidecar, "cmd.commitTransaction.total") == 1
    assert stat(sidecar, "cmd.abortTransaction.total") == 1
    assert stat(sidecar, "cmd.commitTransaction.errors") == 0


def test_the_driver_stays_on_the_sidecar_though_the_server_advertises_its_own_port(
    client: Client, sidecar: ProxyThread, secantus: tuple[str, int]
) -> None:
    client.workloads.probe.insert_one({"_id": 1})
    proxy_address = sidecar.listener_address(PREFIX)

    assert client.address == proxy_address
    assert set(client.topology_description.server_descriptions()) == {proxy_address}
    assert client.primary == proxy_address
    assert proxy_address != secantus
    assert stat(sidecar, "topology_rewrite") > 0
    # Every operation crossed the proxy: the insert and nothing behind its back.
    assert stat(sidecar, "db.workloads.collection.probe.cmd.insert.total") == 1


def test_an_exhaust_cursor_streams_through_the_sidecar_and_every_reply_is_counted(
    client: Client, sidecar: ProxyThread
) -> None:
    """With ``CursorType.EXHAUST`` the server streams the getMore's batches as ``moreToCome`` replies.

    SecantusDB answers every streamed reply to the getMore's own requestID (the wire protocol says: to
    the previous reply's), so the sidecar must match both ways; an unmatched reply would pass unseen.
    """
    numbers = client.workloads.exhausted
    numbers.drop()
    numbers.insert_many([{"_id": i} for i in range(100)])

    ids = [d["_id"] for d in numbers.find({}, sort=[("_id", ASCENDING)], batch_size=10, cursor_type=CursorType.EXHAUST)]

    assert ids == list(range(100))
    assert stat(sidecar, "unexpected_reply") == 0
    assert stat(sidecar, "cmd.getMore.total") == 1  # one request, answered by a stream of replies
    # 90 documents after the find's batch: 9 streamed batches with moreToCome, and a last empty one.
    view = admin_view(sidecar)
    assert view.sample_sum("meshproxy_mongo_cmd_reply_num_docs_count", command="getMore") == 10
    assert view.sample_sum("meshproxy_mongo_cmd_reply_num_docs_sum", command="getMore") == 90
    assert stat(sidecar, "cursor.opened") == 1
    assert stat(sidecar, "cursor.exhausted") == 1


def test_the_driver_stays_on_the_sidecar_across_streamed_heartbeats(
    sidecar: ProxyThread, secantus: tuple[str, int]
) -> None:
    """pymongo's monitor parks an awaitable ``hello`` and the server streams a reply each heartbeat. Each
    streamed reply must be rewritten too, or the driver learns the server's own address and leaves."""
    proxy_address = sidecar.listener_address(PREFIX)
    with client_for(proxy_address, heartbeatFrequencyMS=500) as mongo:
        mongo.workloads.heartbeats.insert_one({"_id": 1})
        deadline = time.monotonic() + 5
        while stat(sidecar, "op_reply_more_to_come") < 3:
            assert time.monotonic() < deadline, "no streamed heartbeats came"
            time.sleep(0.05)
        assert mongo.workloads.heartbeats.find_one() == {"_id": 1}
        assert mongo.address == proxy_address
        assert set(mongo.topology_description.server_descriptions()) == {proxy_address}
    assert stat(sidecar, "unexpected_reply") == 0
    assert stat(sidecar, "topology_rewrite") >= 4  # the handshakes, and each streamed heartbeat
