"""The filters in a running proxy, between real pymongo and a real SecantusDB."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pymongo
import pymongo.errors
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.wait import wait_for

from meshproxy.config import mongo_sidecar_config
from meshproxy.proxy import ProxyThread

pytestmark = pytest.mark.integration


def test_a_pymongo_workload_is_counted_exactly_and_stays_on_the_proxy(
    secantus: tuple[str, int], tmp_path: Path
) -> None:
    log_path = tmp_path / "access.log"
    config = mongo_sidecar_config(
        listen=("127.0.0.1", 0),
        upstream=secantus,
        admin=None,
        stat_prefix="app",
        filters=[
            {"type": "stats"},
            {"type": "access_log", "path": str(log_path)},
            {"type": "topology_rewrite"},
        ],
    )
    with ProxyThread(config) as proxy:
        host, port = proxy.listener_address("app")
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            f"mongodb://{host}:{port}", serverSelectionTimeoutMS=5000
        )
        try:
            people = client.workload.people
            for i in range(137):
                people.insert_one({"_id": i, "n": i})
            assert len(list(people.find({}, batch_size=10).comment("listing"))) == 137
            # Discovery ran on the rewritten hello: pymongo still talks to the proxy, not to SecantusDB.
            assert client.address == (host, port)
        finally:
            client.close()
        v = proxy.stats.values()
        assert v["mongo.app.cmd.insert.total"] == 137
        assert v["mongo.app.db.workload.collection.people.cmd.insert.total"] == 137
        assert v["mongo.app.op_insert"] == 137
        assert v["mongo.app.cmd.find.total"] == 1
        assert v["mongo.app.cmd.getMore.total"] == 13
        assert v["mongo.app.collection.people.callsite.listing.query.total"] == 1
        assert v["mongo.app.cursor.opened"] == 1
        assert v["mongo.app.cursor.exhausted"] == 1
        assert v["mongo.app.topology_rewrite"] >= 1
        wait_for(lambda: proxy.stats.values()["mongo.app.op_active"] == 0)
        samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(proxy.stats.prometheus().decode())
            for sample in family.samples
        }
        insert_labels = frozenset(
            {"prefix": "app", "db": "workload", "collection": "people", "command": "insert"}.items()
        )
        assert samples[("meshproxy_mongo_command_total", insert_labels)] == 137
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    inserts = [line for line in lines if line["command"] == "insert"]
    assert len(inserts) == 137
    assert all(line["ok"] for line in inserts)


def test_faults_reach_pymongo_as_delays_and_server_errors(secantus: tuple[str, int]) -> None:
    config = mongo_sidecar_config(
        listen=("127.0.0.1", 0),
        upstream=secantus,
        admin=None,
        stat_prefix="chaos",
        filters=[
            {"type": "stats"},
            {
                "type": "fault",
                "abort": {"code": 2, "code_name": "BadValue", "message": "drill"},
                "match": {"collection": ["fragile"]},
            },
            {"type": "fault", "delay": {"duration": "200ms"}, "match": {"collection": ["slow"]}},
            {"type": "topology_rewrite"},
        ],
    )
    with ProxyThread(config) as proxy:
        host, port = proxy.listener_address("chaos")
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            f"mongodb://{host}:{port}", serverSelectionTimeoutMS=5000, retryWrites=False
        )
        try:
            with pytest.raises(pymongo.errors.OperationFailure) as failure:
                client.chaos.fragile.insert_one({"_id": 1})
            assert failure.value.code == 2
            assert "drill" in str(failure.value)
            started = time.monotonic()
            assert client.chaos.slow.find_one({}) is None
            assert time.monotonic() - started >= 0.2
            client.chaos.fine.insert_one({"_id": 1})  # other collections are untouched
        finally:
            client.close()
        v = proxy.stats.values()
        assert v["mongo.chaos.abort_injected"] == 1
        assert v["mongo.chaos.delay_injected"] == 1
        assert v["mongo.chaos.cmd.insert.error.BadValue"] == 1
        assert v["mongo.chaos.db.chaos.collection.fine.cmd.insert.errors"] == 0
