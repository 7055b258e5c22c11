"""A cluster's pool of multiplexed HTTP/2 upstream connections, on h2 and asyncio Protocol callbacks.

Client connections do not own upstream connections here (unlike the byte relay and the Mongo and DynamoDB
sessions): every call of every client connection is a stream on one of a few shared upstream connections,
as in Envoy's HTTP/2 connection pool.

**Calls are balanced one by one.** Each new upstream stream (each call, and each retry attempt) asks the
cluster's balancer for a host (``cluster.pick(key)``), then goes on an open connection to *that* host with
room, or waits for one to be dialled to it. Picking per connection instead would pin every call of a
long-lived connection to one host: one grpcio channel would never spread, and least request, ring hash and
maglev would have nothing to act on. A retry attempt avoids the host whose attempt failed when the cluster
has another healthy one (Envoy's ``previous_hosts`` retry predicate; hashing policies get a perturbed key,
as Envoy's ring hash and maglev do for a retry).

A connection takes new streams until it has as many as the server's ``SETTINGS_MAX_CONCURRENT_STREAMS``
(capped at ``MAX_STREAMS_PER_CONNECTION``), then a new one to the same host is dialled (one dial per host at
a time). With ``max_connections`` reached and no connection to the picked host, a call takes a connection
of another host with room rather than failing: the breaker bounds connections, not which host serves.
A connection that received ``GOAWAY`` takes no new streams; its streams above the server's last stream id
were never processed, so they fail as ``unavailable`` (safe for the caller to retry), and it closes once
the rest are done.

The pool speaks to a call's upstream half through ``UpstreamStream`` callbacks. Writes are coalesced: every
h2 operation marks its connection dirty and one ``Flusher`` pass per loop iteration writes each dirty
connection's bytes once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from meshproxy.cluster.outlier import Outcome
from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.http2 import FastData, FastWindows, FrameRouter, Goaway, end_stream_frame, goaway_frame
from meshproxy.transport.tls import client_context, count_upstream_failure, tls_connected

if TYPE_CHECKING:
    from meshproxy.cluster import Cluster, Host

log = logging.getLogger("meshproxy.h2")

Headers = list[tuple[bytes, bytes]]

RETRY_HOST_PICKS = 3
"""Picks a retry attempt makes to find a host other than the one that failed before taking any other
healthy host directly (Envoy's ``host_selection_retry_max_attempts``, which defaults to 1)."""
MAX_STREAMS_PER_CONNECTION = 1000
"""Streams one upstream connection carries at most, whatever the server allows (grpcio allows 2^31)."""
UPSTREAM_WINDOW = 1 << 20
"""Receive window per upstream stream (1 MiB) and for the connection (16 MiB): what a server may send
ahead of the client reading it. The proxy acknowledges upstream bytes only once they are forwarded, so this
is also the most the proxy buffers for one slow client stream."""


class Flusher:
    """Writes each dirty connection's pending h2 bytes once per loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: set[Flushable] = set()
        self.scheduled = False

    def mark(self, connection: Flushable) -> None:
        self.dirty.add(connection)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, set()
        for connection in dirty:
            connection.flush()


class Flushable(Protocol):
    def flush(self) -> None: ...


class UpstreamStream(Protocol):
    """A call's upstream half, as the pool reports to it."""

    def upstream_ready(self, connection: H2UpstreamConnection, stream_id: int) -> None:
        """The request headers went out on ``stream_id``; request DATA may follow."""

    def upstream_headers(self, headers: Headers, end_stream: bool) -> None:
        """Response headers (``end_stream``: a trailers-only response)."""

    def upstream_data(self, data: bytes, flow_controlled_length: int, end_stream: bool) -> None:
        """Response DATA; acknowledge ``flow_controlled_length`` once it is forwarded."""

    def upstream_trailers(self, headers: Headers) -> None:
        """Response trailers: the stream is over."""

    def upstream_reset(self, error_code: int) -> None:
        """The server reset the stream."""

    def upstream_window_opened(self) -> None:
        """More request DATA may be sent."""

    def upstream_failed(self, reason: str) -> None:
        """The stream could not be opened or its connection went away before it ended."""


class H2UpstreamConnection(asyncio.Protocol):
    """One HTTP/2 client connection to one upstream host."""

    def __init__(self, pool: H2UpstreamPool, host: Host) -> None:
        self.pool = pool
        self.host = host
        self.host_rq_total = host.stats.rq_total
        self.host_rq_active = host.stats.rq_active
        """Per-host requests: ``rq_active`` is what least request reads, so it follows every stream."""
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_inbound_headers=True,
                # Forwarded headers were validated when h2 received them; the proxy's own are well formed.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, UpstreamStream] = {}
        self.goaway = False
        self.closed = False
        self.max_streams = MAX_STREAMS_PER_CONNECTION
        self.fast_streams: set[int] = set()
        """Streams whose response headers are in: their DATA bypasses h2 (``meshproxy.codecs.http2``)."""
        self.router = FrameRouter(expect_preface=False, fast=self.fast_streams)
        self.fast_windows = FastWindows(stream_window=UPSTREAM_WINDOW, connection_window=16 * UPSTREAM_WINDOW)
        self.own_frames: list[bytes] = []

    # -- lifecycle ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        h2c = self.h2
        h2c.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: UPSTREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.pool.max_header_list_size,
            },
        )
        h2c.initiate_connection()
        h2c.increment_flow_control_window(16 * UPSTREAM_WINDOW - 65535)
        self.flush()

    @property
    def capacity(self) -> int:
        """Streams this connection can still open."""
        if self.goaway or self.closed or self.transport is None:
            return 0
        limit = min(self.max_streams, self.h2.remote_settings.max_concurrent_streams)
        return limit - len(self.streams)

    def open_stream(self, handler: UpstreamStream, headers: Headers, end_stream: bool) -> None:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        self.streams[stream_id] = handler
        self.pool.stats_rq_total.value += 1
        self.host_rq_total.value += 1
        self.host_rq_active.value += 1
        self.mark()
        handler.upstream_ready(self, stream_id)

    def mark(self) -> None:
        self.pool.flusher.mark(self)

    def flush(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        data = self.h2.data_to_send()
        if self.own_frames:
            data += b"".join(self.own_frames)
            self.own_frames.clear()
        if data:
            self.pool.cluster.stats.upstream_cx_tx_bytes_total.value += len(data)
            transport.write(data)

    def forget(self, stream_id: int) -> None:
        """The call is done with ``stream_id`` (ended, or reset by the proxy)."""
        self.fast_streams.discard(stream_id)
        self.fast_windows.forget(stream_id)
        if self.streams.pop(stream_id, None) is not None:
            self.host_rq_active.value -= 1
            self.pool.stream_finished(self)

    def acknowledge(self, stream_id: int, size: int, fast_size: int) -> None:
        """Response bytes forwarded to the client: re-open the server's windows (h2's bytes through h2, fast-path
        bytes with this connection's own WINDOW_UPDATE frames)."""
        if size:
            with contextlib.suppress(h2.exceptions.H2Error):  # the stream may be over
                self.h2.acknowledge_received_data(size, stream_id)
        if fast_size:
            self.own_frames += self.fast_windows.forwarded(stream_id, fast_size, stream_open=stream_id in self.streams)
        self.mark()

    def reset(self, stream_id: int, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Cancel ``stream_id`` towards the server (the client went away, a deadline passed)."""
        with contextlib.suppress(h2.exceptions.H2Error):  # already closed on the wire
            self.h2.reset_stream(stream_id, error_code)
        self.mark()
        self.forget(stream_id)

    # -- events ---------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.pool.cluster.stats.upstream_cx_rx_bytes_total.value += len(data)
        try:
            for item in self.router.feed(data):
                if type(item) is bytes:
                    self._events(self.h2.receive_data(item))
                elif type(item) is FastData:
                    handler = self.streams.get(item.stream_id)
                    if handler is None:
                        self.acknowledge(item.stream_id, 0, len(item.data))
                    elif item.data:
                        handler.upstream_data(item.data, -len(item.data), False)
                    if item.end_stream:
                        self._events(self.h2.receive_data(end_stream_frame(item.stream_id)))
                elif isinstance(item, Goaway):
                    self._goaway(item.last_stream_id, item.error_code)
                if self.closed:
                    return
        except (h2.exceptions.ProtocolError, DecodeError) as error:
            log.warning("upstream %s: HTTP/2 protocol error (%s); closing", self.host.name, error)
            self.pool.stats_protocol_error.inc()
            self.mark()
            self._fail_all("upstream HTTP/2 protocol error")
            self._close()
            return
        self.pool.run_client_pumps()
        self.mark()

    def _events(self, events: list[h2.events.Event]) -> None:
        streams = self.streams
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                handler = streams.get(event.stream_id)  # type: ignore[attr-defined]
                if handler is not None:
                    handler.upstream_data(event.data, event.flow_controlled_length, event.stream_ended is not None)  # type: ignore[attr-defined]
                else:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.ResponseReceived:
                handler = streams.get(event.stream_id)  # type: ignore[attr-defined]
                if handler is not None:
                    if event.stream_ended is None:  # type: ignore[attr-defined]
                        self.fast_streams.add(event.stream_id)  # type: ignore[attr-defined]
                    handler.upstream_headers(list(event.headers), event.stream_ended is not None)  # type: ignore[attr-defined]
            elif kind is h2.events.TrailersReceived:
                handler = streams.get(event.stream_id)  # type: ignore[attr-defined]
                if handler is not None:
                    handler.upstream_trailers(list(event.headers))  # type: ignore[attr-defined]
            elif kind is h2.events.StreamReset:
                handler = streams.get(event.stream_id)  # type: ignore[attr-defined]
                if handler is not None:
                    self.forget(event.stream_id)  # type: ignore[attr-defined]
                    handler.upstream_reset(event.error_code)  # type: ignore[attr-defined]
            elif kind is h2.events.WindowUpdated:
                if event.stream_id == 0:  # type: ignore[attr-defined]
                    for handler in list(streams.values()):
                        handler.upstream_window_opened()
                else:
                    handler = streams.get(event.stream_id)  # type: ignore[attr-defined]
                    if handler is not None:
                        handler.upstream_window_opened()
            elif kind is h2.events.RemoteSettingsChanged:
                changed = event.changed_settings  # type: ignore[attr-defined]
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in changed:
                    for handler in list(streams.values()):
                        handler.upstream_window_opened()
                self.pool.connection_ready(self)

    def _goaway(self, last_stream_id: int, error_code: int | None) -> None:
        self.goaway = True
        self.pool.stats_goaway.inc()
        log.info("upstream %s: GOAWAY (last stream %d, error %s)", self.host.name, last_stream_id, error_code)
        for stream_id in [s for s in self.streams if s > last_stream_id]:
            handler = self.streams.pop(stream_id)
            self.host_rq_active.value -= 1
            handler.upstream_failed("the server sent GOAWAY before processing the stream")
        if not self.streams:
            self._close()
        self.pool.connection_ready(self)  # waiting calls go to another connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail_all("upstream connection closed")
        self._close()

    def _fail_all(self, reason: str) -> None:
        streams, self.streams = self.streams, {}
        self.host_rq_active.value -= len(streams)
        for handler in streams.values():
            handler.upstream_failed(reason)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.flush_final()
        self.pool.connection_closed(self)

    def flush_final(self) -> None:
        transport = self.transport
        if transport is not None:
            data = self.h2.data_to_send()
            if data:
                transport.write(data)
            transport.close()

    def close_when_idle(self) -> None:
        """Drain: GOAWAY the server side too, and close once no stream is open."""
        if not self.closed and self.transport is not None:
            self.goaway = True
            self.flush()
            self.transport.write(goaway_frame(0))  # written past h2, which would stop the open streams
            if not self.streams:
                self._close()


class Waiting(NamedTuple):
    """A stream waiting for room on a connection to ``host`` (None: to any host, see ``open_stream``)."""

    handler: UpstreamStream
    headers: Headers
    end_stream: bool
    host: Host | None


class H2UpstreamPool:
    """The HTTP/2 connections of one cluster, shared by every client connection of a listener."""

    def __init__(self, cluster: Cluster, *, max_header_list_size: int = 64 * 1024) -> None:
        self.cluster = cluster
        self.loop = asyncio.get_running_loop()
        self.flusher = Flusher(self.loop)
        self.max_header_list_size = max_header_list_size
        self.ssl_context = (
            None
            if cluster.tls is None
            else client_context(cluster.tls, alpn=["h2"], where=f"clusters[{cluster.name}].tls")
        )
        self.connections: list[H2UpstreamConnection] = []
        self.connecting: list[H2UpstreamConnection] = []
        self.waiting: deque[Waiting] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._client_pumps: dict[int, Any] = {}
        stats = cluster.stats
        self._membership_change = stats.membership_change
        self._membership_seen = stats.membership_change.value
        """Host discovery changed the hosts since the last look: connections to hosts that left must go."""
        self.stats_rq_total = stats.upstream_rq_total
        store = cluster.store
        name = cluster.name
        labels = {"cluster": name}
        self.stats_goaway = store.counter(
            f"cluster.{name}.upstream_cx_goaway", prom="meshproxy_cluster_upstream_cx_goaway", labels=labels
        )
        self.stats_protocol_error = store.counter(
            f"cluster.{name}.upstream_cx_protocol_error",
            prom="meshproxy_cluster_upstream_cx_protocol_error",
            labels=labels,
        )

    def pick(self, key: bytes | None = None, avoid: Host | None = None) -> Host:
        """The host for one new stream: the balancer's choice, other than ``avoid`` (the host of a failed
        attempt) when the cluster has another healthy host.

        As Envoy's ``previous_hosts`` retry predicate: the balancer is asked again a few times (a hashing
        balancer with the key perturbed by the attempt number, as Envoy's ring hash and maglev do, so a retry
        moves consistently); if it still answers ``avoid``, the healthy host with the fewest requests in
        flight is taken. With no other healthy host the balancer's answer stands: retrying the same host
        beats failing the call."""
        cluster = self.cluster
        host = cluster.pick(key)
        if avoid is None or host is not avoid:
            return host
        others = [h for h in cluster.hosts if h is not avoid and h.healthy]
        if not others:
            return host
        for attempt in range(1, RETRY_HOST_PICKS + 1):
            host = cluster.pick(None if key is None else key + b"#%d" % attempt)
            if host is not avoid:
                return host
        return min(others, key=lambda h: h.stats.rq_active.value)

    def open_stream(
        self,
        handler: UpstreamStream,
        headers: Headers,
        end_stream: bool,
        key: bytes | None = None,
        avoid: Host | None = None,
    ) -> Host | None:
        """Open a stream for ``handler`` to the host the balancer picks for it (see ``pick``), now on an
        open connection to that host with room, or as soon as one is dialled.

        Returns the host picked, or None when the stream would have to wait and ``max_pending_requests``
        streams already do (counted by the caller, which answers the call). A stream that cannot be opened
        at all (``max_connections`` reached with no connection to spare) is failed through
        ``handler.upstream_failed``."""
        if self._membership_change.value != self._membership_seen:
            self._retire_removed()
        host = self.pick(key, avoid)
        connections = self.connections
        for connection in connections:
            if connection.host is host and connection.capacity > 0:
                connection.open_stream(handler, headers, end_stream)
                return host
        if len(self.waiting) >= self.cluster.breakers.max_pending_requests:
            return None
        if any(connection.host is host for connection in self.connecting):
            self.waiting.append(Waiting(handler, headers, end_stream, host))
            return host
        if self.cluster.connection_allowed():
            self.waiting.append(Waiting(handler, headers, end_stream, host))
            self._dial(host)
            return host
        # max_connections is reached: rather than fail the call, carry it on another host's connection.
        for connection in connections:
            if connection.capacity > 0:
                connection.open_stream(handler, headers, end_stream)
                return connection.host
        if connections:  # all full: the first stream to end anywhere makes room
            self.waiting.append(Waiting(handler, headers, end_stream, None))
            return host
        handler.upstream_failed("upstream overflow: circuit breaker max_connections (meshproxy)")
        return host

    def pump_client_later(self, handler: Any) -> None:
        """Forward a call's response DATA once the current upstream read is processed, all of it together."""
        self._client_pumps[id(handler)] = handler

    def run_client_pumps(self) -> None:
        pumps, self._client_pumps = self._client_pumps, {}
        for handler in pumps.values():
            handler.pump_client()

    def cancel_waiting(self, handler: UpstreamStream) -> None:
        if self.waiting:
            self.waiting = deque(entry for entry in self.waiting if entry.handler is not handler)

    def _dial(self, host: Host) -> None:
        connection = H2UpstreamConnection(self, host)
        self.connecting.append(connection)
        task = self.loop.create_task(self._connect(connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, connection: H2UpstreamConnection) -> None:
        cluster, host = self.cluster, connection.host
        try:
            async with asyncio.timeout(cluster.connect_timeout):
                transport, _ = await self.loop.create_connection(
                    lambda: connection,
                    host.address[0],
                    host.address[1],
                    ssl=self.ssl_context,
                    server_hostname=cluster.server_hostname(host),
                )
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                tls_connected(cluster, transport, cluster.server_hostname(host))
            if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
                transport.close()
                raise OSError(f"the server did not agree to HTTP/2 by ALPN ({ssl_object.selected_alpn_protocol()!r})")
        except (OSError, TimeoutError) as error:
            count_upstream_failure(cluster, error)
            self.connecting.remove(connection)
            if isinstance(error, TimeoutError):
                cluster.stats.upstream_cx_connect_timeout.inc()
            cluster.stats.upstream_cx_connect_fail.inc()
            host.stats.cx_connect_fail.inc()
            cluster.report(host, Outcome.LOCAL_ORIGIN_FAILURE)
            reason = "connect timeout" if isinstance(error, TimeoutError) else (error.strerror or str(error))
            log.warning("cluster %s: cannot reach %s: %s", cluster.name, host.name, reason)
            # The streams that picked this host fail (a retry picks another host); the others wait on.
            failed = [entry for entry in self.waiting if entry.host is host]
            if failed:
                self.waiting = deque(entry for entry in self.waiting if entry.host is not host)
            for entry in failed:
                entry.handler.upstream_failed(f"upstream connect error: {reason}")
            return
        self.connecting.remove(connection)
        cluster.report(host, Outcome.SUCCESS)
        cluster.stats.upstream_cx_total.inc()
        cluster.stats.upstream_cx_active.inc()
        host.stats.cx_total.inc()
        host.stats.cx_active.inc()
        self.connections.append(connection)
        self.connection_ready(connection)

    def connection_ready(self, connection: H2UpstreamConnection) -> None:
        """A connection may have room (connected, settings changed, a stream ended, another one said GOAWAY):
        start the streams waiting for its host (or for any host) on the connections to that host with room,
        and dial one more to it when some still wait."""
        if not self.waiting:
            return
        host = connection.host
        mine = [entry for entry in self.waiting if entry.host is host or entry.host is None]
        if not mine:
            return
        started = 0
        target: H2UpstreamConnection | None = connection if connection.capacity > 0 else None
        for entry in mine:
            if target is None or target.capacity <= 0:
                target = next((c for c in self.connections if c.host is host and c.capacity > 0), None)
                if target is None:
                    break
            started += 1
            target.open_stream(entry.handler, entry.headers, entry.end_stream)
        if started:
            done = {id(entry) for entry in mine[:started]}
            self.waiting = deque(entry for entry in self.waiting if id(entry) not in done)
        if started < len(mine) and not self.connections and any(e.host is None for e in mine[started:]):
            # Streams waiting for room on any host, and no connection is left to make room: this host's.
            self.waiting = deque(entry._replace(host=host) if entry.host is None else entry for entry in self.waiting)
            rest = [entry for entry in self.waiting if entry.host is host]
        else:
            rest = [entry for entry in mine[started:] if entry.host is not None]
        if rest and not any(c.host is host for c in self.connecting):
            if self.cluster.connection_allowed():
                self._dial(host)
            else:
                self._strand(host, rest)

    def _strand(self, host: Host, entries: list[Waiting]) -> None:
        """Streams waiting for ``host``, which gets no new connection (``max_connections``): unless a
        connection to it will make room, they wait for room anywhere, or fail when there is no connection."""
        if any(c.host is host and not c.goaway and not c.closed for c in self.connections):
            return
        stranded = {id(entry) for entry in entries}
        if self.connections:
            self.waiting = deque(
                entry._replace(host=None) if id(entry) in stranded else entry for entry in self.waiting
            )
        else:
            self.waiting = deque(entry for entry in self.waiting if id(entry) not in stranded)
            for entry in entries:
                entry.handler.upstream_failed("upstream overflow: circuit breaker max_connections (meshproxy)")

    def stream_finished(self, connection: H2UpstreamConnection) -> None:
        if connection.goaway and not connection.streams:
            connection._close()
        elif connection.host.removed and not connection.streams:
            connection.close_when_idle()
        elif self.waiting:
            self.connection_ready(connection)

    def _retire_removed(self) -> None:
        """Host discovery took hosts out: the balancer no longer picks them, and their connections take no
        new streams and close once their streams are done (Envoy drains a removed host's pool alike)."""
        self._membership_seen = self._membership_change.value
        for connection in list(self.connections):
            if connection.host.removed and not connection.goaway:
                connection.close_when_idle()

    def connection_closed(self, connection: H2UpstreamConnection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
            self.cluster.stats.upstream_cx_active.dec()
            connection.host.stats.cx_active.dec()
            self.cluster.stats.upstream_cx_destroy_remote.inc()
        if self.waiting:  # streams that waited for room on it need another connection to its host
            self.connection_ready(connection)

    def close(self) -> None:
        """Drain: every connection says GOAWAY and closes when its streams are done."""
        for connection in list(self.connections):
            connection.close_when_idle()
        for task in self._tasks:
            task.cancel()
