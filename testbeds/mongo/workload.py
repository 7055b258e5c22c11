"""A small pymongo workload that touches every kind of operation a sidecar should see.

``run_workload`` returns how many times it issued each command, so a caller can compare the proxy's
counters with what really happened.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import pymongo
from pymongo.errors import DuplicateKeyError


def run_workload(uri: str, *, scale: int = 1) -> dict[str, int]:
    issued: Counter[str] = Counter()
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=5000, appname="meshproxy-demo"
    )
    try:
        db = client["shop"]
        db.drop_collection("orders")
        issued["drop"] += 1
        orders = db["orders"]

        for i in range(137 * scale):  # one insert command each
            orders.insert_one({"_id": i, "sku": f"sku-{i % 17}", "qty": i % 5, "price": i * 1.5})
        issued["insert"] += 137 * scale

        orders.insert_many([{"sku": f"bulk-{i}", "qty": 1} for i in range(2000 * scale)])
        issued["insert"] += 1  # one batch is enough for 2000 small documents

        orders.create_index([("sku", pymongo.ASCENDING)])
        issued["createIndexes"] += 1

        # A cursor that needs many getMores: batches of 100 over ~2137 documents.
        seen = sum(1 for _ in orders.find({}, batch_size=100))
        issued["find"] += 1
        issued["getMore"] += (seen - 1) // 100

        for sku in range(17):
            orders.find_one({"sku": f"sku-{sku}"})
        issued["find"] += 17

        orders.update_many({"qty": 0}, {"$set": {"restock": True}})
        issued["update"] += 1
        orders.delete_many({"qty": 4})
        issued["delete"] += 1

        list(orders.aggregate([{"$group": {"_id": "$qty", "n": {"$sum": 1}}}]))
        issued["aggregate"] += 1
        orders.count_documents({"qty": {"$gt": 1}})
        issued["aggregate"] += 1  # count_documents is an aggregate on the wire

        with contextlib.suppress(DuplicateKeyError):
            orders.insert_one({"_id": 0})
        issued["insert"] += 1
    finally:
        client.close()
    return dict(issued)
