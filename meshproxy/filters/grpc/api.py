"""What a gRPC filter sees and what it may answer.

The gRPC session (``meshproxy.transport.grpc_session``) turns each HTTP/2 request stream into a ``GrpcCall``
and calls ``on_call_start`` of every filter, in chain order, once the request headers are in. A filter may
observe (``None``), hold the call before it goes upstream (``Delay``), or answer it locally with a gRPC
status (``GrpcAbort``: the client gets a trailers-only response and the server never sees the call).
Messages then stream both ways without passing through filters one by one (the session counts them, so a
streaming call costs no Python per message beyond framing); ``on_call_end`` runs in reverse order once the
call is over, however it ended: trailers, a reset from either side, a deadline, or a local answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshproxy.filters.mongo.api import ConnectionInfo, Delay

__all__ = ["CallAction", "ConnectionInfo", "Delay", "GrpcAbort", "GrpcCall", "GrpcFilter"]


@dataclass(slots=True, frozen=True)
class GrpcAbort:
    """Answer the call with this status (a trailers-only response) instead of sending it upstream."""

    status: int
    message: str = ""


CallAction = Delay | GrpcAbort


@dataclass(slots=True)
class GrpcCall:
    """One gRPC call (one HTTP/2 stream) through the proxy: what was asked, how it ended, what it carried."""

    connection: ConnectionInfo
    stream_id: int
    """The client's stream id on its connection."""
    path: str
    """``/package.Service/Method`` as sent (``:path``)."""
    service: str | None
    """``package.Service``; None when ``:path`` is not a gRPC path."""
    method: str | None
    request_headers: list[tuple[bytes, bytes]]
    started_ns: int
    timeout: float | None = None
    """The client's ``grpc-timeout`` in seconds, when it sent one."""
    is_grpc: bool = True
    """The request's content-type is ``application/grpc`` (or a ``+proto``/``+json`` variant)."""
    http_status: int | None = None
    """The ``:status`` of the response headers (None: none came)."""
    response_headers: list[tuple[bytes, bytes]] | None = None
    trailers: list[tuple[bytes, bytes]] | None = None
    grpc_status: int | None = None
    """From the trailers (or trailers-only headers); set by the proxy for calls it ended itself."""
    grpc_message: str | None = None
    request_messages: int = 0
    response_messages: int = 0
    request_bytes: int = 0
    """DATA payload bytes, client to server."""
    response_bytes: int = 0
    finished_ns: int = 0
    end_reason: str = ""
    """How the call ended: ``trailers``, ``local`` (a filter answered), ``deadline``, ``client_reset``,
    ``upstream_reset``, ``upstream_unavailable``, ``connection_closed``."""
    local: bool = False
    """The status came from the proxy (a filter's abort, a deadline, an unreachable upstream)."""
    upstream: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    """Free space for filters to pass values between ``on_call_start`` and ``on_call_end``."""

    @property
    def duration_ms(self) -> float:
        return (self.finished_ns - self.started_ns) / 1e6 if self.finished_ns else 0.0

    @property
    def ok(self) -> bool:
        return self.grpc_status == 0


class GrpcFilter:
    """Base class: every hook defaults to observing nothing. Override what you need."""

    def on_connection_open(self, connection: ConnectionInfo) -> None:
        """A client connected."""

    def on_call_start(self, call: GrpcCall) -> CallAction | None:
        """The request headers arrived. Return ``None`` to let the call go upstream."""
        return None

    def on_call_end(self, call: GrpcCall) -> None:
        """The call is over (``call.end_reason`` says how)."""

    def on_connection_close(self, connection: ConnectionInfo, *, active_calls: int, local: bool) -> None:
        """The connection ended; ``local`` when the proxy closed it."""

    def close(self) -> None:
        """The listener is shutting down: flush and release resources."""
