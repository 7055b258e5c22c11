"""The MongoDB filter chain: stats, fault injection, access log, topology rewrite."""

from __future__ import annotations

from meshproxy.filters.mongo.access_log import MongoAccessLogFilter
from meshproxy.filters.mongo.api import (
    ConnectionInfo,
    Delay,
    LocalReply,
    MongoFilter,
    MongoOperation,
    RequestAction,
)
from meshproxy.filters.mongo.factory import build_mongo_filter, build_mongo_filters
from meshproxy.filters.mongo.fault import MongoFaultFilter
from meshproxy.filters.mongo.stats import MongoStatsFilter
from meshproxy.filters.mongo.topology import TopologyRewriteFilter, rewrite_hello

__all__ = [
    "ConnectionInfo",
    "Delay",
    "LocalReply",
    "MongoAccessLogFilter",
    "MongoFaultFilter",
    "MongoFilter",
    "MongoOperation",
    "MongoStatsFilter",
    "RequestAction",
    "TopologyRewriteFilter",
    "build_mongo_filter",
    "build_mongo_filters",
    "rewrite_hello",
]
