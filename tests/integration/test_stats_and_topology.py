"""What the sidecar reports after a known workload, and that drivers stay on it.

The same counter must read the same in the three places an operator can look: the in-process store,
the admin ``/stats`` text and ``/stats/prometheus`` (where per db/collection counters are labels).
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient

from meshproxy.proxy import ProxyThread

from .support import PREFIX, admin_view

pytestmark = pytest.mark.integration

Client = MongoClient[dict[str, Any]]


def test_137_inserts_read_137_in_the_store_the_stats_text_and_prometheus(client: Client, sidecar: ProxyThread) -> None:
    events = client.statsdb.events
    for i in range(137):
        events.insert_one({"_id": i})
    assert events.count_documents({}) == 137

    values = sidecar.stats.values()
    assert values[f"mongo.{PREFIX}.cmd.insert.total"] == 137
    assert values[f"mongo.{PREFIX}.db.statsdb.collection.events.cmd.insert.total"] == 137

    view = admin_view(sidecar)
    assert view.stats[f"mongo.{PREFIX}.cmd.insert.total"] == 137
    assert view.stats[f"mongo.{PREFIX}.db.statsdb.collection.events.cmd.insert.total"] == 137
    assert view.sample_sum("meshproxy_mongo_cmd_total", prefix=PREFIX, command="insert") == 137
    assert view.sample_sum("meshproxy_mongo_command_total", prefix=PREFIX, command="insert") == 137
    assert (
        view.sample_sum(
            "meshproxy_mongo_command_total", prefix=PREFIX, db="statsdb", collection="events", command="insert"
        )
        == 137
    )
    # count_documents is an aggregate: no insert label set may have picked it up.
    assert view.sample_sum("meshproxy_mongo_command_total", prefix=PREFIX, command="aggregate") == 1
    assert view.stats[f"mongo.{PREFIX}.decoding_error"] == 0


def test_the_driver_stays_on_the_sidecar_although_the_server_advertises_itself(
    client: Client, sidecar: ProxyThread, secantus: tuple[str, int]
) -> None:
    proxy_address = sidecar.listener_address(PREFIX)
    client.topo.things.insert_one({"_id": 0})

    assert client.address == proxy_address
    servers = set(client.topology_description.server_descriptions())
    assert servers == {proxy_address}
    assert secantus not in servers
    assert client.primary == proxy_address
    assert sidecar.stats.values()[f"mongo.{PREFIX}.topology_rewrite"] >= 1


def test_every_operation_moves_the_sidecars_counters(client: Client, sidecar: ProxyThread) -> None:
    things = client.topo.counted
    things.drop()

    def totals() -> dict[str, float]:
        values = sidecar.stats.values()
        return {cmd: values.get(f"mongo.{PREFIX}.cmd.{cmd}.total", 0) for cmd in ("insert", "find", "update", "delete")}

    for i in range(5):
        before = totals()
        things.insert_one({"_id": i})
        assert totals() == {**before, "insert": before["insert"] + 1}

        before = totals()
        assert things.find_one({"_id": i}) == {"_id": i}
        assert totals() == {**before, "find": before["find"] + 1}

        before = totals()
        things.update_one({"_id": i}, {"$set": {"seen": True}})
        assert totals() == {**before, "update": before["update"] + 1}

        before = totals()
        things.delete_one({"_id": i})
        assert totals() == {**before, "delete": before["delete"] + 1}
        assert client.address == sidecar.listener_address(PREFIX)
