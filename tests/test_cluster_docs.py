"""docs/clusters.md stays complete: every cluster knob and every stat the cluster machinery keeps is on it.

Both lists are read from the code when the test runs (the config models' fields; the stats a running proxy
has registered), so a field or stat added later fails here until it is documented.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from pydantic import BaseModel

from meshproxy.cluster.outlier import EjectionType
from meshproxy.config import (
    CircuitBreakersConfig,
    ClusterConfig,
    ClusterHealthCheckConfig,
    DnsDiscoveryConfig,
    DynamoListenerConfig,
    GrpcListenerConfig,
    GrpcRetryConfig,
    HostsFileConfig,
    ListenerConfig,
    OutlierDetectionConfig,
    config_from_dict,
)
from meshproxy.proxy import Proxy

DOC = Path(__file__).resolve().parent.parent / "docs" / "clusters.md"

WHOLE_MODELS: list[type[BaseModel]] = [
    ClusterConfig,
    ClusterHealthCheckConfig,
    OutlierDetectionConfig,
    CircuitBreakersConfig,
    GrpcRetryConfig,
    DnsDiscoveryConfig,
    HostsFileConfig,
]
BALANCING_FIELDS: list[tuple[type[BaseModel], str]] = [
    (ListenerConfig, "balance"),
    (ListenerConfig, "hash_key"),
    (DynamoListenerConfig, "partition_keys"),
    (GrpcListenerConfig, "hash_key_header"),
    (GrpcListenerConfig, "retry"),
]


def documented_names() -> set[str]:
    """Every name written in backticks on the page: whole spans (``health_check.attempt``) and the names in
    them (``{name, port, refresh_interval: 5s}`` documents ``name``, ``port`` and ``refresh_interval``)."""
    spans = re.findall(r"`([^`\n]+)`", DOC.read_text(encoding="utf-8"))
    return set(spans) | {word for span in spans for word in re.findall(r"[A-Za-z_][\w.<>]*", span)}


def field_cases() -> list[tuple[str, str]]:
    cases = [(model.__name__, name) for model in WHOLE_MODELS for name in model.model_fields]
    for model, name in BALANCING_FIELDS:
        assert name in model.model_fields, f"{model.__name__}.{name} is gone: update BALANCING_FIELDS"
        cases.append((model.__name__, name))
    return cases


@pytest.mark.parametrize(("model", "field"), field_cases())
def test_every_cluster_knob_is_documented(model: str, field: str) -> None:
    assert field in documented_names(), f"docs/clusters.md does not mention `{field}` ({model})"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stat_name(full: str, cluster: str) -> str | None:
    """``cluster.c.host.127.0.0.1:1.rq_total`` -> ``rq_total``; ``cluster.c.outlier_detection.ejections_detected_
    success_rate`` -> ``outlier_detection.ejections_detected_<type>``; stats of other scopes -> None."""
    prefix = f"cluster.{cluster}."
    if not full.startswith(prefix):
        return None
    stat = full.removeprefix(prefix)
    if stat.startswith("host."):
        return stat.rpartition(".")[2]
    for kind in EjectionType:
        if stat.endswith("_" + kind.value):
            return stat.removesuffix(kind.value) + "<type>"
    return stat


async def test_every_stat_a_running_cluster_registers_is_in_the_stats_reference() -> None:
    # One cluster behind a listener of each protocol, with health checking and outlier detection on: every
    # piece of cluster machinery registers its stats at startup. The host is a closed port: nothing is sent.
    config = config_from_dict(
        {
            "admin": None,
            "listeners": [
                {"name": "m", "address": "127.0.0.1:0", "cluster": "c"},
                {"name": "d", "address": "127.0.0.1:0", "cluster": "c", "protocol": "dynamo"},
                {"name": "g", "address": "127.0.0.1:0", "cluster": "c", "protocol": "grpc", "retry": {}},
            ],
            "clusters": [
                {
                    "name": "c",
                    "hosts": [f"127.0.0.1:{_closed_port()}"],
                    "health_check": {"type": "tcp"},
                    "outlier_detection": {},
                }
            ],
        }
    )
    async with Proxy(config) as proxy:
        registered = {name for full in proxy.stats.values() if (name := _stat_name(full, "c")) is not None}
    assert {"upstream_rq_total", "rq_active", "health_check.healthy"} <= registered  # the scan works
    missing = sorted(registered - documented_names())
    assert not missing, f"stats missing from docs/clusters.md's Stats reference: {missing}"
