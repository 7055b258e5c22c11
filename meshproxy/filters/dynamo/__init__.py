"""DynamoDB filters: stats, fault injection, access log (issue 3; the session that runs them is not built yet)."""

from __future__ import annotations

from meshproxy.filters.dynamo.access_log import DynamoAccessLogFilter
from meshproxy.filters.dynamo.api import DynamoFilter, DynamoOperation, LocalResponse
from meshproxy.filters.dynamo.fault import DynamoFaultFilter
from meshproxy.filters.dynamo.stats import DynamoStatsFilter

__all__ = [
    "DynamoAccessLogFilter",
    "DynamoFaultFilter",
    "DynamoFilter",
    "DynamoOperation",
    "DynamoStatsFilter",
    "LocalResponse",
]
