"""One JSON line per completed DynamoDB request, to a file or stdout / stderr.

A line is written when the response has been seen (``on_response``); JSON lines are what log shippers
ingest without a parser of their own.

Fields (always present, ``null`` when not applicable)::

    time            RFC 3339 UTC time the request completed, millisecond precision
    connection      the proxy's connection id
    listener        listener name
    client          downstream peer, ip:port
    upstream        upstream host, ip:port (null before the upstream connection exists)
    operation       GetItem, TransactWriteItems, ... (null: missing or unknown X-Amz-Target)
    tables          every table the request names (a list; empty when none)
    status          HTTP status of the response
    error_type      the error's __type after its '#', else null
    request_bytes, response_bytes   wire sizes (head + body)
    duration_ms     request parsed -> response parsed
    consumed_capacity   {table: capacity units} summed over the response's ConsumedCapacity, else {}
    unprocessed     unprocessed items + keys of a batch response
    local_response  true when the proxy answered itself (fault injection)
"""

from __future__ import annotations

from typing import Any

from meshproxy.filters._shared import STDOUT, JsonLineSink, now_rfc3339
from meshproxy.filters.dynamo.api import DynamoFilter, DynamoOperation


class DynamoAccessLogFilter(DynamoFilter):
    """Writes the access log; ``path`` is a file (appended to, line-buffered), ``stdout`` or ``stderr``."""

    def __init__(self, path: str = STDOUT) -> None:
        self.path = path
        self._sink = JsonLineSink(path)

    def on_response(self, op: DynamoOperation) -> None:
        self._sink.write(self.record(op))

    def record(self, op: DynamoOperation) -> dict[str, Any]:
        """The fields of ``op``'s log line (see the module docstring)."""
        connection = op.connection
        response = op.response
        capacity: dict[str, float] = {}
        if response is not None:
            for entry in response.consumed_capacity:
                units = entry.capacity_units
                if units is None:
                    units = (entry.read_capacity_units or 0.0) + (entry.write_capacity_units or 0.0)
                capacity[entry.table] = capacity.get(entry.table, 0.0) + units
        return {
            "time": now_rfc3339(),
            "connection": connection.id,
            "listener": connection.listener,
            "client": connection.client,
            "upstream": connection.upstream,
            "operation": op.operation,
            "tables": list(op.tables),
            "status": response.status if response is not None else None,
            "error_type": response.error_type if response is not None else None,
            "request_bytes": op.request_size,
            "response_bytes": op.response_size,
            "duration_ms": round(op.duration_ms, 3),
            "consumed_capacity": capacity,
            "unprocessed": response.unprocessed_total if response is not None else 0,
            "local_response": op.local_response,
        }

    def close(self) -> None:
        self._sink.close()
