"""The Mongo proxy session: codec + filter chain + relay, for one client connection.

Requests are decoded as they arrive, turned into ``MongoOperation`` objects, passed through the filters and
forwarded as whole messages: the original bytes when no filter changed anything, ``encode(new)`` when one
did. Replies are matched to their operation by ``responseTo``; a reply flagged ``moreToCome`` (exhaust
cursors, streamed ``hello``) keeps its operation open under the reply's own ``requestID``, which is what
the next streamed reply answers.

Only whole messages are forwarded, never a prefix: a filter may still rewrite a message (the ``hello``
topology rewrite) or refuse it, and a malformed message is never half-delivered.

Order is kept per connection: when a filter delays a request, the connection's later requests wait
behind it, as they would at a slow server.

Upstream, a session has one connection ("leg") per host it has sent to. With ``balance: operation`` each
request goes to the host ``MongoRouter`` decides (balanced, or the host that holds its cursor or
transaction); with ``balance: connection``, or a cluster of one host, everything goes to the home leg dialled
at accept. Each leg decodes its own replies, since each is its own byte stream. When a host cannot be
reached, requests not yet sent move to another host (they never left); requests in flight on a leg that
dies get ``HostUnreachable`` (code 6), which drivers retry for reads and retryable writes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from typing import TYPE_CHECKING

from meshproxy.cluster.outlier import Outcome, outcome_from_mongo
from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.mongo import MongoDecoder, MongoMessage, OpMsg, encode, error_reply
from meshproxy.filters.mongo.api import Delay, LocalReply, MongoFilter, MongoOperation
from meshproxy.transport.mongo_routing import AUTH_COMMANDS, HOME_COMMANDS, Via, retryable
from meshproxy.transport.relay import BACKLOG_LIMIT, Relay, connect_failed, open_upstream

if TYPE_CHECKING:
    from meshproxy.cluster import Host
    from meshproxy.transport.listener import ListenerRuntime

log = logging.getLogger("meshproxy.mongo")

_now_ns = time.monotonic_ns
_OVERFLOW_REQUEST_IDS = itertools.count(0x4D4F0000)


def _join(chunks: list[bytes]) -> bytes:
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class MongoLeg(asyncio.Protocol):
    """One upstream connection of a session, to one host, with its own reply decoder and pending requests."""

    __slots__ = (
        "decoder", "host", "lost", "name", "pending", "queue", "queued_bytes", "session", "stream_key",
        "stream_origin", "task", "transport",
    )  # fmt: skip

    def __init__(self, session: MongoSession, host: Host) -> None:
        self.session = session
        self.host = host
        self.name = host.name
        """``ip:port``, made once: every operation sent on the leg is labelled with it."""
        self.transport: asyncio.Transport | None = None
        # Replies come from the upstream this proxy chose: their framing is checked, and filters validate
        # the parts of a reply they read (a reply summary decodes it), so the top-level walk is skipped.
        self.decoder = MongoDecoder(max_message_size=session.config.max_message_size, validate_documents=False)
        self.pending: dict[int, MongoOperation] = {}
        self.queue: list[tuple[MongoOperation | None, bytes]] = []
        """What waits for the connection: (operation, bytes), or (None, undecoded passthrough bytes)."""
        self.queued_bytes = 0
        self.stream_key: dict[int, int] = {}
        """Streamed replies (``moreToCome``): the requestID that opened the stream -> the key it is pending
        under now (the last reply's requestID). See ``MongoSession._track_stream``."""
        self.stream_origin: dict[int, int] = {}
        """The reverse: the key a stream is pending under -> the requestID that opened it."""
        self.task: asyncio.Task[None] | None = None
        self.lost = False

    def send(self, op: MongoOperation | None, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            self.session.cluster_stats_tx.value += len(data)
            transport.write(data)
            return
        self.queue.append((op, data))
        self.queued_bytes += len(data)
        self.session.queued_changed(len(data))

    # -- asyncio callbacks ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        session = self.session
        session.active = True
        session.cluster_stats_rx.value += len(data)
        session.on_leg_data(self, data)

    def eof_received(self) -> bool:
        return False  # a server does not half-close a Mongo connection: treat it as gone

    def pause_writing(self) -> None:
        self.session.down_transport.pause_reading()

    def resume_writing(self) -> None:
        self.session.down_transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.leg_lost(self)


class MongoSession(Relay):
    """A Mongo client connection through the proxy."""

    kind = "mongo"
    dial_at_accept = False  # the home leg is dialled in ``on_open``

    def __init__(self, listener: ListenerRuntime, connection_id: int) -> None:
        super().__init__(listener, connection_id)
        config, stats = listener.mongo_config, listener.mongo_stats
        assert config is not None, "a Mongo session on a listener of another protocol"
        assert stats is not None
        assert listener.mongo_router is not None
        self.config = config
        self.request_decoder = MongoDecoder(max_message_size=config.max_message_size)
        self.filters: list[MongoFilter] = listener.mongo_filters
        self.mongo_stats = stats
        self.router = listener.mongo_router
        self.balance = config.balance == "operation"
        self.legs: dict[tuple[str, int], MongoLeg] = {}
        self.home: MongoLeg | None = None
        """The leg for handshakes, monitoring and authentication (and everything, when not balancing)."""
        self.pinned = False
        """The client authenticated on its home leg: everything stays there."""
        self._queued = 0
        self.passthrough = False
        """Set after a decode error under the ``passthrough`` policy: bytes flow untouched from then on."""
        self._held: list[MongoMessage] | None = None
        """Requests waiting behind a delayed one (None when nothing is delayed)."""
        self._held_passthrough: list[bytes] = []
        """Undecoded bytes (``passthrough``) that arrived while requests were held: they go after them."""
        self._eof_after_held = False
        """The client half-closed while requests were held: act on the EOF once they are sent."""
        self._client_eof = False
        self._delay_handle: asyncio.TimerHandle | None = None
        self._draining = False
        self._retrying: dict[int, tuple[asyncio.TimerHandle, MongoOperation]] = {}
        """Operations waiting out their retry back-off, by id()."""

    # -- legs -----------------------------------------------------------------------------------------

    def on_open(self) -> None:
        for f in self.filters:
            f.on_connection_open(self.info)
        if not self.cluster.connection_allowed():
            log.warning(
                "listener %s: connection %d from %s: cluster %s at max_connections; closing",
                self.listener.name, self.connection_id, self.info.client, self.cluster.name,
            )
            self.close(local=True)
            return
        self.home = self._open_leg(self.cluster.pick())

    def _open_leg(self, host: Host) -> MongoLeg:
        leg = MongoLeg(self, host)
        self.legs[host.address] = leg
        self.host = self.host or host
        leg.task = self.loop.create_task(self._connect_leg(leg))
        return leg

    async def _connect_leg(self, leg: MongoLeg) -> None:
        try:
            # Request outcomes are reported per reply (when balancing); a bare relay reports the connect.
            transport = await open_upstream(self.cluster, leg.host, lambda: leg, report_success=not self.balance)
        except OSError as exc:
            self._leg_connect_failed(leg, exc.strerror or str(exc) or type(exc).__name__)
            return
        if self.closed or leg.lost:
            transport.close()
            return
        leg.transport = transport
        self.info.upstream = self.info.upstream or leg.host.name
        if leg.queue:
            data = b"".join(chunk for _, chunk in leg.queue)
            leg.queue.clear()
            self.queued_changed(-leg.queued_bytes)
            leg.queued_bytes = 0
            self.cluster_stats_tx.value += len(data)
            transport.write(data)
        if self._client_eof and self.passthrough and leg is self.home and transport.can_write_eof():
            transport.write_eof()

    def queued_changed(self, delta: int) -> None:
        """Bytes waiting for legs to connect: past ``BACKLOG_LIMIT`` the client is not read (bounded memory)."""
        before = self._queued
        self._queued += delta
        if before <= BACKLOG_LIMIT < self._queued:
            self.down_transport.pause_reading()
        elif self._queued <= BACKLOG_LIMIT < before and not self.closed:
            self.down_transport.resume_reading()

    def _leg_for(self, op: MongoOperation) -> MongoLeg | None:
        """The leg ``op`` goes to (dialling it if needed); None when the circuit breaker refuses a new one."""
        command = op.command
        if command in HOME_COMMANDS and not self.pinned and self._authenticates(op, command):
            self.pinned = True
        cluster = self.cluster
        if not self.balance or self.pinned or self.passthrough or len(cluster.hosts) == 1:
            return self.home or self._home_leg()
        route = self.router.route(op, cluster)
        op.routing = route
        stats = self.mongo_stats
        via = route.via
        if via is Via.BALANCED:
            stats.route_balanced.value += 1
        elif via is Via.CURSOR:
            stats.route_cursor.value += 1
        elif via is Via.TRANSACTION:
            stats.route_transaction.value += 1
        else:
            stats.route_home.value += 1
        host = route.host
        if host is None:
            return self._home_leg()
        if route.movable and self.router.avoided(host.address, self.loop.time()):
            host = self._other_host(exclude=host.address) or host
        leg = self.legs.get(host.address)
        if leg is not None:
            return leg
        if not cluster.connection_allowed():
            return None
        return self._open_leg(host)

    @staticmethod
    def _authenticates(op: MongoOperation, command: str) -> bool:
        if command in AUTH_COMMANDS:
            return True
        message = op.plain_request
        return isinstance(message, OpMsg) and b"speculativeAuthenticate" in message.body

    def _home_leg(self) -> MongoLeg | None:
        home = self.home
        if home is not None:
            return home
        host = self.cluster.pick()
        if self.router.avoided(host.address, self.loop.time()):
            host = self._other_host(exclude=host.address) or host
        home = self.legs.get(host.address)
        if home is None:
            if not self.cluster.connection_allowed():
                return None
            home = self._open_leg(host)
        self.home = home
        return home

    def _other_host(self, exclude: tuple[str, int]) -> Host | None:
        """Another host than ``exclude`` (and than hosts that failed lately), from the cluster's balancer."""
        now = self.loop.time()
        router = self.router
        cluster = self.cluster
        for _ in range(2 * len(cluster.hosts)):
            host = cluster.pick()
            if host.address != exclude and not router.avoided(host.address, now):
                return host
        for host in cluster.hosts:
            if host.address != exclude and host.healthy and not router.avoided(host.address, now):
                return host
        return None

    def _leg_connect_failed(self, leg: MongoLeg, reason: str) -> None:
        """No connection to the leg's host: what waited for it moves to another host, when it may."""
        connect_failed(self.cluster, leg.host)
        self.router.avoid(leg.host.address, self.loop.time())
        if self.closed or leg.lost:
            return
        was_home = leg is self.home
        other = self._other_host(exclude=leg.host.address)
        queue = leg.queue
        log.warning(
            "listener %s: connection %d from %s: cannot reach upstream %s: %s%s",
            self.listener.name, self.connection_id, self.info.client, leg.host.name, reason,
            f"; moving its requests to {other.name}" if other is not None and queue else "",
        )  # fmt: skip
        if was_home and (other is None or self.pinned or self.passthrough):
            # Nowhere to go, or state that cannot move: the client sees the server gone, as it would directly.
            self.close(local=True)
            return
        self._drop_leg(leg)
        leg.queue = []
        self.queued_changed(-leg.queued_bytes)
        leg.queued_bytes = 0
        if was_home:
            self.home = None
        for op, data in queue:
            assert op is not None  # undecoded bytes only exist in passthrough, closed above
            if other is None or (op.routing is not None and not op.routing.movable):
                self._fail_operation(leg, op, f"upstream {leg.host.name} unreachable: {reason}")
                continue
            if leg.pending.pop(op.request.header.request_id, None) is not None:
                self.requests_finished(1, leg.host)
            self.mongo_stats.route_repick.value += 1
            target = self._home_leg() if was_home else (self.legs.get(other.address) or self._open_leg(other))
            if target is None:
                self._fail_operation(None, op, "upstream overflow: circuit breaker max_connections")
                continue
            self._send_on(target, op, data)

    def leg_lost(self, leg: MongoLeg) -> None:
        """A leg's connection closed (the server went away, or the proxy closed it)."""
        if leg.transport is not None:
            self.cluster.stats.upstream_cx_active.dec()
            leg.host.stats.cx_active.dec()
            if not self.closed:
                self.cluster.stats.upstream_cx_destroy_remote.inc()
        leg.transport = None
        if self.closed or leg.lost:
            return
        pending = list(leg.pending.values())
        if pending:
            self.cluster.report(leg.host, Outcome.LOCAL_ORIGIN_FAILURE)
            # The driver retries what failed here at once, on any pooled connection: send it elsewhere.
            self.router.avoid(leg.host.address, self.loop.time())
        was_home = leg is self.home
        home_bound = any(op.routing is None or op.routing.via is Via.HOME for op in pending)
        if self.passthrough or self.pinned or home_bound or not self.balance:
            # The connection's state (authentication, a handshake or monitoring stream, undecoded bytes)
            # was on that server: the client must see the server gone, as it would without the proxy.
            self.close(local=False)
            return
        self._drop_leg(leg)
        if was_home:
            self.home = None
        for op in pending:
            if not self._retry(leg, op):
                self._fail_operation(leg, op, f"upstream {leg.host.name} closed the connection")
        self._maybe_finish_after_eof()

    def _retry(self, leg: MongoLeg, op: MongoOperation) -> bool:
        """Schedule ``op`` again on another host, if the listener's ``retry`` allows it (see ``retryable``)."""
        policy = self.config.retry
        if policy is None or not retryable(op):
            return False
        stats = self.listener.mongo_retry_stats
        route = op.routing
        if route.attempts >= policy.max_retries:
            stats.limit_exceeded.inc()
            return False
        cluster = self.cluster
        in_flight = cluster.stats.upstream_rq_active.value
        allowed = max(policy.min_retry_concurrency, policy.budget_percent / 100 * in_flight)
        if self.router.retries_in_flight + 1 > min(allowed, cluster.breakers.max_retries):
            stats.overflow.inc()
            return False
        if self._other_host(exclude=leg.host.address) is None:
            return False
        if leg.pending.pop(op.request.header.request_id, None) is not None:
            self.requests_finished(1, leg.host)
        route.attempts += 1
        self.router.retries_in_flight += 1
        stats.retry.inc()
        delay = random.random() * policy.backoff * 2 ** (route.attempts - 1)  # full jitter, as Envoy's
        self._retrying[id(op)] = (self.loop.call_later(delay, self._resend, op), op)
        return True

    def _resend(self, op: MongoOperation) -> None:
        self._retrying.pop(id(op), None)
        self.router.retries_in_flight -= 1
        if self.closed:
            return
        attempts = op.routing.attempts
        leg = self._leg_for(op)  # routed afresh: the lost host is avoided for a while (router.avoid)
        op.routing.attempts = attempts
        if leg is None:
            self._fail_operation(None, op, "upstream overflow: circuit breaker max_connections")
            return
        request = op.request
        self._send_on(leg, op, encode(request) if op.request_replaced else request.raw)

    def _drop_leg(self, leg: MongoLeg) -> None:
        leg.lost = True
        if self.legs.get(leg.host.address) is leg:
            del self.legs[leg.host.address]

    def _fail_operation(self, leg: MongoLeg | None, op: MongoOperation, reason: str) -> None:
        """Answer ``op`` with HostUnreachable (code 6): drivers retry it for reads and retryable writes."""
        if leg is not None and leg.pending.pop(op.request.header.request_id, None) is not None:
            self.requests_finished(1, leg.host)
        self.mongo_stats.upstream_lost_reply.value += 1
        reply = error_reply(
            op.plain_request, code=6, code_name="HostUnreachable", errmsg=f"{reason} (meshproxy)",
            request_id=next(_OVERFLOW_REQUEST_IDS) & 0x7FFFFFFF,
        )  # fmt: skip
        self._answer_locally(op, LocalReply(reply), len(self.filters) - 1)

    def close_upstream(self, *, local: bool, abort: bool) -> None:
        for leg in list(self.legs.values()):
            leg.lost = True
            if leg.task is not None and not leg.task.done():
                leg.task.cancel()
            transport = leg.transport
            if transport is not None:
                if local:
                    self.cluster.stats.upstream_cx_destroy_local.inc()
                if abort:
                    transport.abort()
                else:
                    transport.close()
        self.legs.clear()
        self.home = None

    def pause_writing(self) -> None:
        for leg in self.legs.values():
            if leg.transport is not None:
                leg.transport.pause_reading()

    def resume_writing(self) -> None:
        for leg in self.legs.values():
            if leg.transport is not None:
                leg.transport.resume_reading()

    # -- requests -------------------------------------------------------------------------------------

    def on_downstream_data(self, data: bytes) -> None:
        if self.passthrough:
            self._send_passthrough_upstream(data)
            return
        try:
            messages = self.request_decoder.feed(data)
        except DecodeError as error:
            self._request_decode_failed(error)
            return
        if messages:
            self._forward_requests(messages)

    def _forward_requests(self, messages: list[MongoMessage]) -> None:
        if self._held is not None:
            self._held.extend(messages)
            return
        self._process_requests(messages)

    def _process_requests(self, messages: list[MongoMessage]) -> None:
        now = _now_ns()
        for index, message in enumerate(messages):
            op = MongoOperation(self.info, message, now)
            delay = self._run_request_filters(op, 0)
            if delay is not None:
                self._hold(op, delay, messages[index + 1 :])
                return

    def _run_request_filters(self, op: MongoOperation, first: int) -> tuple[int, float] | None:
        """Run filters ``first..`` on ``op``; forward, answer locally, or return (filter index, delay)."""
        filters = self.filters
        for index in range(first, len(filters)):
            try:
                action = filters[index].on_request(op)
            except Exception as error:  # a filter's bug must not lose the client's operation
                self._filter_failed(filters[index], error)
                continue
            if action is None:
                continue
            if isinstance(action, Delay):
                return index, action.seconds
            if isinstance(action, LocalReply):
                self._answer_locally(op, action, index)
                return None
        if op.expects_reply and not op.is_monitoring and not self.cluster.request_allowed():
            # Circuit breaker: a retryable network-class error the driver knows (HostUnreachable), so it backs
            # off or retries elsewhere; handshakes and monitoring pass, so its view of the server stays true.
            self._fail_operation(None, op, "upstream overflow: circuit breaker max_requests")
            return None
        leg = self._leg_for(op)
        if leg is None:
            self.cluster.stats.upstream_cx_overflow.inc()
            self._fail_operation(None, op, "upstream overflow: circuit breaker max_connections")
            return None
        request = op.request
        self._send_on(leg, op, encode(request) if op.request_replaced else request.raw)
        return None

    def _send_on(self, leg: MongoLeg, op: MongoOperation, data: bytes) -> None:
        if op.expects_reply:
            leg.pending[op.request.header.request_id] = op
            self.requests_started(leg.host)
        op.upstream = leg.name
        transport = leg.transport
        if transport is not None:  # the common case, inlined: this runs for every operation
            self.cluster_stats_tx.value += len(data)
            transport.write(data)
        else:
            leg.send(op, data)

    def _answer_locally(self, op: MongoOperation, action: LocalReply, index: int) -> None:
        op.response = action.reply
        op.local_reply = True
        op.replies = 1
        op.finished_ns = _now_ns()
        self._run_response_filters(op, self.filters[: index + 1])
        response = op.response
        assert response is not None
        self.send_downstream(encode(response) if op.response_replaced else response.raw)
        self._maybe_drain_close()

    def _hold(self, op: MongoOperation, position: tuple[int, float], rest: list[MongoMessage]) -> None:
        filter_index, seconds = position
        self._held = list(rest)
        self._delay_handle = self.loop.call_later(seconds, self._release, op, filter_index + 1)

    def _release(self, op: MongoOperation, next_filter: int) -> None:
        """A delay elapsed: finish ``op``'s chain, then the requests that queued behind it."""
        self._delay_handle = None
        if self.closed:
            return
        held, self._held = self._held or [], None
        position = self._run_request_filters(op, next_filter)
        if position is not None:
            self._hold(op, position, held)
        elif held:
            self._process_requests(held)
        if self._held is None and self._held_passthrough:
            data = b"".join(self._held_passthrough)
            self._held_passthrough.clear()
            self._send_passthrough_upstream(data)
        if self._held is None and self._eof_after_held:
            self._eof_after_held = False
            self._client_finished()
        self._maybe_drain_close()

    # -- replies --------------------------------------------------------------------------------------

    def on_leg_data(self, leg: MongoLeg, data: bytes) -> None:
        if self.passthrough:
            self.send_downstream(data)
            return
        try:
            messages = leg.decoder.feed(data)
        except DecodeError as error:
            self._reply_decode_failed(leg, error)
            return
        if messages:
            self._process_replies(leg, messages)

    def _process_replies(self, leg: MongoLeg, messages: list[MongoMessage]) -> None:
        now = _now_ns()
        pending = leg.pending
        cluster = self.cluster
        out: list[bytes] = []
        for message in messages:
            header = message.header
            key = header.response_to
            op = pending.pop(key, None)
            if op is None and leg.stream_key:
                key = leg.stream_key.get(key, key)
                op = pending.pop(key, None)
            if op is None:
                self.mongo_stats.unexpected_reply.inc()
                out.append(message.raw)
                continue
            op.response = message
            op.response_replaced = False
            op.replies += 1
            op.finished_ns = now
            if op.routing is not None:
                summary = self.router.on_reply(op, leg.host)
                # A handshake's success says the server is up, not that it serves operations: only
                # operations count for outlier detection (health checking covers the rest).
                if summary is not None and cluster.outlier is not None and not op.is_monitoring:
                    cluster.report(leg.host, outcome_from_mongo(summary.ok, summary.code))
                if op.routing.attempts and summary is not None and summary.ok:
                    self.listener.mongo_retry_stats.success.inc()
            self._run_response_filters(op, self.filters)
            more_to_come = op.more_to_come
            if more_to_come or leg.stream_origin:
                self._track_stream(leg, key, header.request_id, more_to_come)
            if more_to_come:
                pending[header.request_id] = op
            else:
                self.requests_finished(1, leg.host)
            response = op.response
            out.append(encode(response) if op.response_replaced else response.raw)
        self.send_downstream(_join(out))
        if self._draining:
            self._maybe_drain_close()
        if self._client_eof:
            self._maybe_finish_after_eof()

    @staticmethod
    def _track_stream(leg: MongoLeg, matched_key: int, request_id: int, more_to_come: bool) -> None:
        """Remember where a stream of replies started, so that its next reply is matched either way.

        The wire protocol says each reply after a ``moreToCome`` reply answers the previous reply's
        requestID. Some servers (SecantusDB 0.7, for exhaust cursors and streamed ``hello``) keep answering
        the requestID that opened the stream instead. Unmatched, such replies would pass unseen: no stats,
        and a streamed ``hello`` would reach the driver unrewritten, sending it to the server's own address.
        """
        origin = leg.stream_origin.pop(matched_key, matched_key)
        if more_to_come:
            leg.stream_origin[request_id] = origin
            leg.stream_key[origin] = request_id
        else:
            leg.stream_key.pop(origin, None)

    def _run_response_filters(self, op: MongoOperation, filters: list[MongoFilter]) -> None:
        for f in reversed(filters):
            try:
                f.on_response(op)
            except Exception as error:  # e.g. a reply whose BSON is broken deep inside: still forward it
                self._filter_failed(f, error)

    # -- errors, drain, close -------------------------------------------------------------------------

    def _filter_failed(self, mongo_filter: MongoFilter, error: Exception) -> None:
        self.mongo_stats.filter_error.inc()
        log.error(
            "listener %s: connection %d: filter %s failed (%s: %s); the message is forwarded unchanged",
            self.listener.name, self.connection_id, type(mongo_filter).__name__, type(error).__name__, error,
            exc_info=not isinstance(error, DecodeError),
        )

    def _decode_failed(self, error: DecodeError, direction: str, leg: MongoLeg | None) -> bool:
        """Count and log; True when the policy is ``passthrough`` and this connection can honour it.

        Passing bytes through undecoded needs a single upstream byte stream: a connection with operations in
        flight on another host's leg cannot interleave undecoded bytes with them, so it is closed instead."""
        self.mongo_stats.decoding_error.inc()
        policy = self.config.on_decode_error
        keep = leg if leg is not None else self._home_leg()
        busy_elsewhere = any(other.pending for other in self.legs.values() if other is not keep)
        passthrough = policy == "passthrough" and keep is not None and not busy_elsewhere
        log.warning(
            "listener %s: connection %d from %s: undecodable %s (%s); %s",
            self.listener.name, self.connection_id, self.info.client, direction, error,
            "passing the rest of the connection through" if passthrough
            else "closing it" if policy == "close"
            else "closing it: operations are in flight on another host, so bytes cannot pass through",
        )  # fmt: skip
        if not passthrough:
            self.close(local=True)
            return False
        assert keep is not None
        for other in list(self.legs.values()):
            if other is not keep:
                self._drop_leg(other)
                if other.transport is not None:
                    other.transport.close()
                elif other.task is not None:
                    other.task.cancel()
        self.home = keep
        return True

    def _request_decode_failed(self, error: DecodeError) -> None:
        if not self._decode_failed(error, "request", None):
            return
        # Good messages that arrived in the same read as the bad one go their normal way first; then this
        # connection stops decoding both ways and the undecoded bytes pass on as they are.
        decoded = self.request_decoder.decoded_before_error()
        if decoded:
            self._forward_requests(decoded)
        self.passthrough = True
        leftover = self.request_decoder.unconsumed()
        if leftover:
            self._send_passthrough_upstream(leftover)

    def _reply_decode_failed(self, leg: MongoLeg, error: DecodeError) -> None:
        if not self._decode_failed(error, "reply", leg):
            return
        decoded = leg.decoder.decoded_before_error()
        if decoded:
            self._process_replies(leg, decoded)
        self.passthrough = True
        leftover = leg.decoder.unconsumed()
        if leftover:
            self.send_downstream(leftover)

    def _send_passthrough_upstream(self, data: bytes) -> None:
        """Undecoded client bytes keep their place behind requests a fault delay still holds."""
        if self._held is not None:
            self._held_passthrough.append(data)
            return
        home = self._home_leg()
        if home is None:
            self.close(local=True)
            return
        home.send(None, data)

    def eof_received(self) -> bool:
        """The client finished sending. Bytes still buffered are a message that will never be complete:
        a truncated message is bad input like any other (one ``decoding_error``, the policy applies).
        Requests a fault delay still holds go upstream before the EOF is acted on."""
        if not self.passthrough and self.request_decoder.buffered:
            held = self.request_decoder.buffered
            error = DecodeError("truncated", f"the client closed its side {held} bytes into a message")
            self._request_decode_failed(error)
            if self.closed:
                return False
        if self._held is not None:
            # Acted on now, the EOF would overtake the held requests: the server would never see them.
            self._eof_after_held = True
            return True
        self._client_finished()
        return not self.closed

    def _client_finished(self) -> None:
        """After the client's EOF: in passthrough the EOF goes on (the server decides); otherwise the
        connection closes once every pending reply has been delivered."""
        self._client_eof = True
        if self.passthrough:
            home = self.home
            if home is not None and home.transport is not None and home.transport.can_write_eof():
                home.transport.write_eof()
            return
        self._maybe_finish_after_eof()

    def _maybe_finish_after_eof(self) -> None:
        if (
            self._client_eof
            and not self.closed
            and not self.passthrough
            and not self.busy  # a monitoring wait (awaitable hello) is not an answer the client awaits
        ):
            self.close(local=False)

    @property
    def busy(self) -> bool:
        if self._held is not None or self._retrying:
            return True
        if self.passthrough:
            # Replies now pass undecoded: an operation pending at the switch can never be seen to end, so
            # the connection is as opaque as a TCP relay, which a drain does not wait for either.
            return False
        # Awaitable hello / streamed monitoring checks can wait for many seconds by design: they are not
        # work a drain has to wait for.
        return any(not op.is_monitoring for leg in self.legs.values() for op in leg.pending.values())

    def drain(self) -> None:
        self._draining = True
        self._maybe_drain_close()

    def _maybe_drain_close(self) -> None:
        if self._draining and not self.closed and not self.busy:
            self.mongo_stats.cx_drain_close.inc()
            self.close(local=True)

    def on_close(self, *, local: bool) -> None:
        if self._delay_handle is not None:
            self._delay_handle.cancel()
        active = 0
        for leg in self.legs.values():
            if leg.pending:
                active += sum(1 for op in leg.pending.values() if not op.is_monitoring)
                self.requests_finished(len(leg.pending), leg.host)
                leg.pending.clear()
            leg.stream_key.clear()
            leg.stream_origin.clear()
        active += len(self._held or ()) + len(self._retrying)
        for handle, _ in self._retrying.values():
            handle.cancel()
            self.router.retries_in_flight -= 1
        self._retrying.clear()
        for f in self.filters:
            f.on_connection_close(self.info, active_operations=active, local=local)
        self._held = None
        self._held_passthrough.clear()
