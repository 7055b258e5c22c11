"""The gRPC proxy session: an HTTP/2 server connection to one client, its calls carried as streams of the
listener's shared upstream pool (``meshproxy.transport.h2_upstream``).

Each client stream becomes a ``GrpcCall``. Filters see it once the request headers are in
(``on_call_start``: observe, delay, or abort with a gRPC status) and once it is over (``on_call_end``).
Between the two, DATA streams both ways as it arrives: nothing waits for a whole message, let alone a whole
call, and the proxy only reads the 5-byte gRPC message prefixes to count messages (``MessageCounter``).

**Flow control is end to end.** The proxy acknowledges a client's DATA (re-opening the client's window)
only once it has been handed to the upstream stream, and an upstream's DATA only once it has been handed
to the client's stream. So a slow or stalled reader on either side stops its peer through HTTP/2 flow
control, and what the proxy holds for one stream is bounded by the window it advertised (1 MiB).

**Endings are mapped, never lost.** Trailers pass through. A server reset before any response becomes a
trailers-only ``UNAVAILABLE`` (``CANCELLED`` for a ``CANCEL``) so the client sees a gRPC status; after
response headers the reset is passed on. A client reset (cancel) resets the upstream stream. When the
client's ``grpc-timeout`` passes, the proxy answers ``DEADLINE_EXCEEDED`` and cancels the upstream stream.

**Abuse is bounded and counted** under ``http2.<prefix>.``: rapid reset, PING and SETTINGS floods (more
than the configured number per second: ``GOAWAY ENHANCE_YOUR_CALM``), streams beyond
``max_concurrent_streams`` (refused), oversized header lists and CONTINUATION floods (h2's own limits:
``GOAWAY``), a client that does not read (write buffer past its limit: the connection is closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from meshproxy.cluster.outlier import Outcome, outcome_from_grpc_status
from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.grpc import (
    GrpcMessageCounter,
    GrpcStatus,
    encode_grpc_message,
    is_grpc_content_type,
    parse_path,
    parse_timeout,
    status_from_trailers,
)
from meshproxy.codecs.http2 import FastData, FastWindows, FrameRouter, end_stream_frame, goaway_frame
from meshproxy.filters.grpc.api import Delay, GrpcAbort, GrpcCall, GrpcFilter
from meshproxy.transport.h2_upstream import H2UpstreamPool
from meshproxy.transport.relay import Relay

if TYPE_CHECKING:
    from meshproxy.cluster import Cluster, Host
    from meshproxy.config import GrpcListenerConfig
    from meshproxy.stats import Counter
    from meshproxy.transport.h2_upstream import H2UpstreamConnection, Headers
    from meshproxy.transport.listener import ListenerRuntime

log = logging.getLogger("meshproxy.grpc")

_now_ns = time.monotonic_ns

STREAM_WINDOW = 1 << 20
"""What a client may send ahead on one stream before the proxy has forwarded it (1 MiB)."""
CONNECTION_WINDOW = 16 << 20
"""... and on the whole connection (16 MiB)."""
DEADLINE_SLACK = 0.005
"""A client reset this close to its deadline (the proxy started its clock a little after the client) is the
client's own deadline passing, not a cancel."""
WRITE_BUFFER_LIMIT = 8 << 20
"""Bytes waiting in the socket for a client that does not read, past which the connection is closed."""

_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})

CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE = GrpcStatus.CANCELLED, GrpcStatus.DEADLINE_EXCEEDED, GrpcStatus.UNAVAILABLE


def _send_queued(
    h2c: h2.connection.H2Connection, stream_id: int, queue: deque[tuple[bytes, int]]
) -> tuple[int, int, int, str]:
    """Send from ``queue`` what ``stream_id``'s window allows, consecutive payloads coalesced into one DATA
    frame: the messages are a byte stream within the stream, and one h2 ``send_data`` costs as much as the
    rest of the proxy's work per message. Returns the bytes sent, the flow-controlled bytes to acknowledge
    through h2 and through the fast path, and ``done``, ``stalled`` (no window, data left) or ``closed``
    (the stream is gone; the queue is dropped)."""
    sent = acknowledged = acknowledged_fast = 0
    while queue:
        try:
            window = min(h2c.local_flow_control_window(stream_id), h2c.max_outbound_frame_size)
        except h2.exceptions.StreamClosedError:
            queue.clear()
            return sent, acknowledged, acknowledged_fast, "closed"
        batch: list[bytes] = []
        size = 0
        while queue:
            data, flow_len = queue[0]
            if size + len(data) > window:
                if not batch and window > 0:  # a payload larger than the window: send what fits
                    batch.append(data[:window])
                    queue[0] = (data[window:], flow_len)
                    size = window
                break
            batch.append(data)
            size += len(data)
            queue.popleft()
            if flow_len > 0:
                acknowledged += flow_len
            elif flow_len < 0:
                acknowledged_fast -= flow_len
        if not size:  # no window left (or only empty payloads were queued)
            return sent, acknowledged, acknowledged_fast, "stalled" if queue else "done"
        h2c.send_data(stream_id, batch[0] if len(batch) == 1 else b"".join(batch))
        sent += size
    return sent, acknowledged, acknowledged_fast, "done"


def _status_headers(status: int, message: str) -> Headers:
    headers: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"%d" % status)]
    if message:
        headers.append((b"grpc-message", encode_grpc_message(message)))
    return headers


class _ProxiedCall:
    """One client stream and its upstream stream: the ``UpstreamStream`` the pool reports to."""

    __slots__ = (
        "call",
        "client_ended",
        "client_window_waiting",
        "counted",
        "deadline_handle",
        "delay_handle",
        "done",
        "end_sent_upstream",
        "held_headers",
        "host",
        "key",
        "picked",
        "queued_upstream",
        "replay",
        "replay_bytes",
        "request_counter",
        "response_counter",
        "response_started",
        "retries",
        "retry_handle",
        "session",
        "stream_id",
        "to_client",
        "to_upstream",
        "trailers",
        "up_id",
        "upstream",
    )

    def __init__(self, session: GrpcSession, call: GrpcCall) -> None:
        self.session = session
        self.call = call
        self.stream_id = call.stream_id
        self.upstream: H2UpstreamConnection | None = None
        self.host: Host | None = None
        """The host of the current attempt's upstream stream once it is open, for outlier detection."""
        self.picked: Host | None = None
        """The host the balancer picked for the current attempt (a retry avoids it)."""
        self.key: bytes | None = None
        """What ring hash and maglev hash for this call (``hash_key_header``'s value, else ``:path``)."""
        self.counted = False
        """The call is in the cluster's ``upstream_rq_active`` (the circuit breaker's count)."""
        self.up_id = 0
        self.to_upstream: deque[tuple[bytes, int]] = deque()
        """Request DATA not yet handed upstream, with the flow-controlled length to acknowledge after (negative:
        fast-path bytes, acknowledged by the session's own WINDOW_UPDATE)."""
        self.queued_upstream = 0
        """Bytes in ``to_upstream``."""
        self.to_client: deque[tuple[bytes, int]] = deque()
        self.trailers: Headers | None = None
        """Trailers waiting behind response DATA the client's window does not take yet."""
        self.client_ended = False
        self.end_sent_upstream = False
        self.response_started = False
        self.client_window_waiting = False
        self.done = False
        self.request_counter = GrpcMessageCounter()
        self.response_counter = GrpcMessageCounter()
        self.deadline_handle: asyncio.TimerHandle | None = None
        self.delay_handle: asyncio.TimerHandle | None = None
        self.retries = 0
        self.retry_handle: asyncio.TimerHandle | None = None
        self.replay: list[bytes] | None = [] if session.retry is not None else None
        """Request DATA kept to send again on a retry; None once the call can no longer be retried (its
        request outgrew ``max_request_bytes``, or a response message reached the client)."""
        self.replay_bytes = 0
        self.held_headers: Headers | None = None
        """Response headers held back while the call may still be retried: once they reach the client, a
        status in the trailers can no longer be replaced by another attempt's."""

    # -- client -> upstream ---------------------------------------------------------------------------

    def client_data(self, data: bytes, flow_len: int, end: bool) -> None:
        call = self.call
        call.request_bytes += len(data)
        self.request_counter.feed(data)
        replay = self.replay
        if replay is not None and data:
            self.replay_bytes += len(data)
            retry = self.session.retry
            if retry is not None and self.replay_bytes <= retry.max_request_bytes:
                replay.append(data)
            else:
                self.replay = None
        if data or flow_len:
            self.to_upstream.append((data, flow_len))
            self.queued_upstream += len(data)
        if end:
            self.client_ended = True
        self.session.pump_later(self)

    def pump_upstream(self) -> None:
        upstream = self.upstream
        if upstream is None or self.done:
            return
        h2c = upstream.h2
        session = self.session
        queue = self.to_upstream
        sent, acknowledged, acknowledged_fast, _ = _send_queued(h2c, self.up_id, queue)
        self.queued_upstream -= sent
        if acknowledged:
            session.acknowledge(self.stream_id, acknowledged)
        if acknowledged_fast:
            session.acknowledge_fast(self.stream_id, acknowledged_fast)
        if not queue and self.client_ended and not self.end_sent_upstream:
            self.end_sent_upstream = True
            h2c.end_stream(self.up_id)
        upstream.mark()

    # -- UpstreamStream ----------------------------------------------------------------------------------

    def upstream_ready(self, connection: H2UpstreamConnection, stream_id: int) -> None:
        self.upstream = connection
        self.host = connection.host
        self.up_id = stream_id
        self.call.upstream = connection.host.name
        if self.client_ended and not self.to_upstream:
            self.end_sent_upstream = True  # the headers carried END_STREAM
        self.pump_upstream()

    def upstream_window_opened(self) -> None:
        self.pump_upstream()

    def upstream_headers(self, headers: Headers, end_stream: bool) -> None:
        if self.done:
            return
        call = self.call
        call.response_headers = headers
        for name, value in headers:
            if name == b":status":
                call.http_status = int(value) if value.isdigit() else None
        forwarded = [(n, v) for n, v in headers if n not in _CONNECTION_SPECIFIC]
        if end_stream:  # trailers-only
            self._read_status(headers)
            if self._retry_if_allowed(local=False):
                return
            self.response_started = True
            self.session.send_headers(self.stream_id, forwarded, end_stream=True)
            self.finish("trailers")
        elif self.replay is not None:
            self.held_headers = forwarded  # until a message or the trailers say whether to retry
        else:
            self.response_started = True
            self.session.send_headers(self.stream_id, forwarded, end_stream=False)

    def _release_headers(self) -> None:
        """The attempt's response goes to the client: no retry is possible from here on."""
        held, self.held_headers = self.held_headers, None
        self.replay = None
        if held is not None:
            self.response_started = True
            self.session.send_headers(self.stream_id, held, end_stream=False)

    def upstream_data(self, data: bytes, flow_len: int, end_stream: bool) -> None:
        if self.done:
            if self.upstream is not None:
                self.upstream.acknowledge(self.up_id, max(flow_len, 0), max(-flow_len, 0))
            return
        if self.held_headers is not None or self.replay is not None:
            self._release_headers()
        call = self.call
        call.response_bytes += len(data)
        self.response_counter.feed(data)
        self.to_client.append((data, flow_len))
        if end_stream:
            self.trailers = []  # END_STREAM on DATA without trailers: not gRPC, but end the stream alike
            self.pump_client()
        else:
            self.session.pool.pump_client_later(self)

    def upstream_trailers(self, headers: Headers) -> None:
        if self.done:
            return
        self.call.trailers = headers
        self._read_status(headers)
        if self._retry_if_allowed(local=False):
            return
        self._release_headers()
        self.trailers = [(n, v) for n, v in headers if n not in _CONNECTION_SPECIFIC]
        self.pump_client()

    def pump_client(self) -> None:
        """Hand response DATA to the client's stream as far as its window allows; trailers after it."""
        session = self.session
        h2c = session.h2
        queue = self.to_client
        upstream = self.upstream
        _, acknowledged, acknowledged_fast, state = _send_queued(h2c, self.stream_id, queue)
        if upstream is not None and (acknowledged or acknowledged_fast):
            upstream.acknowledge(self.up_id, acknowledged, acknowledged_fast)
        if state == "closed":
            return
        if state == "stalled":
            if not self.client_window_waiting:
                self.client_window_waiting = True
                session.http2.flow_control_wait.inc()
            return
        self.client_window_waiting = False
        session.mark()
        trailers = self.trailers
        if trailers is not None:
            self.trailers = None
            if trailers:
                session.send_headers(self.stream_id, trailers, end_stream=True)
            else:
                session.end_stream(self.stream_id)
            self.finish("trailers")

    def upstream_reset(self, error_code: int) -> None:
        if self.done:
            return
        self.upstream = None
        if error_code == h2.errors.ErrorCodes.REFUSED_STREAM:  # never processed: as safe as UNAVAILABLE
            self.call.grpc_status = UNAVAILABLE
            if self._retry_if_allowed(local=True):
                return
        self.held_headers = None
        if self.response_started:
            self.session.reset_stream(self.stream_id, error_code)
            self.call.grpc_status = CANCELLED if error_code == h2.errors.ErrorCodes.CANCEL else UNAVAILABLE
            self.finish("upstream_reset")
        else:
            status = CANCELLED if error_code == h2.errors.ErrorCodes.CANCEL else UNAVAILABLE
            self.answer(status, f"upstream reset the stream (HTTP/2 error {error_code})", "upstream_reset")

    def upstream_failed(self, reason: str) -> None:
        if self.done:
            return
        self.upstream = None
        self.call.grpc_status = UNAVAILABLE
        if self._retry_if_allowed(local=True):
            return
        self.held_headers = None
        if self.response_started:
            self.session.reset_stream(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.call.grpc_status = UNAVAILABLE
            self.finish("upstream_unavailable")
        else:
            self.answer(UNAVAILABLE, reason, "upstream_unavailable")

    # -- retries ----------------------------------------------------------------------------------------

    def _retry_if_allowed(self, *, local: bool) -> bool:
        """Start another attempt if the status is one to retry, nothing reached the client yet, this call has
        retries left and the listener's retry budget allows one more in flight.

        The failed attempt's outcome goes to outlier detection now (``local``: no status from the server, a
        local-origin failure), as Envoy reports every attempt: otherwise retries that succeed elsewhere would
        hide a failing host from it for good."""
        retry = self.session.retry
        status = self.call.grpc_status
        if retry is None or self.replay is None or status not in retry.on or self.response_started:
            return False
        stats = self.session.retry_stats
        if self.retries >= retry.max_retries:
            stats.limit_exceeded.inc()
            return False
        budget = self.session.retry_budget
        allowed = max(retry.min_retry_concurrency, retry.budget_percent / 100 * budget.active_calls)
        allowed = min(allowed, self.session.pool.cluster.breakers.max_retries)
        if budget.active_retries + 1 > allowed:
            stats.overflow.inc()
            return False
        cluster = self.session.pool.cluster
        cluster.report(self.host, Outcome.LOCAL_ORIGIN_FAILURE if local else outcome_from_grpc_status(status))
        self.host = None  # until the next attempt's stream opens
        old = self.upstream
        if old is not None:
            self.upstream = None
            old.forget(self.up_id)
        self.retries += 1
        budget.active_retries += 1
        stats.retry.inc()
        self.held_headers = None
        self.call.grpc_status = self.call.grpc_message = None
        self.call.response_headers = self.call.trailers = None
        self.response_counter = GrpcMessageCounter()
        self.call.response_bytes = 0
        # Exponential back-off with full jitter, as Envoy's (base 25 ms): 0..25 ms, 0..50 ms, ...
        delay = random.random() * retry.backoff * (2 ** (self.retries - 1))
        self.retry_handle = self.session.loop.call_later(delay, self._attempt)
        return True

    def _attempt(self) -> None:
        self.retry_handle = None
        self.session.retry_budget.active_retries -= 1
        if self.done or self.session.closed:
            return
        replay = self.replay or []
        self.to_upstream = deque((data, 0) for data in replay)  # acknowledged to the client already
        self.queued_upstream = sum(len(data) for data in replay)
        self.end_sent_upstream = False
        headers = [(n, v) for n, v in self.call.request_headers if n not in _CONNECTION_SPECIFIC]
        # Another host than the one that failed, when the cluster has one (Envoy's previous_hosts predicate).
        session = self.session
        picked = session.pool.open_stream(
            self, headers, self.client_ended and not self.to_upstream, self.key, self.picked
        )
        if picked is None:
            session.pool.cluster.stats.upstream_rq_pending_overflow.inc()
            self.answer(UNAVAILABLE, "upstream overflow: circuit breaker max_pending_requests (meshproxy)", "local")
        elif not self.done:
            self.picked = picked
        session.mark()

    # -- endings ----------------------------------------------------------------------------------------

    def _read_status(self, headers: Headers) -> None:
        call = self.call
        code, message = status_from_trailers(headers)
        call.grpc_status, call.grpc_message = int(code), message or None

    def answer(self, status: int, message: str, reason: str) -> None:
        """End the call with a status from the proxy: trailers-only if nothing was sent yet, else trailers."""
        call = self.call
        call.grpc_status, call.grpc_message, call.local = status, message or None, True
        self.to_client.clear()
        self.held_headers = None
        if self.response_started:
            self.session.send_headers(
                self.stream_id, [h for h in _status_headers(status, message) if h[0].startswith(b"grpc-")], True
            )
        else:
            call.http_status = 200
            self.session.send_headers(self.stream_id, _status_headers(status, message), end_stream=True)
        self.cancel_upstream()
        self.finish(reason)

    def cancel_upstream(self) -> None:
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.reset(self.up_id)
        else:
            self.session.pool.cancel_waiting(self)

    def deadline_passed(self) -> None:
        self.deadline_handle = None
        if not self.done:
            self.session.http2_deadline.inc()
            self.answer(DEADLINE_EXCEEDED, "deadline exceeded (meshproxy)", "deadline")

    def finish(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        call = self.call
        call.finished_ns = _now_ns()
        if self.counted:
            self.counted = False
            self.session.pool.cluster.stats.upstream_rq_active.value -= 1
        if reason == "trailers" and call.grpc_status is not None:
            self.session.pool.cluster.report(self.host, outcome_from_grpc_status(call.grpc_status))
        elif reason in ("upstream_reset", "upstream_unavailable"):
            self.session.pool.cluster.report(self.host, Outcome.LOCAL_ORIGIN_FAILURE)
        call.end_reason = reason
        call.request_messages = self.request_counter.count
        call.response_messages = self.response_counter.count
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
        if self.delay_handle is not None:
            self.delay_handle.cancel()
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.session.retry_budget.active_retries -= 1
        if self.retries and call.grpc_status == 0:
            self.session.retry_stats.success.inc()
        self.session.retry_budget.active_calls -= 1
        upstream = self.upstream
        if upstream is not None:
            upstream.forget(self.up_id)
        for _, flow_len in self.to_upstream:
            if flow_len > 0:
                self.session.acknowledge(self.stream_id, flow_len)
            elif flow_len < 0:
                self.session.acknowledge_fast(self.stream_id, -flow_len)
        self.to_upstream.clear()
        self.queued_upstream = 0
        self.session.forget_fast(self.stream_id)
        self.session.call_finished(self)


class GrpcSession(Relay):
    """A gRPC client connection (HTTP/2, prior knowledge) through the proxy."""

    kind = "grpc"

    dial_at_accept = False

    def use_cluster(self, cluster: Cluster) -> None:
        """Calls of this connection go to ``cluster``'s pool (chosen by the TLS server name): each cluster has
        one pool, shared by every listener and connection that sends to it."""
        super().use_cluster(cluster)
        if cluster.h2_pool is None:
            cluster.h2_pool = H2UpstreamPool(cluster)
        self.pool = cluster.h2_pool
        self.flusher = self.pool.flusher

    def __init__(self, listener: ListenerRuntime, connection_id: int) -> None:
        super().__init__(listener, connection_id)
        config = listener.grpc_config
        assert config is not None, "a gRPC session on a listener of another protocol"
        assert listener.grpc_pool is not None
        assert listener.http2_stats is not None
        self.config: GrpcListenerConfig = config
        self.pool = listener.grpc_pool
        self.flusher = self.pool.flusher
        self.http2 = listener.http2_stats
        self.http2_deadline = self.http2.deadline_exceeded
        self.filters: list[GrpcFilter] = listener.grpc_filters
        self.retry = config.retry
        self.hash_key_header = None if config.hash_key_header is None else config.hash_key_header.lower().encode()
        self.retry_budget = listener.grpc_retry_budget
        self.retry_stats = listener.grpc_retry_stats
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_inbound_headers=True,
                # Forwarded headers were validated when h2 received them; the proxy's own are well formed.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.calls: dict[int, _ProxiedCall] = {}
        self.router = FrameRouter(expect_preface=True, fast=self.calls)
        """DATA of a stream in ``calls`` bypasses h2 (see ``meshproxy.codecs.http2``): this session then sends the
        WINDOW_UPDATE frames for those bytes itself (``acknowledge_fast``)."""
        self.fast_windows = FastWindows(stream_window=STREAM_WINDOW, connection_window=CONNECTION_WINDOW)
        self._to_pump: dict[int, _ProxiedCall] = {}
        self._own_frames: list[bytes] = []
        """Frames the session writes past h2 (WINDOW_UPDATE for fast-path DATA), after h2's pending bytes."""
        self._draining = False
        self._goaway_sent = False
        self._eof_sent = False
        self._window_start = 0.0
        self._counts = {"reset": 0, "ping": 0, "settings": 0}
        self._limits = {
            "reset": config.max_resets_per_second,
            "ping": config.max_pings_per_second,
            "settings": config.max_settings_per_second,
        }

    # -- connection -----------------------------------------------------------------------------------

    def on_open(self) -> None:
        config = self.config
        h2c = self.h2
        h2c.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: config.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: config.max_header_list_size,
            },
        )
        h2c.initiate_connection()
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        for f in self.filters:
            f.on_connection_open(self.info)

    def mark(self) -> None:
        self.flusher.mark(self)

    def flush(self) -> None:
        if self.closed:
            return
        data = self.h2.data_to_send()
        if self._own_frames:
            data += b"".join(self._own_frames)
            self._own_frames.clear()
        if data:
            transport = self.down_transport
            tap = self.tap
            if tap is not None:
                tap.server(data)
            transport.write(data)
            if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                self.http2.outbound_flood.inc()
                log.warning(
                    "listener %s: connection %d from %s does not read its responses; closing",
                    self.listener.name, self.connection_id, self.info.client,
                )
                self.close(local=True, abort=True)

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        try:
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.H2Error:
            return  # the client reset the stream meanwhile
        self.mark()

    def end_stream(self, stream_id: int) -> None:
        try:
            self.h2.end_stream(stream_id)
        except h2.exceptions.H2Error:
            return
        self.mark()

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        try:
            self.h2.reset_stream(stream_id, error_code)
        except h2.exceptions.H2Error:
            return
        self.mark()

    def acknowledge(self, stream_id: int, flow_len: int) -> None:
        try:
            self.h2.acknowledge_received_data(flow_len, stream_id)
        except h2.exceptions.H2Error:
            return
        self.mark()

    def acknowledge_fast(self, stream_id: int, size: int) -> None:
        """Re-open the client's windows for fast-path bytes now forwarded."""
        frames = self.fast_windows.forwarded(stream_id, size, stream_open=stream_id in self.calls)
        if frames:
            self._own_frames += frames
            self.mark()

    def pump_later(self, proxied: _ProxiedCall) -> None:
        """Forward ``proxied``'s request DATA once this read is processed, all of it together."""
        self._to_pump[proxied.stream_id] = proxied

    def _pump_all(self) -> None:
        to_pump, self._to_pump = self._to_pump, {}
        for proxied in to_pump.values():
            proxied.pump_upstream()

    def forget_fast(self, stream_id: int) -> None:
        self.fast_windows.forget(stream_id)

    # -- events from the client -----------------------------------------------------------------------

    def on_downstream_data(self, data: bytes) -> None:
        try:
            items = self.router.feed(data)
        except DecodeError as error:
            self._protocol_error(h2.exceptions.ProtocolError(str(error)))
            return
        for item in items:
            if type(item) is FastData:
                self._fast_data(item)
            elif type(item) is bytes:
                try:
                    events = self.h2.receive_data(item)
                except h2.exceptions.ProtocolError as error:
                    self._protocol_error(error)
                    return
                self._events(events)
            else:
                self._draining = True  # a GOAWAY: the client will open no more streams; the open ones finish
            if self.closed:
                return
        self._pump_all()
        self.mark()
        self._maybe_close()

    def _fast_data(self, item: FastData) -> None:
        proxied = self.calls.get(item.stream_id)
        size = len(item.data)
        if proxied is None or proxied.done or proxied.client_ended:
            if size:
                self.acknowledge_fast(item.stream_id, size)  # a stream already over: only the connection's
        else:
            if proxied.queued_upstream + size > 2 * STREAM_WINDOW:
                # More than the window this proxy granted: the client ignores flow control.
                self._protocol_error(h2.exceptions.FlowControlError("DATA beyond the stream's flow-control window"))
                return
            if size:
                proxied.client_data(item.data, -size, False)
        if item.end_stream:
            try:
                events = self.h2.receive_data(end_stream_frame(item.stream_id))
            except h2.exceptions.ProtocolError as error:
                self._protocol_error(error)
                return
            self._events(events)

    def _events(self, events: list[h2.events.Event]) -> None:
        calls = self.calls
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                proxied = calls.get(event.stream_id)  # type: ignore[attr-defined]
                if proxied is not None:
                    proxied.client_data(event.data, event.flow_controlled_length, event.stream_ended is not None)  # type: ignore[attr-defined]
                else:
                    self.acknowledge(event.stream_id, event.flow_controlled_length)  # type: ignore[attr-defined]
            elif kind is h2.events.RequestReceived:
                self._request(event)  # type: ignore[arg-type]
            elif kind is h2.events.StreamEnded:
                proxied = calls.get(event.stream_id)  # type: ignore[attr-defined]
                if proxied is not None and not proxied.client_ended:
                    proxied.client_data(b"", 0, True)
            elif kind is h2.events.WindowUpdated:
                if event.stream_id == 0:  # type: ignore[attr-defined]
                    for proxied in list(calls.values()):
                        if proxied.to_client or proxied.trailers is not None:
                            proxied.pump_client()
                else:
                    proxied = calls.get(event.stream_id)  # type: ignore[attr-defined]
                    if proxied is not None:
                        proxied.pump_client()
            elif kind is h2.events.StreamReset:
                self._client_reset(event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.PingReceived:
                self._count("ping", self.http2.ping_flood)
            elif kind is h2.events.RemoteSettingsChanged:
                self._count("settings", self.http2.settings_flood)
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:  # type: ignore[attr-defined]
                    for proxied in list(calls.values()):
                        proxied.pump_client()
            elif kind is h2.events.ConnectionTerminated:
                self._draining = True  # the client will open no more streams
            if self.closed:
                return

    def _request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        headers: Headers = list(event.headers)
        if self._draining:
            self.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        path = content_type = b""
        timeout: float | None = None
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                try:
                    timeout = parse_timeout(value)
                except DecodeError:
                    timeout = None  # a malformed timeout is ignored, as gRPC servers ignore it
        service: str | None
        method: str | None
        try:
            service, method = parse_path(path)
        except DecodeError:
            service = method = None
        call = GrpcCall(
            connection=self.info,
            stream_id=stream_id,
            path=path.decode("latin-1"),
            service=service,
            method=method,
            request_headers=headers,
            started_ns=_now_ns(),
            timeout=timeout,
            is_grpc=is_grpc_content_type(content_type),
        )
        proxied = self.calls[stream_id] = _ProxiedCall(self, call)
        self.retry_budget.active_calls += 1
        if event.stream_ended is not None:
            proxied.client_ended = True
        if timeout is not None:
            offset = self.config.grpc_timeout_offset
            proxied.deadline_handle = self.loop.call_later(max(0.0, timeout - offset), proxied.deadline_passed)
        self._start(proxied, 0)

    def _start(self, proxied: _ProxiedCall, first: int) -> None:
        filters = self.filters
        for index in range(first, len(filters)):
            try:
                action = filters[index].on_call_start(proxied.call)
            except Exception as error:
                self._filter_failed(filters[index], error)
                continue
            if action is None:
                continue
            if isinstance(action, Delay):
                proxied.delay_handle = self.loop.call_later(action.seconds, self._release, proxied, index + 1)
                return
            if isinstance(action, GrpcAbort):
                proxied.answer(action.status, action.message, "local")
                return
        pool = self.pool
        cluster = pool.cluster
        if not cluster.request_allowed():
            proxied.answer(UNAVAILABLE, "upstream overflow: circuit breaker max_requests (meshproxy)", "local")
            return
        proxied.counted = True
        cluster.stats.upstream_rq_active.value += 1
        request_headers = proxied.call.request_headers
        headers = [(n, v) for n, v in request_headers if n not in _CONNECTION_SPECIFIC]
        if pool.cluster.hashes_keys:
            proxied.key = self._hash_key(request_headers)
        # The balancer picks a host for this call alone (per-call balancing, see meshproxy.transport.h2_upstream).
        picked = pool.open_stream(proxied, headers, proxied.client_ended and not proxied.to_upstream, proxied.key)
        if picked is None:
            cluster.stats.upstream_rq_pending_overflow.inc()
            proxied.answer(UNAVAILABLE, "upstream overflow: circuit breaker max_pending_requests (meshproxy)", "local")
        elif not proxied.done:
            proxied.picked = picked

    def _hash_key(self, headers: Headers) -> bytes:
        """What a hashing balancer hashes for a call: ``hash_key_header``'s value when the call has it, else
        its ``:path`` (so calls of one method stick to one host)."""
        wanted = self.hash_key_header
        path = b""
        for name, value in headers:
            if name == wanted:
                return value
            if name == b":path":
                path = value
        return path

    def _release(self, proxied: _ProxiedCall, next_filter: int) -> None:
        proxied.delay_handle = None
        if not proxied.done and not self.closed:
            self._start(proxied, next_filter)
            self.mark()

    def _client_reset(self, stream_id: int) -> None:
        proxied = self.calls.get(stream_id)
        self._count("reset", self.http2.rx_reset_flood)
        self.http2.rx_reset.inc()
        if proxied is None or proxied.done:
            return
        call = proxied.call
        # A client whose own deadline passed cancels the stream itself (grpcio does, at the same moment as the
        # proxy's timer): that call ended in DEADLINE_EXCEEDED, which is what the client reports.
        late = call.timeout is not None and _now_ns() - call.started_ns >= (call.timeout - DEADLINE_SLACK) * 1e9
        call.grpc_status = DEADLINE_EXCEEDED if late else CANCELLED
        proxied.cancel_upstream()
        proxied.finish("deadline" if late else "client_reset")

    def _count(self, kind: str, flood: Counter) -> None:
        """Per-second budgets for frames a client can send without limit and that cost the proxy work."""
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start = now
            for key in self._counts:
                self._counts[key] = 0
        self._counts[kind] += 1
        limit = self._limits[kind]
        if self._counts[kind] > limit and not self._goaway_sent:
            flood.inc()
            log.warning(
                "listener %s: connection %d from %s: more than %d %s frames a second; GOAWAY",
                self.listener.name, self.connection_id, self.info.client, limit, kind.upper(),
            )
            self._goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    def _goaway(self, error_code: int) -> None:
        self._goaway_sent = True
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.close_connection(error_code=error_code)
        self.flush()
        self.close(local=True)

    def _protocol_error(self, error: h2.exceptions.ProtocolError) -> None:
        stats = self.http2
        text = str(error).lower()
        if isinstance(error, h2.exceptions.TooManyStreamsError):
            stats.too_many_streams.inc()
        elif isinstance(error, h2.exceptions.DenialOfServiceError):
            stats.header_overflow.inc()  # h2: "Oversized header block" (over max_header_list_size)
        elif "continuation" in text:
            stats.too_many_header_frames.inc()  # h2: more CONTINUATION frames than it buffers
        else:
            stats.protocol_error.inc()
        log.warning(
            "listener %s: connection %d from %s: HTTP/2 protocol error (%s: %s); GOAWAY",
            self.listener.name, self.connection_id, self.info.client, type(error).__name__, error,
        )
        self._goaway_sent = True
        self.flush()  # h2 has queued its GOAWAY
        self.close(local=True)

    # -- calls --------------------------------------------------------------------------------------------

    def call_finished(self, proxied: _ProxiedCall) -> None:
        self.calls.pop(proxied.stream_id, None)
        call = proxied.call
        for f in reversed(self.filters):
            try:
                f.on_call_end(call)
            except Exception as error:
                self._filter_failed(f, error)
        self.mark()
        if self._draining:
            self.loop.call_soon(self._maybe_close)

    def _filter_failed(self, grpc_filter: GrpcFilter, error: Exception) -> None:
        self.http2.filter_error.inc()
        log.error(
            "listener %s: connection %d: filter %s failed (%s: %s); the call continues",
            self.listener.name, self.connection_id, type(grpc_filter).__name__, type(error).__name__, error,
            exc_info=True,
        )

    # -- drain and close ------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self.calls)

    def drain(self) -> None:
        """Tell the client to open no more streams (GOAWAY with the last stream id), finish the open ones."""
        self._draining = True
        if not self._goaway_sent and not self.closed:
            self._goaway_sent = True
            self.flush()
            # Written past h2, which would stop the open streams if it knew (see meshproxy.codecs.http2).
            self.send_downstream(goaway_frame(self.h2.highest_inbound_stream_id))
        self._maybe_close()

    def _maybe_close(self) -> None:
        """With no call left on a draining connection, end the proxy's side and let the client close its
        own: closing outright while the client's last frames are still unread would make the kernel answer
        them with a reset, which can destroy the GOAWAY before the client reads it."""
        if self._draining and not self.calls and not self.closed and not self._eof_sent:
            self.flush()
            transport = self.down_transport
            self.http2.cx_drain_close.inc()
            try:
                if transport.can_write_eof():
                    self._eof_sent = True
                    transport.write_eof()
                    return
            except OSError:  # the client is gone already
                pass
            self.close(local=True)

    def eof_received(self) -> bool:
        return False  # an HTTP/2 client that half-closes is gone: close

    def on_close(self, *, local: bool) -> None:
        active = 0
        for proxied in list(self.calls.values()):
            if not proxied.done:
                active += 1
                if proxied.call.grpc_status is None:
                    proxied.call.grpc_status = CANCELLED
                proxied.cancel_upstream()
                proxied.finish("connection_closed")
        self.calls.clear()
        for f in self.filters:
            f.on_connection_close(self.info, active_calls=active, local=local)
