"""The chain a listener's YAML configuration builds."""

from __future__ import annotations

import random
from pathlib import Path

import yaml

from meshproxy.config import config_from_dict
from meshproxy.filters.mongo.access_log import MongoAccessLogFilter
from meshproxy.filters.mongo.factory import build_mongo_filters
from meshproxy.filters.mongo.fault import MongoFaultFilter
from meshproxy.filters.mongo.stats import MongoStatsFilter
from meshproxy.filters.mongo.topology import TopologyRewriteFilter
from meshproxy.stats import StatsStore

CONFIG = """
listeners:
  - name: orders
    address: 127.0.0.1:27100
    cluster: mongo
    stat_prefix: orders_db
    filters:
      - type: stats
        callsite_field: comment
      - type: fault
        delay: {duration: 50ms, percentage: 10}
        match: {collection: [orders]}
      - type: access_log
        path: {log}
      - type: topology_rewrite
        mode: standalone
clusters:
  - name: mongo
    hosts: ["127.0.0.1:27017"]
"""


def test_each_filter_config_builds_its_filter_in_chain_order(tmp_path: Path) -> None:
    config = config_from_dict(yaml.safe_load(CONFIG.replace("{log}", str(tmp_path / "access.log"))))
    listener = config.listeners[0]
    chain = build_mongo_filters(
        list(listener.filters), stats=StatsStore(), prefix=listener.prefix, listener_address=("127.0.0.1", 27100)
    )
    assert [type(f) for f in chain] == [MongoStatsFilter, MongoFaultFilter, MongoAccessLogFilter, TopologyRewriteFilter]
    stats_filter, fault, _, topology = chain
    assert isinstance(stats_filter, MongoStatsFilter)
    assert stats_filter.callsite_field == "comment"
    assert stats_filter.prefix == "orders_db"
    assert isinstance(fault, MongoFaultFilter)
    assert fault.config.delay is not None
    assert fault.config.delay.duration == 0.05
    assert isinstance(topology, TopologyRewriteFilter)
    assert (topology.mode, topology.advertise) == ("standalone", "127.0.0.1:27100")
    for f in chain:
        f.close()
    assert (tmp_path / "access.log").exists()


def test_the_default_chain_is_stats_then_topology_rewrite_at_the_listener_address() -> None:
    config = config_from_dict(
        {
            "listeners": [{"name": "m", "address": "0.0.0.0:0", "cluster": "c"}],
            "clusters": [{"name": "c", "hosts": ["127.0.0.1:1"]}],
        }
    )
    chain = build_mongo_filters(
        list(config.listeners[0].filters), stats=StatsStore(), prefix="m", listener_address=("0.0.0.0", 27017)
    )
    assert [type(f) for f in chain] == [MongoStatsFilter, TopologyRewriteFilter]
    topology = chain[1]
    assert isinstance(topology, TopologyRewriteFilter)
    assert topology.advertise == "127.0.0.1:27017"  # a wildcard bind is not an address a driver can dial


def test_an_explicit_advertise_address_wins_and_randomness_is_injectable() -> None:
    config = config_from_dict(
        {
            "listeners": [
                {
                    "name": "m",
                    "address": "127.0.0.1:0",
                    "cluster": "c",
                    "filters": [
                        {"type": "topology_rewrite", "advertise": "mongo-proxy.internal:27017"},
                        {"type": "fault", "abort": {"percentage": 50}},
                    ],
                }
            ],
            "clusters": [{"name": "c", "hosts": ["127.0.0.1:1"]}],
        }
    )
    seeded = random.Random(3)
    topology, fault = build_mongo_filters(
        list(config.listeners[0].filters), stats=StatsStore(), prefix="m", listener_address=("127.0.0.1", 1),
        random=seeded,
    )
    assert isinstance(topology, TopologyRewriteFilter)
    assert topology.advertise == "mongo-proxy.internal:27017"
    assert isinstance(fault, MongoFaultFilter)
    assert fault.random is seeded
