"""Build a listener's Mongo filter chain from its configuration, in the configured order."""

from __future__ import annotations

import random as _random
from typing import TYPE_CHECKING

from meshproxy.config import (
    AccessLogFilterConfig,
    FaultFilterConfig,
    MongoFilterConfig,
    StatsFilterConfig,
    TopologyRewriteFilterConfig,
)
from meshproxy.filters.mongo.access_log import MongoAccessLogFilter
from meshproxy.filters.mongo.api import MongoFilter
from meshproxy.filters.mongo.fault import MongoFaultFilter
from meshproxy.filters.mongo.stats import MongoStatsFilter
from meshproxy.filters.mongo.topology import TopologyRewriteFilter

if TYPE_CHECKING:
    from meshproxy.stats import StatsStore


def build_mongo_filter(
    config: MongoFilterConfig,
    *,
    stats: StatsStore,
    prefix: str,
    listener_address: tuple[str, int],
    random: _random.Random | None = None,
) -> MongoFilter:
    """One filter for one config model."""
    if isinstance(config, StatsFilterConfig):
        return MongoStatsFilter(
            stats, prefix, per_collection=config.per_collection, callsite_field=config.callsite_field
        )
    if isinstance(config, FaultFilterConfig):
        return MongoFaultFilter(config, stats, prefix, random=random)
    if isinstance(config, AccessLogFilterConfig):
        return MongoAccessLogFilter(config.path)
    if isinstance(config, TopologyRewriteFilterConfig):
        return TopologyRewriteFilter(
            stats, prefix, mode=config.mode, advertise=config.advertise or listener_address
        )
    raise TypeError(f"not a Mongo filter configuration: {config!r}")


def build_mongo_filters(
    configs: list[MongoFilterConfig],
    *,
    stats: StatsStore,
    prefix: str,
    listener_address: tuple[str, int],
    random: _random.Random | None = None,
) -> list[MongoFilter]:
    """The chain for one listener: ``on_request`` runs in this order, ``on_response`` in reverse.

    ``listener_address`` is what the topology rewrite advertises when its config names no ``advertise``
    address; ``random`` makes fault injection deterministic in tests.
    """
    built: list[MongoFilter] = []
    try:
        for config in configs:
            built.append(
                build_mongo_filter(
                    config, stats=stats, prefix=prefix, listener_address=listener_address, random=random
                )
            )
    except BaseException:
        for f in built:  # e.g. an access log file opened before a later filter failed
            f.close()
        raise
    return built
