"""Listeners: accept connections, give each one a session for its protocol, drain them on shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, cast

import anyio

from meshproxy.codecs import sniff
from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.tls_hello import ClientHello, match_server_name, read_client_hello
from meshproxy.config import DynamoListenerConfig, GrpcListenerConfig, ListenerConfig
from meshproxy.filters.dynamo.api import DynamoFilter
from meshproxy.filters.dynamo.factory import build_dynamo_filters
from meshproxy.filters.grpc.api import GrpcFilter
from meshproxy.filters.grpc.factory import build_grpc_filters
from meshproxy.filters.mongo.api import MongoFilter
from meshproxy.filters.mongo.factory import build_mongo_filters
from meshproxy.stats import Counter, Gauge, StatsStore
from meshproxy.transport.dynamo_session import DynamoSession
from meshproxy.transport.grpc_session import GrpcSession
from meshproxy.transport.h2_upstream import H2UpstreamPool
from meshproxy.transport.mongo_routing import MongoRouter
from meshproxy.transport.mongo_session import MongoSession
from meshproxy.transport.relay import Relay
from meshproxy.transport.tls import ServerTls, SslStats

if TYPE_CHECKING:
    from meshproxy.capture.tap import Tap
    from meshproxy.cluster import Cluster

log = logging.getLogger("meshproxy.listener")

SNIFF_TIMEOUT = 1.0
"""With ``protocol: auto``, a client silent this long is relayed as plain TCP (server-speaks-first protocols)."""
SNIFF_MAX_BYTES = 64
"""No sniffer needs more than this many bytes to decide; past it the connection is plain TCP."""

_connection_ids = itertools.count(1)


@dataclass(slots=True)
class ListenerStats:
    downstream_cx_total: Counter
    downstream_cx_active: Gauge
    downstream_cx_destroy: Counter
    downstream_cx_idle_timeout: Counter
    downstream_cx_protocol: Callable[[str], Counter]


@dataclass(slots=True)
class MongoSessionStats:
    """Stats the Mongo session itself keeps, whatever filters are configured."""

    decoding_error: Counter
    unexpected_reply: Counter
    cx_drain_close: Counter
    filter_error: Counter
    route_balanced: Counter
    """Operations sent to the host the cluster's balancer picked (``balance: operation``)."""
    route_cursor: Counter
    """``getMore`` / ``killCursors`` sent to the host holding their cursor."""
    route_transaction: Counter
    """Operations of a transaction sent to the host it began on."""
    route_home: Counter
    """Handshakes, monitoring, authentication and unknown cursors: the connection's home host."""
    route_repick: Counter
    """Requests moved to another host because theirs could not be connected to (they had not been sent)."""
    upstream_lost_reply: Counter
    """Requests answered ``HostUnreachable`` by the proxy: their host went away (or a circuit breaker)."""
    cursor_translated: Counter
    """Cursor ids the proxy handed out because two hosts chose the same one."""

    @classmethod
    def create(cls, stats: StatsStore, prefix: str) -> MongoSessionStats:
        return cls(*_session_counters(stats, "mongo", prefix, list(cls.__dataclass_fields__)))


@dataclass(slots=True)
class DynamoSessionStats:
    """Stats the DynamoDB session itself keeps, whatever filters are configured."""

    decoding_error: Counter
    """Requests (or responses) that could not be framed as HTTP/1.1, or were cut short."""
    filter_error: Counter
    cx_drain_close: Counter
    upstream_rq_timeout: Counter
    """Requests answered 504: no response within ``upstream_timeout``."""
    upstream_reset: Counter
    """Requests answered 503: the upstream connection closed before their response."""
    upstream_connect_error: Counter
    """Requests answered 503: no upstream connection could be made."""
    unexpected_response: Counter
    """Responses that arrived when no request was waiting (the upstream connection is closed)."""
    rejected: Counter
    """Requests answered by the proxy under ``invalid_requests: reject``."""

    @classmethod
    def create(cls, stats: StatsStore, prefix: str) -> DynamoSessionStats:
        return cls(*_session_counters(stats, "dynamodb", prefix, list(cls.__dataclass_fields__)))


def _session_counters(stats: StatsStore, protocol: str, prefix: str, names: list[str]) -> list[Counter]:
    """``<protocol>.<prefix>.<name>`` counters, exported as ``meshproxy_<protocol>_<name>{prefix=...}``."""
    labels = {"prefix": prefix}
    return [
        stats.counter(f"{protocol}.{prefix}.{name}", prom=f"meshproxy_{protocol}_{name}", labels=labels)
        for name in names
    ]


@dataclass(slots=True)
class Http2Stats:
    """What a gRPC listener's HTTP/2 connections defended against, and how calls ended at the proxy."""

    rx_reset: Counter
    """RST_STREAM frames from clients."""
    rx_reset_flood: Counter
    """Connections sent GOAWAY for resetting more than ``max_resets_per_second`` streams (rapid reset)."""
    ping_flood: Counter
    settings_flood: Counter
    too_many_streams: Counter
    """Streams opened beyond ``max_concurrent_streams``."""
    too_many_header_frames: Counter
    """Header blocks split into more CONTINUATION frames than h2 accepts (CONTINUATION flood)."""
    header_overflow: Counter
    """Header lists over ``max_header_list_size``."""
    protocol_error: Counter
    outbound_flood: Counter
    """Connections closed because the client did not read what was sent to it."""
    flow_control_wait: Counter
    """Times response data had to wait for a client's flow-control window."""
    deadline_exceeded: Counter
    """Calls the proxy ended with DEADLINE_EXCEEDED when their ``grpc-timeout`` passed."""
    filter_error: Counter
    cx_drain_close: Counter
    """Connections ended by a drain (GOAWAY, then the proxy's side closed once no call was left)."""

    @classmethod
    def create(cls, stats: StatsStore, prefix: str) -> Http2Stats:
        return cls(*_session_counters(stats, "http2", prefix, list(cls.__dataclass_fields__)))


@dataclass(slots=True)
class RetryBudget:
    """Calls in progress and retries waiting or in flight on one listener: a retry is allowed while
    retries stay under ``budget_percent`` of the calls (or ``min_retry_concurrency``), as in Envoy's retry
    budgets, so a failing upstream is not hit with a multiple of its load."""

    active_calls: int = 0
    active_retries: int = 0


@dataclass(slots=True)
class RetryStats:
    retry: Counter
    success: Counter
    """Calls that succeeded after at least one retry."""
    overflow: Counter
    """Retries refused by the budget."""
    limit_exceeded: Counter
    """Calls that still failed after ``max_retries``."""

    @classmethod
    def register(cls, stats: StatsStore, cluster: str) -> RetryStats:
        """The cluster's ``upstream_rq_retry*`` counters (shared by every listener retrying to it)."""
        return cls(
            *(
                stats.counter(
                    f"cluster.{cluster}.upstream_rq_{name}",
                    prom=f"meshproxy_cluster_upstream_rq_{name}",
                    labels={"cluster": cluster},
                )
                for name in ("retry", "retry_success", "retry_overflow", "retry_limit_exceeded")
            )
        )


_Sniffed = TypeVar("_Sniffed", DynamoListenerConfig, GrpcListenerConfig)


def _sniffed(model: type[_Sniffed], protocol: str, auto: ListenerConfig) -> _Sniffed:
    """The ``protocol`` listener an ``auto`` listener acts as for connections sniffed as that protocol."""
    shared = {name: getattr(auto, name) for name in model.model_fields if name in ListenerConfig.model_fields}
    shared.pop("filters", None)
    shared["protocol"] = protocol
    return model(**shared)


class ListenerRuntime:
    """A bound listener and the sessions it owns."""

    def __init__(
        self,
        config: ListenerConfig | DynamoListenerConfig | GrpcListenerConfig,
        cluster: Cluster,
        stats: StatsStore,
        *,
        protocol_clusters: dict[str, Cluster] | None = None,
        sni_clusters: dict[str, Cluster] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.cluster = cluster
        self.protocol_clusters = protocol_clusters or {}
        self.sni_clusters = sni_clusters or {}
        """Server name (or ``*.suffix``, ``*``) -> the cluster a passed-through TLS connection goes to."""
        self.tls = (
            None
            if config.tls is None
            else ServerTls(
                config.tls,
                protocol=config.protocol,
                where=f"listeners[{config.name}].tls",
                stats=SslStats.for_listener(stats, config.name),
                label=f"listener {config.name}",
            )
        )
        """TLS termination: the current context (replaced when its files change) and each handshake's stats."""
        """Per protocol (``mongo``, ``dynamo``, ``grpc``, ``tcp``), the cluster an ``auto`` listener sends it to."""
        self.idle_timeout = config.idle_timeout
        self.sessions: set[Relay] = set()
        self.tap: Tap | None = None
        """The tap recording this listener's new connections (``meshproxy.capture.tap``), when one is on."""
        self._server: asyncio.Server | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self.address: tuple[str, int] = config.address
        self.advertised_address: tuple[str, int] = config.address
        name = config.name
        labels = {"listener": name}
        self.stats = ListenerStats(
            downstream_cx_total=stats.counter(
                f"listener.{name}.downstream_cx_total", prom="meshproxy_listener_downstream_cx", labels=labels
            ),
            downstream_cx_active=stats.gauge(
                f"listener.{name}.downstream_cx_active",
                prom="meshproxy_listener_downstream_cx_active",
                labels=labels,
            ),
            downstream_cx_destroy=stats.counter(
                f"listener.{name}.downstream_cx_destroy",
                prom="meshproxy_listener_downstream_cx_destroy",
                labels=labels,
            ),
            downstream_cx_idle_timeout=stats.counter(
                f"listener.{name}.downstream_cx_idle_timeout",
                prom="meshproxy_listener_downstream_cx_idle_timeout",
                labels=labels,
            ),
            downstream_cx_protocol=lambda protocol: stats.counter(
                f"listener.{name}.protocol.{protocol}",
                prom="meshproxy_listener_protocol_cx",
                labels={"listener": name, "protocol": protocol},
            ),
        )
        prefix = config.prefix
        # Which sessions this listener can run: its protocol's, or (``auto``) any a sniffer may pick.
        self.mongo_config: ListenerConfig | None = None
        self.dynamo_config: DynamoListenerConfig | None = None
        self.grpc_config: GrpcListenerConfig | None = None
        if isinstance(config, DynamoListenerConfig):
            self.dynamo_config = config
        elif isinstance(config, GrpcListenerConfig):
            self.grpc_config = config
        elif config.protocol in ("mongo", "auto"):
            self.mongo_config = config
        if isinstance(config, ListenerConfig) and config.protocol == "auto":
            # HTTP/1.x and the HTTP/2 preface sniffed on an ``auto`` listener get the DynamoDB and gRPC
            # sessions, with those listeners' defaults (stats only) and this listener's shared settings.
            self.dynamo_config = _sniffed(DynamoListenerConfig, "dynamo", config)
            self.grpc_config = _sniffed(GrpcListenerConfig, "grpc", config)
        self.mongo_stats = MongoSessionStats.create(stats, prefix) if self.mongo_config is not None else None
        self.mongo_router = (
            None
            if self.mongo_config is None or self.mongo_stats is None
            else MongoRouter(hash_key=self.mongo_config.hash_key, translated=self.mongo_stats.cursor_translated)
        )
        """Cursor and transaction affinity, shared by this listener's Mongo connections."""
        self.dynamo_stats = DynamoSessionStats.create(stats, prefix) if self.dynamo_config is not None else None
        self.http2_stats = Http2Stats.create(stats, prefix) if self.grpc_config is not None else None
        self.grpc_pool: H2UpstreamPool | None = None  # made in start(): it needs the running loop
        self.grpc_filters: list[GrpcFilter] = []
        self.grpc_retry_budget = RetryBudget()
        self.grpc_retry_stats = RetryStats.register(stats, self.cluster_for("grpc").name)
        self.mongo_retry_stats = RetryStats.register(stats, self.cluster_for("mongo").name)
        self._stats_store = stats
        self.mongo_filters: list[MongoFilter] = []  # built in start(), once the advertised address is known
        self.dynamo_filters: list[DynamoFilter] = []

    def cluster_for(self, kind: str) -> Cluster:
        """The cluster a session of ``kind`` forwards to: its protocol's own, else the listener's."""
        return self.protocol_clusters.get(kind, self.cluster)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.config.address
        # With TLS the socket accepts plain TCP and each connection does its own handshake (ServerTls), so
        # that a failed one is seen and counted, and each new one uses the latest certificate.
        self._server = await loop.create_server(
            self._protocol_factory if self.tls is None else self.tls.acceptor(self._protocol_factory),
            host,
            port,
            reuse_address=True,
            reuse_port=self.config.reuse_port or None,
            backlog=1024,
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        advertised_host = "127.0.0.1" if self.address[0] in ("0.0.0.0", "::", "") else self.address[0]
        self.advertised_address = (advertised_host, self.address[1])
        if self.dynamo_config is not None:
            self.dynamo_filters = build_dynamo_filters(
                list(self.dynamo_config.filters), stats=self._stats_store, prefix=self.dynamo_config.prefix
            )
        if self.grpc_config is not None:
            grpc_cluster = self.cluster_for("grpc")
            if grpc_cluster.h2_pool is None:
                grpc_cluster.h2_pool = H2UpstreamPool(grpc_cluster)
            self.grpc_pool = grpc_cluster.h2_pool
            self.grpc_filters = build_grpc_filters(
                list(self.grpc_config.filters),
                stats=self._stats_store,
                prefix=self.grpc_config.prefix,
                cluster=grpc_cluster.name,
            )
        if self.mongo_config is not None:
            self.mongo_filters = build_mongo_filters(
                list(self.mongo_config.filters),
                stats=self._stats_store,
                prefix=self.mongo_config.prefix,
                listener_address=self.advertised_address,
            )
        log.info(
            "listener %s (%s) on %s:%d -> cluster %s",
            self.name, self.config.protocol, self.address[0], self.address[1], self.cluster.name,
        )

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.tls is not None:
            self.tls.close()

    async def drain(self, timeout: float) -> None:
        """Stop accepting; let in-flight operations finish for up to ``timeout`` seconds; then close."""
        self.stop_accepting()
        for session in list(self.sessions):
            session.drain()
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        for session in list(self.sessions):
            session.close(local=True)
        for f in self.mongo_filters:
            f.close()
        for g in self.dynamo_filters:
            g.close()
        for h in self.grpc_filters:
            h.close()
        if self.grpc_pool is not None:
            self.grpc_pool.close()
        for cluster in self.sni_clusters.values():  # pools that connections routed by server name made
            if cluster.h2_pool is not None and cluster.h2_pool is not self.grpc_pool:
                cluster.h2_pool.close()
        if self._server is not None:
            await self._server.wait_closed()

    # -- connections ----------------------------------------------------------------------------------

    def _protocol_factory(self) -> asyncio.Protocol:
        connection_id = next(_connection_ids)
        protocol = self.config.protocol
        if protocol == "mongo":
            return MongoSession(self, connection_id)
        if protocol == "dynamo":
            return DynamoSession(self, connection_id)
        if protocol == "grpc":
            return GrpcSession(self, connection_id)
        if protocol == "tcp":
            return Relay(self, connection_id)
        return _Sniffer(self, connection_id)

    def session_for(self, protocol: str, connection_id: int, hello: ClientHello | None = None) -> Relay:
        self.stats.downstream_cx_protocol(protocol).inc()
        if protocol in ("mongodb", "mongo"):
            return MongoSession(self, connection_id)
        if protocol == "http1":
            return DynamoSession(self, connection_id)
        if protocol == "http2":
            return GrpcSession(self, connection_id)
        if protocol == "tls" and hello is not None:
            # Not terminated here: relayed still encrypted, to the cluster its server name maps to.
            return Relay(self, connection_id, cluster=match_server_name(hello.server_name, self.sni_clusters))
        return Relay(self, connection_id)

    def connection_opened(self, session: Relay) -> None:
        self.sessions.add(session)
        if self._idle.is_set():
            self._idle = anyio.Event()
        self.stats.downstream_cx_total.inc()
        self.stats.downstream_cx_active.inc()

    def connection_closed(self, session: Relay) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.stats.downstream_cx_active.dec()
            self.stats.downstream_cx_destroy.inc()
            if not self.sessions:
                self._idle.set()


class _Sniffer(asyncio.Protocol):
    """Holds a new connection's first bytes until a codec claims them, then hands over to its session."""

    def __init__(self, listener: ListenerRuntime, connection_id: int) -> None:
        self.listener = listener
        self.connection_id = connection_id
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.decided = False
        self.session: Relay | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timer = asyncio.get_running_loop().call_later(SNIFF_TIMEOUT, self._decide, "tcp")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        verdict = sniff.sniff(self.buffer)
        if verdict == "tls":
            # A ClientHello: its server name picks the cluster, so wait for the whole hello (bounded).
            try:
                hello = read_client_hello(self.buffer)
            except DecodeError:
                self._decide("tcp")
                return
            if hello is None:
                return
            self._decide("tls", hello)
            return
        if verdict is None and len(self.buffer) < SNIFF_MAX_BYTES:
            return
        self._decide(verdict or "tcp")

    def eof_received(self) -> bool:
        self._decide("tcp")
        return self.session.eof_received() if self.session is not None else False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.decided = True

    def _decide(self, protocol: str, hello: ClientHello | None = None) -> None:
        if self.decided or self.transport is None:
            return
        self.decided = True
        if self.timer is not None:
            self.timer.cancel()
        session = self.session = self.listener.session_for(protocol, self.connection_id, hello)
        self.transport.set_protocol(session)
        session.connection_made(self.transport)
        if self.buffer:
            session.data_received(self.buffer)
