"""Everyday driver work through the sidecar: pymongo -> meshproxy -> SecantusDB, with exact results.

Each test also checks that the sidecar saw the commands it relayed, so a test cannot pass by a driver
talking to SecantusDB behind the proxy's back.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import ASCENDING, DeleteOne, InsertOne, MongoClient, ReplaceOne, UpdateOne
from pymongo.errors import OperationFailure

from meshproxy.proxy import ProxyThread

from .support import PREFIX

pytestmark = pytest.mark.integration

Client = MongoClient[dict[str, Any]]


def cmd_total(proxy: ProxyThread, command: str) -> float:
    return proxy.stats.values().get(f"mongo.{PREFIX}.cmd.{command}.total", 0)


def test_insert_find_update_delete_one_give_exact_results(client: Client, sidecar: ProxyThread) -> None:
    people = client.crud.people
    people.drop()

    inserted = people.insert_one({"_id": "ada", "born": 1815, "langs": ["analytical engine"]})
    assert inserted.inserted_id == "ada"
    assert inserted.acknowledged

    assert people.find_one({"_id": "ada"}) == {"_id": "ada", "born": 1815, "langs": ["analytical engine"]}

    updated = people.update_one({"_id": "ada"}, {"$set": {"born": 1816}, "$push": {"langs": "notes"}})
    assert (updated.matched_count, updated.modified_count) == (1, 1)
    assert people.find_one({"_id": "ada"}, {"_id": 0}) == {"born": 1816, "langs": ["analytical engine", "notes"]}

    missed = people.update_one({"_id": "nobody"}, {"$set": {"x": 1}})
    assert (missed.matched_count, missed.modified_count) == (0, 0)

    deleted = people.delete_one({"_id": "ada"})
    assert deleted.deleted_count == 1
    assert people.find_one({"_id": "ada"}) is None
    assert people.count_documents({}) == 0

    assert cmd_total(sidecar, "insert") == 1
    assert cmd_total(sidecar, "update") == 2
    assert cmd_total(sidecar, "delete") == 1
    assert cmd_total(sidecar, "find") == 3


def test_insert_many_larger_than_one_message_arrives_whole_in_several_batches(
    client: Client, sidecar: ProxyThread
) -> None:
    # 50 documents of 1 MB exceed maxMessageSizeBytes (48 MB): pymongo must split them into several
    # OP_MSG inserts, each of which crosses the proxy as one whole message.
    bulk = client.crud.bulk_split
    bulk.drop()
    pad = "m" * 1_000_000
    result = bulk.insert_many([{"_id": i, "pad": pad} for i in range(50)])

    assert result.inserted_ids == list(range(50))
    assert bulk.count_documents({}) == 50
    assert cmd_total(sidecar, "insert") >= 2
    assert sidecar.stats.values()[f"mongo.{PREFIX}.db.crud.collection.bulk_split.cmd.insert.total"] >= 2
    stored = bulk.find_one({"_id": 49})
    assert stored is not None
    assert stored["pad"] == pad
    assert sidecar.stats.values()[f"mongo.{PREFIX}.decoding_error"] == 0


def test_a_cursor_over_many_getmores_returns_every_document_in_order(client: Client, sidecar: ProxyThread) -> None:
    numbers = client.crud.numbers
    numbers.drop()
    numbers.insert_many([{"_id": i, "square": i * i} for i in range(205)])

    seen = [doc["square"] for doc in numbers.find({}, sort=[("_id", ASCENDING)], batch_size=10)]

    assert seen == [i * i for i in range(205)]
    # The first batch comes with find; the other 195 documents need 20 getMores (the last one ends it).
    assert cmd_total(sidecar, "find") == 1
    assert cmd_total(sidecar, "getMore") == 20


def test_bulk_write_with_mixed_operations_reports_each_kind(client: Client, sidecar: ProxyThread) -> None:
    stock = client.crud.stock
    stock.drop()
    stock.insert_many([{"_id": "apple", "n": 1}, {"_id": "pear", "n": 2}, {"_id": "plum", "n": 3}])

    result = stock.bulk_write(
        [
            InsertOne({"_id": "fig", "n": 4}),
            UpdateOne({"_id": "apple"}, {"$inc": {"n": 10}}),
            UpdateOne({"_id": "kiwi"}, {"$set": {"n": 5}}, upsert=True),
            ReplaceOne({"_id": "pear"}, {"n": 20}),
            DeleteOne({"_id": "plum"}),
        ],
        ordered=True,
    )

    assert result.inserted_count == 1
    assert result.matched_count == 2
    assert result.modified_count == 2
    assert result.upserted_count == 1
    assert result.upserted_ids == {2: "kiwi"}
    assert result.deleted_count == 1
    assert sorted((d["_id"], d["n"]) for d in stock.find()) == [
        ("apple", 11),
        ("fig", 4),
        ("kiwi", 5),
        ("pear", 20),
    ]
    assert cmd_total(sidecar, "delete") == 1


def test_aggregate_pipeline_groups_and_sorts(client: Client, sidecar: ProxyThread) -> None:
    sales = client.crud.sales
    sales.drop()
    sales.insert_many(
        [{"shop": shop, "amount": amount} for shop, amount in [("a", 5), ("b", 7), ("a", 3), ("c", 1), ("b", 2)]]
    )

    totals = list(
        sales.aggregate(
            [
                {"$group": {"_id": "$shop", "total": {"$sum": "$amount"}, "count": {"$sum": 1}}},
                {"$sort": {"total": -1}},
            ]
        )
    )

    assert totals == [
        {"_id": "b", "total": 9, "count": 2},
        {"_id": "a", "total": 8, "count": 2},
        {"_id": "c", "total": 1, "count": 1},
    ]
    assert sidecar.stats.values()[f"mongo.{PREFIX}.db.crud.collection.sales.cmd.aggregate.total"] == 1


def test_create_index_then_list_indexes_shows_it(client: Client, sidecar: ProxyThread) -> None:
    users = client.crud.users
    users.drop()
    name = users.create_index([("email", ASCENDING)], unique=True, name="email_unique")

    assert name == "email_unique"
    indexes = {index["name"]: index for index in users.list_indexes()}
    assert set(indexes) == {"_id_", "email_unique"}
    assert dict(indexes["email_unique"]["key"]) == {"email": 1}
    assert indexes["email_unique"]["unique"] is True

    users.insert_one({"email": "a@example.org"})
    with pytest.raises(OperationFailure) as failure:
        users.insert_one({"email": "a@example.org"})
    assert failure.value.code == 11000
    assert cmd_total(sidecar, "createIndexes") == 1
    assert cmd_total(sidecar, "listIndexes") == 1


def test_transactions_commit_and_abort_through_the_sidecar(client: Client, sidecar: ProxyThread) -> None:
    ledger = client.crud.ledger
    ledger.drop()
    ledger.insert_one({"_id": "seed"})

    with client.start_session() as session, session.start_transaction():
        ledger.insert_one({"_id": "committed"}, session=session)
        ledger.update_one({"_id": "seed"}, {"$set": {"touched": True}}, session=session)

    with client.start_session() as session:
        session.start_transaction()
        ledger.insert_one({"_id": "aborted"}, session=session)
        assert ledger.count_documents({}, session=session) == 3
        session.abort_transaction()

    assert sorted(d["_id"] for d in ledger.find()) == ["committed", "seed"]
    assert ledger.find_one({"_id": "seed"}) == {"_id": "seed", "touched": True}
    assert cmd_total(sidecar, "commitTransaction") == 1
    assert cmd_total(sidecar, "abortTransaction") == 1
