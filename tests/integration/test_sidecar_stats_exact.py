"""After a known workload the sidecar's stats equal it exactly, wherever an operator reads them.

Three views must agree: the in-process store (``proxy.stats.values()``), the admin endpoint's ``/stats``
text and its ``/stats/prometheus`` exposition (where database, collection and command are labels, so a
per-namespace counter is the sum over the matching label sets). Each test runs against its own sidecar,
so every count below starts at zero.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError

from meshproxy.proxy import ProxyThread

from .support import PREFIX, AdminView, admin_view

pytestmark = pytest.mark.integration

Client = MongoClient[dict[str, Any]]

P = f"mongo.{PREFIX}"


def agree(proxy: ProxyThread, view: AdminView, name: str, expected: float) -> None:
    """``name`` reads ``expected`` in the store and in ``/stats``."""
    assert proxy.stats.values().get(name) == expected, name
    assert view.stats.get(name) == expected, name


def test_137_insert_ones_count_137_inserts_in_the_store_stats_text_and_prometheus(
    client: Client, sidecar: ProxyThread
) -> None:
    ledger = client.exact.ledger
    for i in range(137):
        ledger.insert_one({"_id": i, "amount": i * 3})

    view = admin_view(sidecar)
    agree(sidecar, view, f"{P}.cmd.insert.total", 137)
    agree(sidecar, view, f"{P}.db.exact.collection.ledger.cmd.insert.total", 137)
    agree(sidecar, view, f"{P}.db.exact.collection.ledger.cmd.insert.errors", 0)
    assert view.sample_sum("meshproxy_mongo_command_total", db="exact", collection="ledger", command="insert") == 137
    assert view.sample_sum("meshproxy_mongo_command_total", prefix=PREFIX, command="insert") == 137
    assert view.sample_sum("meshproxy_mongo_cmd_total", prefix=PREFIX, command="insert") == 137
    # Per-command latency histograms saw every one of them.
    assert view.sample_sum("meshproxy_mongo_cmd_reply_time_ms_count", command="insert") == 137
    assert view.sample_sum("meshproxy_mongo_command_duration_ms_count", collection="ledger", command="insert") == 137


def test_finds_are_counted_per_database_collection_and_command(client: Client, sidecar: ProxyThread) -> None:
    client.exact_a.fruit.insert_many([{"_id": n, "kind": "fruit"} for n in range(5)])
    client.exact_b.fruit.insert_many([{"_id": n, "kind": "fruit"} for n in range(3)])
    client.exact_b.veg.insert_one({"_id": 0, "kind": "veg"})

    for n in range(7):
        assert client.exact_a.fruit.find_one({"_id": n % 5}) == {"_id": n % 5, "kind": "fruit"}
    for n in range(4):
        assert client.exact_b.fruit.find_one({"_id": n % 3}) == {"_id": n % 3, "kind": "fruit"}
    assert list(client.exact_b.veg.find({})) == [{"_id": 0, "kind": "veg"}]

    view = admin_view(sidecar)
    agree(sidecar, view, f"{P}.cmd.find.total", 12)
    agree(sidecar, view, f"{P}.db.exact_a.collection.fruit.cmd.find.total", 7)
    agree(sidecar, view, f"{P}.db.exact_b.collection.fruit.cmd.find.total", 4)
    agree(sidecar, view, f"{P}.db.exact_b.collection.veg.cmd.find.total", 1)
    agree(sidecar, view, f"{P}.db.exact_a.collection.fruit.cmd.insert.total", 1)  # one insert_many
    # Envoy's per-collection query stats carry no database: fruit is 7 + 4.
    agree(sidecar, view, f"{P}.collection.fruit.query.total", 11)
    agree(sidecar, view, f"{P}.collection.veg.query.total", 1)

    command_total = "meshproxy_mongo_command_total"
    assert view.sample_sum(command_total, db="exact_a", collection="fruit", command="find") == 7
    assert view.sample_sum(command_total, db="exact_b", collection="fruit", command="find") == 4
    assert view.sample_sum(command_total, db="exact_b", collection="veg", command="find") == 1
    assert view.sample_sum(command_total, collection="fruit", command="find") == 11
    assert view.sample_sum(command_total, command="find") == 12
    assert view.sample_sum("meshproxy_mongo_collection_query_total", collection="fruit") == 11
    # find_one asks for one document per reply: the reply_num_docs histogram counted 12 replies of 1.
    assert view.sample_sum("meshproxy_mongo_cmd_reply_num_docs_count", command="find") == 12
    assert view.sample_sum("meshproxy_mongo_cmd_reply_num_docs_sum", command="find") == 12


def test_a_duplicate_key_is_counted_by_its_code_name(client: Client, sidecar: ProxyThread) -> None:
    users = client.exact.users
    users.insert_one({"_id": "ada"})
    for _ in range(3):
        with pytest.raises(DuplicateKeyError) as raised:
            users.insert_one({"_id": "ada"})
        assert raised.value.code == 11000

    view = admin_view(sidecar)
    agree(sidecar, view, f"{P}.cmd.insert.total", 4)
    agree(sidecar, view, f"{P}.cmd.insert.error.DuplicateKey", 3)
    agree(sidecar, view, f"{P}.db.exact.collection.users.cmd.insert.errors", 3)
    assert view.sample_sum("meshproxy_mongo_cmd_error_total", command="insert", code_name="DuplicateKey") == 3
    assert view.sample_sum("meshproxy_mongo_command_errors_total", collection="users", command="insert") == 3
    assert sidecar.stats.values()[f"{P}.unclassified_error"] == 0


def test_active_operation_gauges_return_to_zero_after_the_workload(client: Client, sidecar: ProxyThread) -> None:
    things = client.exact.things
    things.insert_many([{"_id": i} for i in range(50)])
    assert len(list(things.find({}, batch_size=7))) == 50
    things.update_many({}, {"$set": {"seen": True}})
    things.delete_many({"_id": {"$lt": 10}})
    assert things.count_documents({}) == 40

    values = sidecar.stats.values()
    # The driver's monitor may hold one awaitable hello open at the sidecar (it counts until answered);
    # nothing else may still be active.
    hellos = values.get(f"{P}.cmd.hello.total", 0) + values.get(f"{P}.cmd.isMaster.total", 0)
    assert hellos >= 1
    assert values[f"{P}.op_active"] in (0, 1)
    client.close()  # ends the monitor's streamed hello, and with it every open operation

    def settled() -> dict[str, float]:
        v = sidecar.stats.values()
        names = (f"{P}.op_active", "cluster.upstream.upstream_rq_active", f"listener.{PREFIX}.downstream_cx_active")
        return {name: v[name] for name in names}

    deadline = time.monotonic() + 5
    while any(settled().values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(settled().values()) == {0}
    view = admin_view(sidecar)
    assert view.stats[f"{P}.op_active"] == 0
    assert view.sample_sum("meshproxy_mongo_op_active", prefix=PREFIX) == 0
    assert view.stats["cluster.upstream.upstream_rq_active"] == 0
