"""Build a gRPC listener's filter chain from its configuration, in the configured order."""

from __future__ import annotations

import random as _random
from typing import TYPE_CHECKING

from meshproxy.config import AccessLogFilterConfig, GrpcFaultFilterConfig, GrpcFilterConfig, GrpcStatsFilterConfig
from meshproxy.filters.grpc.access_log import GrpcAccessLogFilter
from meshproxy.filters.grpc.api import GrpcFilter
from meshproxy.filters.grpc.fault import GrpcFaultFilter
from meshproxy.filters.grpc.stats import GrpcStatsFilter

if TYPE_CHECKING:
    from meshproxy.stats import StatsStore


def build_grpc_filters(
    configs: list[GrpcFilterConfig],
    *,
    stats: StatsStore,
    prefix: str,
    cluster: str,
    random: _random.Random | None = None,
) -> list[GrpcFilter]:
    """The chain for one listener: ``on_call_start`` runs in this order, ``on_call_end`` in reverse."""
    built: list[GrpcFilter] = []
    try:
        for config in configs:
            if isinstance(config, GrpcStatsFilterConfig):
                built.append(GrpcStatsFilter(stats, cluster, prefix, max_methods=config.max_methods))
            elif isinstance(config, GrpcFaultFilterConfig):
                built.append(GrpcFaultFilter(config, stats, prefix, random=random))
            elif isinstance(config, AccessLogFilterConfig):
                built.append(GrpcAccessLogFilter(config.path))
            else:
                raise TypeError(f"not a gRPC filter configuration: {config!r}")
    except BaseException:
        for f in built:
            f.close()
        raise
    return built
