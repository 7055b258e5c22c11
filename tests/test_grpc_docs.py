"""docs/grpc.md documents every stat the gRPC path can produce: the per-method filter's, the HTTP/2
defences', the retry and pool stats."""

from __future__ import annotations

import re
from pathlib import Path

from meshproxy.config import grpc_sidecar_config
from meshproxy.filters.grpc.api import ConnectionInfo, GrpcCall
from meshproxy.filters.grpc.fault import GrpcFaultFilter
from meshproxy.filters.grpc.stats import GrpcStatsFilter
from meshproxy.proxy import Proxy
from meshproxy.stats import StatsStore

DOC = (Path(__file__).resolve().parent.parent / "docs" / "grpc.md").read_text()


def families(store: StatsStore) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", store.prometheus().decode(), flags=re.MULTILINE))


def test_every_prometheus_family_of_the_grpc_path_is_documented() -> None:
    store = StatsStore()
    config = grpc_sidecar_config(listen=("127.0.0.1", 0), upstream=("127.0.0.1", 1), admin=None, stat_prefix="d")
    Proxy(config, stats=store)  # registers the listener's HTTP/2 and retry stats
    stats_filter = GrpcStatsFilter(store, "upstream", "d")
    fault_config = grpc_sidecar_config(
        listen=("127.0.0.1", 0), upstream=("127.0.0.1", 1), filters=[{"type": "fault", "abort": {}}]
    ).listeners[0].filters[0]
    GrpcFaultFilter(fault_config, store, "d")  # type: ignore[arg-type]
    call = GrpcCall(ConnectionInfo(1, "c", "d", ("127.0.0.1", 1)), 1, "/s.S/M", "s.S", "M", [], 0, grpc_status=14)
    stats_filter.on_call_start(call)
    call.finished_ns = 1
    stats_filter.on_call_end(call)
    names = {f.removesuffix("_total") for f in families(store) if "grpc" in f or "http2" in f or "retry" in f}
    assert names, "nothing registered"
    missing = sorted(name for name in names if name not in DOC)
    assert not missing
