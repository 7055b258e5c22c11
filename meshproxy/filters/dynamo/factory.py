"""Build a DynamoDB listener's filter chain from its configuration, in the configured order."""

from __future__ import annotations

import random as _random
from typing import TYPE_CHECKING

from meshproxy.config import AccessLogFilterConfig, DynamoFaultFilterConfig, DynamoFilterConfig, DynamoStatsFilterConfig
from meshproxy.filters.dynamo.access_log import DynamoAccessLogFilter
from meshproxy.filters.dynamo.api import DynamoFilter
from meshproxy.filters.dynamo.fault import DynamoAbort, DynamoDelay, DynamoFaultConfig, DynamoFaultFilter, DynamoMatch
from meshproxy.filters.dynamo.stats import DynamoStatsFilter

if TYPE_CHECKING:
    from meshproxy.stats import StatsStore


def fault_config(config: DynamoFaultFilterConfig) -> DynamoFaultConfig:
    """The filter's own (library) configuration for a YAML ``fault`` entry."""
    match = config.match
    return DynamoFaultConfig(
        match=DynamoMatch(
            operations=None if match.operations is None else frozenset(match.operations),
            tables=None if match.tables is None else frozenset(match.tables),
        ),
        delay=None if config.delay is None else DynamoDelay(config.delay.duration, config.delay.percentage),
        abort=(
            None
            if config.abort is None
            else DynamoAbort(config.abort.error_type, config.abort.message, config.abort.percentage)
        ),
    )


def build_dynamo_filter(
    config: DynamoFilterConfig, *, stats: StatsStore, prefix: str, random: _random.Random | None = None
) -> DynamoFilter:
    """One filter for one config model."""
    if isinstance(config, DynamoStatsFilterConfig):
        return DynamoStatsFilter(stats, prefix, max_keys=config.max_keys, hot_keys=config.hot_keys)
    if isinstance(config, DynamoFaultFilterConfig):
        return DynamoFaultFilter(fault_config(config), stats, prefix, random=random)
    if isinstance(config, AccessLogFilterConfig):
        return DynamoAccessLogFilter(config.path)
    raise TypeError(f"not a DynamoDB filter configuration: {config!r}")


def build_dynamo_filters(
    configs: list[DynamoFilterConfig], *, stats: StatsStore, prefix: str, random: _random.Random | None = None
) -> list[DynamoFilter]:
    """The chain for one listener: ``on_request`` runs in this order, ``on_response`` in reverse."""
    built: list[DynamoFilter] = []
    try:
        for config in configs:
            built.append(build_dynamo_filter(config, stats=stats, prefix=prefix, random=random))
    except BaseException:
        for f in built:  # e.g. an access log file opened before a later filter failed
            f.close()
        raise
    return built
