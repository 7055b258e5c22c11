"""Helpers shared by the integration tests: sidecar configuration, clients, the admin endpoint's views."""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from meshproxy.config import MeshConfig, mongo_sidecar_config
from meshproxy.proxy import ProxyThread

PREFIX = "it"
"""Stat prefix, and so listener name, of every sidecar in this suite."""

SERVER_SELECTION_MS = 3000


def sidecar_config(upstream: tuple[str, int], **options: Any) -> MeshConfig:
    """The sidecar as ``meshproxy sidecar mongo`` would run it, on free ports, with stat prefix ``it``."""
    return mongo_sidecar_config(
        listen=("127.0.0.1", 0), upstream=upstream, admin=("127.0.0.1", 0), stat_prefix=PREFIX, **options
    )


def client_for(address: tuple[str, int], **options: Any) -> MongoClient[dict[str, Any]]:
    """A pymongo client with a plain URI: no directConnection, so discovery runs as it would in production."""
    host, port = address
    options.setdefault("serverSelectionTimeoutMS", SERVER_SELECTION_MS)
    options.setdefault("connectTimeoutMS", 3000)
    return MongoClient(f"mongodb://{host}:{port}/", **options)


# -- the admin endpoint ------------------------------------------------------------------------------------


def http_get(address: tuple[str, int], path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*address, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass(slots=True)
class AdminView:
    """What the admin endpoint says at one moment: ``/stats`` as a dict and ``/stats/prometheus`` parsed."""

    stats: dict[str, float]
    prometheus: list[Any]
    """prometheus_client metric families."""

    def samples(self, name: str) -> list[Any]:
        """Every sample whose name is ``name`` (e.g. ``meshproxy_mongo_command_total``)."""
        return [s for family in self.prometheus for s in family.samples if s.name == name]

    def sample_sum(self, name: str, **labels: str) -> float:
        """The sum of ``name`` over every label set that contains ``labels``."""
        return sum(
            float(s.value)
            for s in self.samples(name)
            if all(s.labels.get(key) == value for key, value in labels.items())
        )


def parse_stats_text(text: str) -> dict[str, float]:
    """Envoy's ``/stats`` text format: one ``name: value`` per line (histograms are skipped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if not sep:
            continue
        try:
            values[name.strip()] = float(value)
        except ValueError:
            continue
    return values


def admin_view(proxy: ProxyThread) -> AdminView:
    address = proxy.admin_address
    assert address is not None, "the sidecar runs without an admin endpoint"
    status, stats_body = http_get(address, "/stats")
    assert status == 200
    status, prom_body = http_get(address, "/stats/prometheus")
    assert status == 200
    families = list(text_string_to_metric_families(prom_body.decode()))
    return AdminView(parse_stats_text(stats_body.decode()), families)
