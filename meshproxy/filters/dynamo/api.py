"""What a DynamoDB filter sees and what it may answer.

The DynamoDB session (to be built in ``meshproxy.transport``) frames each HTTP/1.1 request with
``meshproxy.codecs.http1``, reads it with ``meshproxy.codecs.dynamo.parse_request`` and wraps it in a
``DynamoOperation``; filters get ``on_request`` in chain order. When the response arrives the session fills
in ``response`` (``parse_response``) and calls ``on_response`` in reverse order. As for Mongo, filters never
see sockets or clocks: the session stamps ``started_ns`` / ``finished_ns``.

A filter may observe (return ``None``), delay the request (``Delay``), or answer locally
(``LocalResponse``: a status, headers and body, e.g. an injected ``ThrottlingException`` built with
``meshproxy.codecs.dynamo.error_response``). A local response still flows back through ``on_response`` of
the filters before the one that answered, with ``op.local_response`` set, so stats count injected faults.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshproxy.codecs.dynamo import DynamoRequest, DynamoResponse
from meshproxy.filters.mongo.api import ConnectionInfo, Delay

__all__ = ["ConnectionInfo", "Delay", "DynamoFilter", "DynamoOperation", "LocalResponse", "RequestAction"]


@dataclass(slots=True, frozen=True)
class LocalResponse:
    """Answer the client with this HTTP response and never send the request upstream."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


RequestAction = Delay | LocalResponse


@dataclass(slots=True)
class DynamoOperation:
    """One DynamoDB request and its response."""

    connection: ConnectionInfo
    request: DynamoRequest
    started_ns: int
    request_size: int
    """Bytes of the whole HTTP request as received (head + body)."""
    response: DynamoResponse | None = None
    response_size: int = 0
    finished_ns: int = 0
    local_response: bool = False

    @property
    def operation(self) -> str | None:
        """``PutItem``, ``TransactWriteItems``, ...; None when the request had no usable ``X-Amz-Target``."""
        return self.request.operation

    @property
    def tables(self) -> tuple[str, ...]:
        return self.request.tables

    @property
    def duration_ms(self) -> float:
        return (self.finished_ns - self.started_ns) / 1e6 if self.finished_ns else 0.0


class DynamoFilter:
    """Base class: every hook defaults to observing nothing. Override what you need."""

    def on_connection_open(self, connection: ConnectionInfo) -> None:
        """A client connected."""

    def on_request(self, op: DynamoOperation) -> RequestAction | None:
        """A request was framed and parsed. Return ``None`` to let it continue unchanged."""
        return None

    def on_response(self, op: DynamoOperation) -> None:
        """The response to ``op`` was framed and parsed (``op.response``)."""

    def on_connection_close(self, connection: ConnectionInfo, *, active_operations: int, local: bool) -> None:
        """The connection ended; ``local`` when the proxy closed it."""

    def close(self) -> None:
        """The listener is shutting down: flush and release resources."""
