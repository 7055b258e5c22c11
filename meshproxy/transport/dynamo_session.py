"""The DynamoDB proxy session: HTTP/1.1 framing + DynamoDB parsing + filter chain, for one client connection.

Each request is framed by ``meshproxy.codecs.http1``, read by ``meshproxy.codecs.dynamo.parse_request``,
wrapped in a ``DynamoOperation`` and passed through the filters; the response comes back through them in
reverse order. Unchanged messages are forwarded as their exact bytes.

The client's connection and the upstream connection live separate lives, as in any HTTP proxy:

- **Keep-alive is the proxy's business on each side.** A server that answers ``Connection: close`` (moto
  does, on every response) or closes after a response costs the proxy a new upstream connection for the
  next request, not the client its connection: the ``Connection: close`` is taken off the response the
  client sees. The upstream connection is dialled when a request is ready to go.
- **One request is upstream at a time.** Pipelined requests wait in order in the session (HTTP/1.1 answers
  in order anyway) and go up one by one. So a server that closes after a response never takes unanswered
  requests down with it, a fault delay holds exactly the requests behind it, and a local answer (an injected
  error) is never written before the response to an earlier request.
- **``Expect: 100-continue`` is answered here**, once the requests ahead of it are answered: the request is
  only forwarded whole (filters need its body), so the client must be told to send it. The server's own
  interim ``100`` is then dropped: the client has had one.
- **Every request is balanced on its own** (``cluster.pick(key)`` per request, the key hashed only for
  ``ring_hash`` / ``maglev``: the table and, for tables in ``partition_keys``, the item's partition key) and
  goes over a kept-alive connection to the host picked. The session keeps at most one upstream connection
  per host (``Http1Upstream``), so round robin over three hosts costs three connections, not one per
  request. Why per session and not Envoy's per-cluster pool shared by all client connections: requests go up
  one at a time per client connection, so a session never needs two connections to one host, a pool would
  add ownership hand-over between sessions (and between their drains and closes) to the hot path, and the
  connections' lifetime stays the client's (``max_connections`` still caps the total; a session closes one
  of its idle connections to make room before answering 503).
- **A failed upstream answers the one request**, not the connection: 503 when the server resets before
  answering, 504 after ``upstream_timeout``; the client's connection stays open. A connection that could
  not be opened never carried the request, so the request is sent to another host instead (up to
  ``CONNECT_ATTEMPTS`` hosts); only when none is left is it answered 503.

With an ``aws`` block the request is re-signed with SigV4 as it is written to the connection of the host
picked (``_sign_for``, ``meshproxy.filters.dynamo.sigv4``): the signature covers that host's name, so it
cannot be made earlier, by a filter, before the balancer has chosen.

Bad input (``DecodeError`` from the framing: malformed HTTP, smuggling attempts, a head or body past the
limits) is counted in ``dynamodb.<prefix>.decoding_error`` and answered with 400, 431 or 413 before the
connection is closed; under ``on_decode_error: passthrough`` the connection is relayed undecoded from then
on instead. A well-framed request that is not a DynamoDB request (no or unknown ``X-Amz-Target``, a body
that is not JSON) is forwarded and counted, or answered with DynamoDB's own error under
``invalid_requests: reject``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import replace
from http import HTTPStatus
from typing import TYPE_CHECKING

from meshproxy.cluster.outlier import Outcome, outcome_from_dynamo
from meshproxy.codecs.dynamo import (
    DynamoRequest,
    DynamoResponse,
    crc32_of,
    error_response,
    parse_request,
    parse_response,
)
from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.http1 import Http1RequestDecoder, Http1ResponseDecoder, HttpRequest, HttpResponse, encode
from meshproxy.filters.dynamo.api import Delay, DynamoFilter, DynamoOperation, LocalResponse
from meshproxy.filters.dynamo.sigv4 import DynamoRequestSigner, authority, signer_for
from meshproxy.transport.http1_upstream import Http1Upstream
from meshproxy.transport.relay import Relay

if TYPE_CHECKING:
    from meshproxy.cluster import Host
    from meshproxy.stats import Counter
    from meshproxy.transport.listener import ListenerRuntime

log = logging.getLogger("meshproxy.dynamo")

_now_ns = time.monotonic_ns

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

QUEUE_LIMIT = 1 << 20
"""Bytes of pipelined requests waiting behind the one upstream (1 MiB) before the client's reading pauses."""

_DECODE_ERROR_STATUS = {"head_too_large": 431, "body_too_large": 413}
"""The status a framing error is answered with; any other reason is a 400."""

_HOP_BY_HOP = frozenset({b"connection", b"keep-alive"})
"""Response headers about the upstream connection, which the client's connection does not share."""

CONNECT_ATTEMPTS = 3
"""Hosts a request is offered to when connections cannot be opened (it never left the proxy, so trying
another host is safe for any operation); then it is answered 503."""

_READS = frozenset({
    "GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems", "GetRecords", "GetShardIterator",
})
"""Operations that change nothing (with every ``Describe*`` and ``List*``): sent again to another host when
a connection dies before any byte of their response, since the first host cannot have acted on them in a
way that matters. Writes are never re-sent (the first host may have applied them)."""

_KEY_ATTRIBUTE = {"GetItem": "Key", "UpdateItem": "Key", "DeleteItem": "Key", "PutItem": "Item"}
"""Operations whose partition key value is hashed, and where their body holds it."""


class _InFlight:
    """The request that is upstream now, and what answering it needs."""

    __slots__ = ("answering", "attempts", "conn", "deadline_ns", "host", "op", "request")

    def __init__(self, op: DynamoOperation, request: HttpRequest, deadline_ns: int, host: Host) -> None:
        self.op = op
        self.request = request
        self.deadline_ns = deadline_ns
        """When it times out (``time.monotonic_ns``); 0: never."""
        self.host = host
        """Where it went: its ``rq_active`` is this host's until it is answered."""
        self.conn: Http1Upstream = None  # type: ignore[assignment]  # set as soon as it has a connection
        self.attempts = 1
        """Hosts it was offered to (a connect failure offers it to another)."""
        self.answering = False
        """Bytes of its response arrived (then it is never sent again)."""


class DynamoSession(Relay):
    """A DynamoDB client connection through the proxy."""

    kind = "dynamo"

    dial_at_accept = False

    def __init__(self, listener: ListenerRuntime, connection_id: int) -> None:
        super().__init__(listener, connection_id)
        config, stats = listener.dynamo_config, listener.dynamo_stats
        assert config is not None, "a DynamoDB session on a listener of another protocol"
        assert stats is not None
        self.config = config
        self.request_decoder = Http1RequestDecoder(config.max_header_size, config.max_body_size)
        self.filters: list[DynamoFilter] = listener.dynamo_filters
        self.session_stats = stats
        self.queue: deque[HttpRequest] = deque()
        self.queued_bytes = 0
        self.in_flight: _InFlight | None = None
        self.passthrough = False
        self._conns: dict[tuple[str, int], Http1Upstream] = {}
        """Open (or dialling) upstream connections by host address, at most one per host; all idle but the
        one carrying ``in_flight``."""
        self._current: Http1Upstream | None = None
        """The connection of the request upstream now (or of the last one); ``up_transport`` is its transport,
        so ``Relay``'s backpressure and half-close reach it."""
        """Only these balancers read a key: the others are not charged for building one."""
        self._membership_seen = self.cluster.stats.membership_change.value
        """The cluster's host list as last seen: when it changes, idle connections to hosts that left close."""
        self._delay_handle: asyncio.TimerHandle | None = None
        self._timeout_handle: asyncio.TimerHandle | None = None
        """One timer per connection, not one per request: arming and cancelling a loop timer costs more than
        the rest of the session's work on a request (measured: 5.5 of 36 us). It fires at most once per
        ``upstream_timeout`` and re-arms itself for whatever request is upstream then."""
        self._timeout_ns = int(config.upstream_timeout * 1e9)
        self._continue_sent = False
        """An interim 100 went to the client for the request being received."""
        self._client_done = False
        """The client closed its sending side: answer what it sent, then close."""
        self._pending_error: DecodeError | None = None
        """A request that could not be framed, answered (and the connection closed) once those before it are."""
        self._draining = False
        self._reading_paused = False
        self._signer: DynamoRequestSigner | None = None
        """SigV4 re-signing (``aws``): the listener's signer, looked up at the first request to sign."""
        self._signing_added: Counter | None = None

    # -- requests from the client ---------------------------------------------------------------------

    def on_open(self) -> None:
        for f in self.filters:
            f.on_connection_open(self.info)

    def on_downstream_data(self, data: bytes) -> None:
        if self.passthrough:
            self.send_upstream(data)
            return
        if self._pending_error is not None:
            return  # nothing after an unframeable request can be framed; the connection closes once it is answered
        try:
            requests = self.request_decoder.feed(data)
        except DecodeError as error:
            self._request_decode_failed(error)
            return
        if requests:
            self._continue_sent = False
            self._enqueue(requests)
        self._maybe_continue()

    def _enqueue(self, requests: list[HttpRequest]) -> None:
        for request in requests:
            self.queue.append(request)
            self.queued_bytes += len(request.raw)
        if self.queued_bytes > QUEUE_LIMIT and not self._reading_paused:
            self._reading_paused = True
            self.down_transport.pause_reading()
        self._pump()

    def _maybe_continue(self) -> None:
        """Tell a client waiting on ``Expect: 100-continue`` to send its body, once nothing is ahead of it
        (an interim response written earlier would be read as one to the request before)."""
        if (
            not self._continue_sent
            and not self.queue
            and self.in_flight is None
            and self._delay_handle is None
            and self.request_decoder.awaiting_continue
            and not self.closed
        ):
            self._continue_sent = True
            self.send_downstream(CONTINUE)

    def _pump(self) -> None:
        """Start queued requests until one goes upstream (or is delayed); local answers go at once."""
        queue = self.queue
        while queue and self.in_flight is None and self._delay_handle is None and not self.closed:
            request = queue.popleft()
            self.queued_bytes -= len(request.raw)
            op = DynamoOperation(self.info, parse_request(request.headers, request.body), _now_ns(), len(request.raw))
            self._run_request_filters(op, request, 0)
        if self.closed:
            return
        if self._reading_paused and self.queued_bytes <= QUEUE_LIMIT // 2:
            self._reading_paused = False
            self.down_transport.resume_reading()
        self._maybe_continue()
        self._settle()

    def _settle(self) -> None:
        """With nothing left in flight: answer a pending framing error, or close for the client's EOF or a
        drain. Called after every step that may have finished the connection's work."""
        if self.closed or self.busy:
            return
        error = self._pending_error
        if error is not None:
            self._pending_error = None
            status = _DECODE_ERROR_STATUS.get(error.reason, 400)
            body = f"meshproxy: {error}\n".encode()
            self.send_downstream(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, _reason(status), len(body), body)
            )
            self.close(local=True)
        elif self._client_done:
            self.close(local=False)
        elif self._draining:
            self.session_stats.cx_drain_close.inc()
            self.close(local=True)

    def _run_request_filters(self, op: DynamoOperation, request: HttpRequest, first: int) -> None:
        filters = self.filters
        for index in range(first, len(filters)):
            try:
                action = filters[index].on_request(op)
            except Exception as error:  # a filter's bug must not lose the client's request
                self._filter_failed(filters[index], error)
                continue
            if action is None:
                continue
            if isinstance(action, Delay):
                self._delay_handle = self.loop.call_later(action.seconds, self._release, op, request, index + 1)
                return
            if isinstance(action, LocalResponse):
                op.local_response = True
                self._answer_locally(op, request, action, filters[: index + 1])
                return
        if self.config.invalid_requests == "reject" and (reply := _rejection(op)) is not None:
            self.session_stats.rejected.inc()
            self._answer_locally(op, request, reply, filters)
            return
        self._forward(op, request)

    def _release(self, op: DynamoOperation, request: HttpRequest, next_filter: int) -> None:
        self._delay_handle = None
        if self.closed:
            return
        self._run_request_filters(op, request, next_filter)
        self._pump()

    def _forward(self, op: DynamoOperation, request: HttpRequest) -> None:
        cluster = self.cluster
        if not cluster.request_allowed():
            # Circuit breaker: answered here (503, which SDKs retry with back-off) instead of queueing.
            self._proxy_error(op, request, 503, "upstream overflow (circuit breaker)")
            return
        if cluster.stats.membership_change.value != self._membership_seen:
            self._close_removed()
        host = cluster.pick(_hash_key(op.request, self.config.partition_keys) if cluster.hashes_keys else None)
        conn = self._conn_to(host)
        if conn is None:
            self._proxy_error(op, request, 503, "upstream overflow (circuit breaker)")
            return
        timeout_ns = self._timeout_ns
        in_flight = self.in_flight = _InFlight(op, request, _now_ns() + timeout_ns if timeout_ns else 0, host)
        if timeout_ns and self._timeout_handle is None:
            self._timeout_handle = self.loop.call_later(timeout_ns / 1e9, self._check_timeout)
        stats = cluster.stats
        stats.upstream_rq_total.value += 1
        stats.upstream_rq_active.value += 1
        self._send(in_flight, conn)

    def _conn_to(self, host: Host) -> Http1Upstream | None:
        """This session's connection to ``host``: the kept-alive one, or a new one (dialling). None when the
        cluster is at ``max_connections`` even after closing one of this session's idle connections."""
        conn = self._conns.get(host.address)
        if conn is not None:
            if conn.host is host:
                return conn
            self._drop(conn)  # a host that left and came back at the same address is a new host
        cluster = self.cluster
        if cluster.stats.upstream_cx_active.value >= cluster.breakers.max_connections:
            busy = self.in_flight.conn if self.in_flight is not None else None
            idle = next((c for c in self._conns.values() if c is not busy), None)
            if idle is not None:
                self._drop(idle)  # an idle connection of ours gives its slot to the host asked for now
        if not cluster.connection_allowed():
            return None
        conn = Http1Upstream(
            self, cluster, host, Http1ResponseDecoder(self.config.max_header_size, self.config.max_body_size)
        )
        self._conns[host.address] = conn
        conn.dial()
        return conn

    def _close_removed(self) -> None:
        """Close idle connections to hosts that host discovery took out of the cluster (they are no longer
        picked; a request on one finishes first)."""
        self._membership_seen = self.cluster.stats.membership_change.value
        busy = self.in_flight.conn if self.in_flight is not None else None
        for conn in [c for c in self._conns.values() if c.host.removed and c is not busy]:
            self._drop(conn)

    def _send(self, in_flight: _InFlight, conn: Http1Upstream) -> None:
        """Write the request on ``conn`` (now, or once it is connected), accounted to its host."""
        host = in_flight.host
        in_flight.conn = conn
        host_stats = host.stats
        host_stats.rq_total.value += 1
        host_stats.rq_active.value += 1
        if host is not self.host:
            self.host = host
            self.info.upstream = host.name
        self._current = conn
        self.up_transport = conn.transport
        data = in_flight.request.raw
        if self.config.aws is not None:
            signed = self._sign_for(in_flight, host)
            if signed is None:
                return
            data = signed
        conn.decoder.expect_response(head=in_flight.request.method == b"HEAD")
        conn.write(data)

    def _sign_for(self, in_flight: _InFlight, host: Host) -> bytes | None:
        """``aws``: the request re-signed for ``host``, here because the signature covers the ``Host`` of the
        host picked for this very request (a request moved to another host is signed again). None when it
        cannot be signed (no credentials, a refresh failed at expiry): then it is answered 500."""
        aws = self.config.aws
        assert aws is not None
        cluster = self.cluster
        try:
            signer = self._signer
            if signer is None:
                signer = self._signer = signer_for(self.listener, aws)
            tls = cluster.tls is not None
            name = authority(host.address, tls=tls, override=aws.host, tls_name=cluster.server_hostname(host))
            signed = signer.sign(in_flight.request, name, tls=tls)
        except Exception as error:
            log.error(
                "listener %s: connection %d: cannot sign the request with SigV4 (%s: %s)",
                self.listener.name, self.connection_id, type(error).__name__, error,
            )
            self._fail_in_flight(500, f"cannot sign the request: {error}", self._signing_stat("signing_failed"))
            return None
        added = self._signing_added
        if added is None:
            added = self._signing_added = self._signing_stat("signing_added")
        added.inc()
        return signed

    def _signing_stat(self, name: str) -> Counter:
        """``dynamodb.<prefix>.aws_request_signing.<name>`` (Envoy's ``signing_added`` / ``signing_failed``)."""
        prefix = self.config.prefix
        return self.cluster.store.counter(
            f"dynamodb.{prefix}.aws_request_signing.{name}",
            prom=f"meshproxy_dynamodb_aws_request_{name}", labels={"prefix": prefix},
        )

    def send_upstream(self, data: bytes) -> None:
        """Passthrough only: bytes go on as they are, on the session's current connection."""
        conn = self._current
        if conn is not None:
            conn.write(data)

    def _answer_locally(
        self, op: DynamoOperation, request: HttpRequest, reply: LocalResponse, filters: list[DynamoFilter]
    ) -> None:
        response = HttpResponse(
            status=reply.status,
            reason=_reason(reply.status),
            version="1.1",
            headers=list(reply.headers),
            body=reply.body,
            raw=b"",
            keep_alive=True,
        )
        self._respond(op, request, response, filters)

    # -- responses from the server --------------------------------------------------------------------

    # Http1Upstream's callbacks: each names its connection, which may be the one carrying ``in_flight`` or
    # an idle one (whose bytes, EOF or loss concern no request).

    def conn_made(self, conn: Http1Upstream) -> None:
        if conn is self._current:
            self.up_transport = conn.transport
            if self.passthrough and self._down_eof and conn.transport is not None and conn.transport.can_write_eof():
                conn.transport.write_eof()

    def conn_pause_writing(self, conn: Http1Upstream) -> None:
        if conn is self._current:
            self.down_transport.pause_reading()

    def conn_resume_writing(self, conn: Http1Upstream) -> None:
        if conn is self._current:
            self.down_transport.resume_reading()

    def conn_data(self, conn: Http1Upstream, data: bytes) -> None:
        if self.passthrough:
            if conn is self._current:
                self.send_downstream(data)
            return
        in_flight = self.in_flight
        if in_flight is None or in_flight.conn is not conn:
            # Nothing was asked on it: a server speaking out of turn. Its bytes cannot belong to any request.
            self.session_stats.unexpected_response.inc()
            self._drop(conn)
            return
        in_flight.answering = True
        try:
            responses = conn.decoder.feed(data)
        except DecodeError as error:
            self._response_decode_failed(conn, error)
            return
        for response in responses:
            self._upstream_response(conn, response)
            if self.closed or self.passthrough:
                return

    def _upstream_response(self, conn: Http1Upstream, response: HttpResponse) -> None:
        in_flight = self.in_flight
        if in_flight is None or in_flight.conn is not conn:
            self.session_stats.unexpected_response.inc()
            self._drop(conn)
            return
        if response.interim:
            # 100 was answered by the proxy already; others (103 Early Hints) pass.
            if response.status != 100:
                self.send_downstream(response.raw)
            return
        self._finish_in_flight(in_flight)
        if not response.keep_alive:
            self._drop(conn)  # the server closes after this response: the next request to it re-dials
        parsed = self._respond(in_flight.op, in_flight.request, response, self.filters)
        self.cluster.report(in_flight.host, outcome_from_dynamo(parsed.status, parsed.error_type))
        self._pump()

    def _finish_in_flight(self, in_flight: _InFlight) -> None:
        self.in_flight = None
        self.cluster.stats.upstream_rq_active.value -= 1
        in_flight.host.stats.rq_active.value -= 1

    def _respond(
        self, op: DynamoOperation, request: HttpRequest, response: HttpResponse, filters: list[DynamoFilter]
    ) -> DynamoResponse:
        """Run the response filters and write the response to the client (changed only where it must be).
        Returns the response as parsed, before any filter changed it."""
        op.finished_ns = _now_ns()
        parsed = parse_response(response.status, response.headers, response.body, op.request)
        op.response = parsed
        op.response_size = len(response.raw) if response.raw else len(response.body)
        for f in reversed(filters):
            try:
                f.on_response(op)
            except Exception as error:  # still answer the client
                self._filter_failed(f, error)
        changed = op.response is not parsed and op.response is not None
        if changed:
            assert op.response is not None
            response = _with_body(response, op.response.status, op.response.body)
        # The last response of a draining connection says so, so the client does not send another request.
        closing = not request.keep_alive or (self._draining and not self.queue)
        self.send_downstream(_client_bytes(response, changed, closing))
        if closing and not self.closed:
            if self._draining:
                self.session_stats.cx_drain_close.inc()
            self.close(local=True)
        return parsed

    # -- upstream failures ----------------------------------------------------------------------------

    def conn_failed(self, conn: Http1Upstream, reason: str) -> None:
        """A connection could not be opened: the request waiting for it never left, so it is offered to
        another host while attempts and healthy hosts remain; otherwise it is answered 503."""
        host, current = conn.host, conn is self._current
        self._forget(conn)
        self.cluster.report(host, Outcome.LOCAL_ORIGIN_FAILURE)
        log.warning(
            "listener %s: connection %d from %s: cannot reach upstream %s: %s",
            self.listener.name, self.connection_id, self.info.client, host.name, reason,
        )
        in_flight = self.in_flight
        if in_flight is None or in_flight.conn is not conn or self.closed:
            if self.passthrough and current:
                self.close(local=True)
            return
        if not self._try_elsewhere(in_flight):
            self._fail_in_flight(503, f"upstream connect error: {reason}", self.session_stats.upstream_connect_error)

    def _try_elsewhere(self, in_flight: _InFlight) -> bool:
        """Send ``in_flight`` to another healthy host (its connection failed and it is safe to re-send);
        False when attempts or hosts ran out."""
        if in_flight.attempts >= CONNECT_ATTEMPTS or self.closed:
            return False
        failed = in_flight.host
        other = self._another_host(in_flight, failed)
        if other is None:
            return False
        conn = self._conn_to(other)
        if conn is None:
            return False
        in_flight.attempts += 1
        failed.stats.rq_active.value -= 1
        in_flight.host = other
        cluster = self.cluster
        cluster.store.counter(
            f"cluster.{cluster.name}.upstream_rq_retry", prom="meshproxy_cluster_upstream_rq_retry",
            labels={"cluster": cluster.name},
        ).inc()
        self._send(in_flight, conn)
        return True

    def _another_host(self, in_flight: _InFlight, failed: Host) -> Host | None:
        """A healthy host other than ``failed`` for a request that could not reach it: the balancer's own
        choice (with the request's key) if that differs, else any healthy one (a key's host being down,
        the request goes elsewhere, as ring hash would send it once health checking marks the host)."""
        cluster = self.cluster
        key = _hash_key(in_flight.op.request, self.config.partition_keys) if cluster.hashes_keys else None
        for _ in range(len(cluster.hosts)):
            host = cluster.pick(key)
            if host is not failed and host.healthy:
                return host
            key = None
        return next((h for h in cluster.hosts if h is not failed and h.healthy), None)

    def conn_eof(self, conn: Http1Upstream) -> bool:
        if self.passthrough:
            # A relay passes the half-close on and keeps the other direction open (``Relay.upstream_eof``).
            return conn is self._current and Relay.upstream_eof(self)
        in_flight = self.in_flight
        if in_flight is not None and in_flight.conn is conn:
            try:
                responses = conn.decoder.end_of_stream()  # completes a response framed by the close
            except DecodeError:
                responses = []
            for response in responses:
                self._upstream_response(conn, response)
        self._drop(conn, remote=True)
        return False

    def conn_lost(self, conn: Http1Upstream) -> None:
        current = conn is self._current
        self._forget(conn)
        if self.passthrough:
            if current and not self.closed:
                self.close(local=False)  # as a relay: the server went away, so does the client's connection
            return
        self._reset_in_flight(conn)

    def _forget(self, conn: Http1Upstream) -> None:
        if self._conns.get(conn.host.address) is conn:
            del self._conns[conn.host.address]
        if conn is self._current:
            self._current = None
            self.up_transport = None

    def _drop(self, conn: Http1Upstream, *, remote: bool = False) -> None:
        """Close ``conn`` and forget it; a request still waiting on it gets a 503."""
        self._forget(conn)
        conn.close(remote=remote)
        self._reset_in_flight(conn)

    def _reset_in_flight(self, conn: Http1Upstream) -> None:
        in_flight = self.in_flight
        if in_flight is not None and in_flight.conn is conn:
            self.cluster.report(in_flight.host, Outcome.LOCAL_ORIGIN_FAILURE)
            if not in_flight.answering and _is_read(in_flight.op.request) and self._try_elsewhere(in_flight):
                return
            self._fail_in_flight(
                503, "upstream connection closed before the response", self.session_stats.upstream_reset
            )

    def _check_timeout(self) -> None:
        self._timeout_handle = None
        in_flight = self.in_flight
        if in_flight is None or self.closed:
            return  # re-armed by the next request that goes upstream
        remaining = in_flight.deadline_ns - _now_ns()
        if remaining > 0:
            self._timeout_handle = self.loop.call_later(remaining / 1e9, self._check_timeout)
            return
        self.session_stats.upstream_rq_timeout.inc()
        self.cluster.report(in_flight.host, Outcome.LOCAL_ORIGIN_FAILURE)
        self._finish_in_flight(in_flight)  # answered below; the connection that owes the response cannot be reused
        self._drop(in_flight.conn)
        self._proxy_error(in_flight.op, in_flight.request, 504, "upstream request timeout")
        self._pump()

    def _fail_in_flight(self, status: int, text: str, counter: Counter) -> None:
        in_flight = self.in_flight
        if in_flight is None or self.closed:
            return
        self._finish_in_flight(in_flight)
        counter.inc()
        self._proxy_error(in_flight.op, in_flight.request, status, text)
        self._pump()

    def _proxy_error(self, op: DynamoOperation, request: HttpRequest, status: int, text: str) -> None:
        """Answer a request the upstream did not: a plain-text status, as Envoy answers (SDKs retry 5xx)."""
        body = f"meshproxy: {text}\n".encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        response = HttpResponse(status, _reason(status), "1.1", headers, body, b"", keep_alive=True)
        self._respond(op, request, response, self.filters)

    # -- bad input ------------------------------------------------------------------------------------

    def _request_decode_failed(self, error: DecodeError) -> None:
        self.session_stats.decoding_error.inc()
        decoder = self.request_decoder
        policy = self.config.on_decode_error
        log.warning(
            "listener %s: connection %d from %s: undecodable request (%s); %s",
            self.listener.name, self.connection_id, self.info.client, error,
            "passing the rest of the connection through" if policy == "passthrough" else "answering and closing",
        )
        before = [m for m in decoder.decoded_before_error() if isinstance(m, HttpRequest)]
        if policy == "passthrough":
            self._start_passthrough(before, decoder.unconsumed())
            return
        # The bad request is answered in its turn, after the good ones before it; then the connection ends.
        self._pending_error = error
        self.down_transport.pause_reading()  # nothing after it can be framed
        if before:
            self._enqueue(before)
        else:
            self._settle()

    def _response_decode_failed(self, conn: Http1Upstream, error: DecodeError) -> None:
        self.session_stats.decoding_error.inc()
        log.warning(
            "listener %s: connection %d: undecodable response from upstream %s (%s); answering 502",
            self.listener.name, self.connection_id, conn.host.name, error,
        )
        in_flight = self.in_flight
        if in_flight is not None:
            self._finish_in_flight(in_flight)
        self._drop(conn)
        if in_flight is not None:
            self._proxy_error(in_flight.op, in_flight.request, 502, f"invalid response from upstream: {error}")
            self._pump()

    def _start_passthrough(self, before: list[HttpRequest], leftover: bytes) -> None:
        """Stop decoding: what is queued and what follows goes upstream as it is, and answers come back as
        they are (the connection becomes as opaque as a TCP relay; its requests are no longer counted)."""
        self.passthrough = True
        if self._delay_handle is not None:
            self._delay_handle.cancel()
            self._delay_handle = None
        data = b"".join([*(r.raw for r in self.queue), *(r.raw for r in before), leftover])
        self.queue.clear()
        self.queued_bytes = 0
        if self.in_flight is not None:
            self._finish_in_flight(self.in_flight)  # its response comes back as bytes on its connection
        for conn in list(self._conns.values()):
            if conn is not self._current:
                self._drop(conn)
        if self._current is None:
            if not self.cluster.connection_allowed():
                self.close(local=True)
                return
            host = self.cluster.pick()
            self.host = host
            self.info.upstream = host.name
            self._current = self._conns[host.address] = Http1Upstream(
                self, self.cluster, host, Http1ResponseDecoder(self.config.max_header_size, self.config.max_body_size)
            )
            self._current.dial()
        if data:
            self.send_upstream(data)

    # -- filters, drain, close ------------------------------------------------------------------------

    def _filter_failed(self, dynamo_filter: DynamoFilter, error: Exception) -> None:
        self.session_stats.filter_error.inc()
        log.error(
            "listener %s: connection %d: filter %s failed (%s: %s); the message is forwarded unchanged",
            self.listener.name, self.connection_id, type(dynamo_filter).__name__, type(error).__name__, error,
            exc_info=True,
        )

    def eof_received(self) -> bool:
        """The client finished sending: answer what it sent, then close (HTTP/1.1 has no half-open use)."""
        if self.passthrough:
            return super().eof_received()
        if self.request_decoder.buffered and self._pending_error is None:
            self.session_stats.decoding_error.inc()  # a request cut short: it can never be answered
        self._client_done = True
        self._settle()
        return not self.closed

    @property
    def busy(self) -> bool:
        if self.passthrough:
            return False
        return bool(self.queue) or self.in_flight is not None or self._delay_handle is not None

    def drain(self) -> None:
        self._draining = True
        self._settle()

    def on_close(self, *, local: bool) -> None:
        if self._delay_handle is not None:
            self._delay_handle.cancel()
            self._delay_handle = None
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None
        in_flight = self.in_flight
        if in_flight is not None:
            self._finish_in_flight(in_flight)
        active = (1 if in_flight is not None else 0) + len(self.queue)
        for f in self.filters:
            f.on_connection_close(self.info, active_operations=active, local=local)
        self.queue.clear()
        conns = list(self._conns.values())
        self._conns.clear()
        self._current = None
        self.up_transport = None  # closed here, with the others, not again by ``Relay.close``
        for conn in conns:
            conn.close()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def _client_bytes(response: HttpResponse, changed: bool, closing: bool) -> bytes:
    """The response as the client gets it: its own bytes unless something about it has to differ (a changed
    body, or the connection's fate: the server's keep-alive decision is not the client connection's)."""
    if not changed and response.raw and response.keep_alive != closing:
        return response.raw
    headers = [(k, v) for k, v in response.headers if k.lower() not in _HOP_BY_HOP]
    if closing:
        headers.append((b"Connection", b"close"))
    return encode(replace(response, headers=headers))


def _with_body(response: HttpResponse, status: int, body: bytes) -> HttpResponse:
    """``response`` carrying a body a filter changed, with ``x-amz-crc32`` fixed: botocore checks it and
    retries a response whose CRC does not match (the framing is redone by ``encode``)."""
    headers = [
        (k, str(crc32_of(body)).encode()) if k.lower() == b"x-amz-crc32" else (k, v) for k, v in response.headers
    ]
    return replace(response, status=status, reason=_reason(status), headers=headers, body=body, raw=b"")


def _rejection(op: DynamoOperation) -> LocalResponse | None:
    """DynamoDB's own answer to a request that is not one of its requests (``invalid_requests: reject``)."""
    request = op.request
    if request.operation is None:
        status, headers, body = error_response(
            "UnknownOperationException", "missing or unknown X-Amz-Target (rejected by meshproxy)"
        )
    elif request.invalid_body:
        status, headers, body = error_response(
            "SerializationException", "the request body is not a JSON object (rejected by meshproxy)"
        )
    else:
        return None
    return LocalResponse(status, tuple(headers), body)


def _hash_key(request: DynamoRequest, partition_keys: dict[str, str]) -> bytes | None:
    """What ``ring_hash`` and ``maglev`` hash for a request: its table, plus, for a table listed in
    ``partition_keys``, the partition key value of its ``Key`` (``GetItem``, ``UpdateItem``, ``DeleteItem``)
    or ``Item`` (``PutItem``), so one item's requests meet on one host. None (any host) without a table."""
    tables = request.tables
    if len(tables) != 1:
        return "\x00".join(tables).encode() if tables else None
    table = tables[0]
    attribute = partition_keys.get(table)
    document = request.document
    if attribute is not None and document is not None and request.operation is not None:
        where = _KEY_ATTRIBUTE.get(request.operation)
        key = document.get(where) if where is not None else None
        value = key.get(attribute) if type(key) is dict else None
        if type(value) is dict and len(value) == 1:
            ((kind, scalar),) = value.items()
            if type(scalar) is str:  # S, N (as text), B (base64): the value as sent
                return f"{table}\x00{kind}\x00{scalar}".encode()
    return table.encode()


def _is_read(request: DynamoRequest) -> bool:
    """Whether sending ``request`` twice is harmless (see ``_READS``)."""
    operation = request.operation
    return operation is not None and (
        operation in _READS or operation.startswith("Describe") or operation.startswith("List")
    )
