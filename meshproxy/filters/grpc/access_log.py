"""One JSON line per gRPC call, written when the call ends.

Fields: ``time``, ``connection``, ``listener``, ``client``, ``upstream``, ``service``, ``method``,
``grpc_status``, ``grpc_message``, ``http_status``, ``request_messages``, ``response_messages``,
``request_bytes``, ``response_bytes``, ``duration_ms``, ``timeout_ms`` (the client's ``grpc-timeout``),
``end_reason`` (``trailers``, ``local``, ``deadline``, ``client_reset``, ``upstream_reset``,
``upstream_unavailable``, ``connection_closed``) and ``local``.
"""

from __future__ import annotations

from typing import Any

from meshproxy.filters._shared import STDOUT, JsonLineSink, now_rfc3339
from meshproxy.filters.grpc.api import GrpcCall, GrpcFilter


class GrpcAccessLogFilter(GrpcFilter):
    def __init__(self, path: str = STDOUT) -> None:
        self.path = path
        self._sink = JsonLineSink(path)

    def on_call_end(self, call: GrpcCall) -> None:
        self._sink.write(self.record(call))

    @staticmethod
    def record(call: GrpcCall) -> dict[str, Any]:
        connection = call.connection
        return {
            "time": now_rfc3339(),
            "connection": connection.id,
            "listener": connection.listener,
            "client": connection.client,
            "upstream": call.upstream,
            "service": call.service,
            "method": call.method,
            "grpc_status": call.grpc_status,
            "grpc_message": call.grpc_message,
            "http_status": call.http_status,
            "request_messages": call.request_messages,
            "response_messages": call.response_messages,
            "request_bytes": call.request_bytes,
            "response_bytes": call.response_bytes,
            "duration_ms": round(call.duration_ms, 3),
            "timeout_ms": None if call.timeout is None else round(call.timeout * 1000, 3),
            "end_reason": call.end_reason,
            "local": call.local,
        }

    def close(self) -> None:
        self._sink.close()
