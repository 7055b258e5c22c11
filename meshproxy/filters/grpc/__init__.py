"""gRPC filters: per-method stats, fault injection, access log."""

from __future__ import annotations

from meshproxy.filters.grpc.access_log import GrpcAccessLogFilter
from meshproxy.filters.grpc.api import GrpcAbort, GrpcCall, GrpcFilter
from meshproxy.filters.grpc.fault import GrpcFaultFilter
from meshproxy.filters.grpc.stats import GrpcStatsFilter

__all__ = ["GrpcAbort", "GrpcAccessLogFilter", "GrpcCall", "GrpcFaultFilter", "GrpcFilter", "GrpcStatsFilter"]
