"""A cluster: named upstream hosts, the balancer that picks among them, and the stats Envoy keeps for them.

Sessions only ever ask ``pick()`` for a host; the policy (``lb_policy``: round robin, least request,
random, ring hash, maglev, from ``meshproxy.lb``) and the health of each host decide which. Whoever changes a
host's health (health checking, outlier detection) calls ``refresh()`` so the balancer sees it.

The host set may change at runtime (``set_hosts``: DNS and file discovery in ``meshproxy.cluster.discovery``).
``hosts`` is then updated in place, so whoever holds the list sees the new members; hosts that stay are the
same objects and keep their health, ejection and stats; hosts that leave only stop being picked, and the
sessions that hold them finish on them.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from meshproxy.cluster.health import (
    Checker,
    HealthCheckConfig,
    HealthChecker,
    HealthCheckStats,
    dynamodb_check,
    grpc_check,
    http_check,
    mongo_check,
    tcp_check,
)
from meshproxy.cluster.outlier import Outcome, OutlierConfig, OutlierDetector
from meshproxy.config import CircuitBreakersConfig, ClusterConfig, ClusterHealthCheckConfig, TlsClientConfig
from meshproxy.lb import (
    Balancer,
    LeastRequestBalancer,
    MaglevBalancer,
    RandomBalancer,
    RingHashBalancer,
    RoundRobinBalancer,
)
from meshproxy.stats import Counter, Gauge, StatsStore
from meshproxy.transport.tls import client_context

log = logging.getLogger("meshproxy.cluster")


@dataclass(slots=True)
class HostStats:
    cx_total: Counter
    cx_active: Gauge
    cx_connect_fail: Counter
    rq_total: Counter
    rq_active: Gauge
    rq_success: Counter = field(default_factory=Counter)
    """Outcomes the sessions reported as success (``Cluster.report``), with or without outlier detection."""
    rq_error: Counter = field(default_factory=Counter)
    """Outcomes the sessions reported as any kind of failure."""


@dataclass(slots=True)
class Host:
    """One upstream endpoint (a ``meshproxy.lb.BalancedHost``)."""

    address: tuple[str, int]
    stats: HostStats
    passes_health_checks: bool = True
    """What active health checking says (True without it)."""
    weight: int = 1
    ejected: bool = False
    """Set by outlier detection while the host is ejected."""
    removed: bool = False
    """Set when discovery took the host out of its cluster: requests already on it finish, but a pool that
    keeps connections open should not start new requests on them (a host that comes back is a new object)."""

    @property
    def healthy(self) -> bool:
        """Whether balancers should send it traffic: health checks pass and outlier detection has not ejected it."""
        return self.passes_health_checks and not self.ejected

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self.passes_health_checks = value

    @property
    def name(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    @property
    def active_requests(self) -> int:
        """Requests in flight to this host, as the sessions count them (``rq_active``)."""
        return int(self.stats.rq_active.value)


@dataclass(slots=True)
class ClusterStats:
    upstream_cx_total: Counter
    upstream_cx_active: Gauge
    upstream_cx_connect_fail: Counter
    upstream_cx_connect_timeout: Counter
    upstream_cx_destroy_local: Counter
    upstream_cx_destroy_remote: Counter
    upstream_cx_rx_bytes_total: Counter
    upstream_cx_tx_bytes_total: Counter
    upstream_rq_total: Counter
    upstream_rq_active: Gauge
    upstream_cx_overflow: Counter
    upstream_rq_pending_overflow: Counter
    upstream_rq_overflow: Counter
    upstream_cx_none_healthy: Counter
    """Picks made while the cluster had no host at all (a DNS name not resolved yet, an empty hosts file)."""
    membership_change: Counter
    membership_total: Gauge
    membership_healthy: Gauge
    """Hosts that pass health checks and are not ejected (Envoy's ``membership_healthy``)."""
    update_attempt: Counter
    update_success: Counter
    update_failure: Counter
    update_no_rebuild: Counter
    """Discovery answers that changed nothing."""


def _cluster_stats(stats: StatsStore, name: str) -> ClusterStats:
    def counter(stat: str) -> Counter:
        return stats.counter(
            f"cluster.{name}.{stat}", prom=f"meshproxy_cluster_{stat.removesuffix('_total')}",
            labels={"cluster": name},
        )

    def gauge(stat: str) -> Gauge:
        return stats.gauge(f"cluster.{name}.{stat}", prom=f"meshproxy_cluster_{stat}", labels={"cluster": name})

    return ClusterStats(
        upstream_cx_total=counter("upstream_cx_total"),
        upstream_cx_active=gauge("upstream_cx_active"),
        upstream_cx_connect_fail=counter("upstream_cx_connect_fail"),
        upstream_cx_connect_timeout=counter("upstream_cx_connect_timeout"),
        upstream_cx_destroy_local=counter("upstream_cx_destroy_local"),
        upstream_cx_destroy_remote=counter("upstream_cx_destroy_remote"),
        upstream_cx_rx_bytes_total=counter("upstream_cx_rx_bytes_total"),
        upstream_cx_tx_bytes_total=counter("upstream_cx_tx_bytes_total"),
        upstream_rq_total=counter("upstream_rq_total"),
        upstream_rq_active=gauge("upstream_rq_active"),
        upstream_cx_overflow=counter("upstream_cx_overflow"),
        upstream_rq_pending_overflow=counter("upstream_rq_pending_overflow"),
        upstream_rq_overflow=counter("upstream_rq_overflow"),
        upstream_cx_none_healthy=counter("upstream_cx_none_healthy"),
        membership_change=counter("membership_change"),
        membership_total=gauge("membership_total"),
        membership_healthy=gauge("membership_healthy"),
        update_attempt=counter("update_attempt"),
        update_success=counter("update_success"),
        update_failure=counter("update_failure"),
        update_no_rebuild=counter("update_no_rebuild"),
    )


def _host(stats: StatsStore, cluster: str, address: tuple[str, int], weight: int = 1) -> Host:
    """A host with its per-host stats registered (a host that comes back gets its old counters again)."""
    host_name = f"{address[0]}:{address[1]}"
    labels = {"cluster": cluster, "host": host_name}

    def counter(stat: str) -> Counter:
        return stats.counter(
            f"cluster.{cluster}.host.{host_name}.{stat}",
            prom=f"meshproxy_cluster_host_{stat.removesuffix('_total')}",
            labels=labels,
        )

    def gauge(stat: str) -> Gauge:
        return stats.gauge(
            f"cluster.{cluster}.host.{host_name}.{stat}", prom=f"meshproxy_cluster_host_{stat}", labels=labels
        )

    return Host(
        address=address,
        weight=weight,
        stats=HostStats(
            cx_total=counter("cx_total"),
            cx_active=gauge("cx_active"),
            cx_connect_fail=counter("cx_connect_fail"),
            rq_total=counter("rq_total"),
            rq_active=gauge("rq_active"),
            rq_success=counter("rq_success"),
            rq_error=counter("rq_error"),
        ),
    )


@dataclass(slots=True)
class Cluster:
    """Hosts of one upstream service, picked in turn."""

    name: str
    hosts: list[Host]
    connect_timeout: float
    stats: ClusterStats
    store: StatsStore = field(default_factory=StatsStore, repr=False)
    """Where the cluster's stats live, for modules that add their own (the HTTP/2 pool, gRPC stats)."""
    tls: TlsClientConfig | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    """For byte relays, Mongo and DynamoDB sessions; the HTTP/2 pool makes its own (ALPN h2)."""
    balancer: Balancer[Host] | None = field(default=None, repr=False)
    breakers: CircuitBreakersConfig = field(default_factory=CircuitBreakersConfig)
    """Built from ``lb_policy`` by ``from_config``; None: hosts in turn, healthy ones first."""
    outlier: OutlierDetector | None = field(default=None, repr=False)
    """Outlier detection, when the cluster's config has ``outlier_detection``; sessions ``report`` to it."""
    health: HealthChecker | None = field(default=None, repr=False)
    """Active health checking, once ``health_checker`` made one: ``set_hosts`` tells it who joined or left."""
    tls_stats: Any = field(default=None, repr=False)
    """``cluster.<name>.ssl.*`` (``meshproxy.transport.tls.UpstreamTlsStats``), registered at the first TLS
    handshake or failure towards a host and kept here, since every TLS connection counts in them."""
    h2_pool: Any = field(default=None, repr=False)
    """The cluster's HTTP/2 connection pool (``meshproxy.transport.h2_upstream.H2UpstreamPool``), made by the
    first gRPC listener that forwards to the cluster and shared by every other one."""
    _next: int = field(default=0, repr=False)
    _unreachable: Host | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: ClusterConfig, stats: StatsStore) -> Cluster:
        hosts = [_host(stats, config.name, address) for address in config.hosts]
        cluster = cls(
            name=config.name,
            hosts=hosts,
            connect_timeout=config.connect_timeout,
            stats=_cluster_stats(stats, config.name),
            store=stats,
            balancer=_balancer(config, hosts),
            breakers=config.circuit_breakers,
            outlier=(
                None
                if config.outlier_detection is None
                else OutlierDetector(
                    OutlierConfig(**config.outlier_detection.model_dump()), hosts, stats, config.name, time.monotonic
                )
            ),
            tls=config.tls,
            ssl_context=(
                None
                if config.tls is None
                else client_context(config.tls, alpn=None, where=f"clusters[{config.name}].tls")
            ),
        )
        cluster._update_membership_gauges()
        return cluster

    @property
    def hashes_keys(self) -> bool:
        """Whether ``pick`` uses its key: sessions build one (a collection, a partition key, a header) only then."""
        return self.balancer is not None and self.balancer.uses_key

    def server_hostname(self, host: Host) -> str | None:
        """The name TLS sends and verifies for ``host`` (``tls.sni``, else the host part of its address)."""
        if self.tls is None:
            return None
        return self.tls.sni or host.address[0]

    def pick(self, key: bytes | None = None) -> Host:
        """The host for the next connection or request (``key`` matters to ring hash and maglev).

        With no host at all (a DNS name not resolved yet, an empty hosts file) the answer is a placeholder
        at ``127.0.0.1:0``, which refuses every connection at once: sessions then fail the client the way
        they fail it for any unreachable host, and ``upstream_cx_none_healthy`` counts it."""
        if self.balancer is not None:
            host = self.balancer.pick(key)
            if host is not None:
                return host
        candidates = [h for h in self.hosts if h.healthy] or self.hosts
        if not candidates:
            self.stats.upstream_cx_none_healthy.inc()
            if self._unreachable is None:
                self._unreachable = _host(StatsStore(), self.name, ("127.0.0.1", 0))
            return self._unreachable
        host = candidates[self._next % len(candidates)]
        self._next += 1
        return host

    def refresh(self) -> None:
        """Hosts' health or weight changed: rebuild the balancer's view."""
        if self.balancer is not None:
            self.balancer.update(self.hosts)
        self._update_membership_gauges()

    def _update_membership_gauges(self) -> None:
        self.stats.membership_total.set(len(self.hosts))
        self.stats.membership_healthy.set(sum(1 for host in self.hosts if host.healthy))

    def set_hosts(self, members: Iterable[tuple[tuple[str, int], int]]) -> bool:
        """Make ``(address, weight)`` pairs the cluster's hosts; return whether anything changed.

        Hosts already in the cluster stay the same objects (health, ejection, stats and the connections
        sessions hold on them all carry on); only their weight follows the new answer. New hosts get their
        stats and join the balancer, the health checker and outlier detection; hosts that left are no longer
        picked, while requests already on them finish. ``hosts`` is changed in place."""
        current = {host.address: host for host in self.hosts}
        wanted: dict[tuple[str, int], int] = {}
        for address, weight in members:
            wanted.setdefault(address, weight)
        if list(wanted) == [h.address for h in self.hosts] and all(
            current[a].weight == w for a, w in wanted.items()
        ):
            self.stats.update_no_rebuild.inc()
            return False
        added = [_host(self.store, self.name, a, w) for a, w in wanted.items() if a not in current]
        removed = [host for address, host in current.items() if address not in wanted]
        for address, weight in wanted.items():
            if address in current:
                current[address].weight = weight
        for host in removed:
            host.removed = True
        fresh = {host.address: host for host in added}
        self.hosts[:] = [current.get(address) or fresh[address] for address in wanted]
        if added or removed:
            self.stats.membership_change.inc()
            log.info(
                "cluster %s: hosts now %s (added %s; removed %s)", self.name,
                ", ".join(h.name for h in self.hosts) or "none",
                ", ".join(h.name for h in added) or "none", ", ".join(h.name for h in removed) or "none",
            )
        if self.health is not None:
            for host in removed:
                self.health.remove_host(host)
            for host in added:
                self.health.add_host(host)
        if self.outlier is not None:
            self.outlier.set_hosts(self.hosts)
            for host in removed:
                host.ejected = False  # no longer tracked; a session still on it must not see a stale flag
            for host in self.hosts:
                host.ejected = self.outlier.is_ejected(host)
        self.refresh()
        return True

    def connection_allowed(self) -> bool:
        """Whether one more upstream connection fits ``max_connections`` (counted when it does not)."""
        if self.stats.upstream_cx_active.value < self.breakers.max_connections:
            return True
        self.stats.upstream_cx_overflow.inc()
        return False

    def request_allowed(self) -> bool:
        """Whether one more request fits ``max_requests`` (counted when it does not)."""
        if self.stats.upstream_rq_active.value < self.breakers.max_requests:
            return True
        self.stats.upstream_rq_overflow.inc()
        return False

    def report(self, host: Host | None, outcome: Outcome) -> None:
        """One request's (or connection attempt's) outcome at ``host``: counted on the host (``/clusters``
        shows the success rate) and given to outlier detection."""
        if host is None:
            return
        if outcome is Outcome.SUCCESS:
            host.stats.rq_success.value += 1
        else:
            host.stats.rq_error.value += 1
        if self.outlier is not None:
            self.outlier.report(host, outcome)
            self._sync_ejections()

    def success_rate(self, host: Host) -> tuple[float | None, str]:
        """``(percent, source)`` for ``/clusters``: outlier detection's last completed interval when the
        cluster has it (``"outlier_detection_interval"``), else every outcome reported for the host since it
        joined (``"lifetime"``). ``None`` when no outcome was counted."""
        if self.outlier is not None:
            return self.outlier.success_rate(host), "outlier_detection_interval"
        total = host.stats.rq_success.value + host.stats.rq_error.value
        return (100.0 * host.stats.rq_success.value / total if total else None), "lifetime"

    def tick_outlier_detection(self) -> None:
        """Every ``outlier_detection.interval``: success rate, failure percentage, unejections."""
        if self.outlier is not None:
            self.outlier.tick()
            self._sync_ejections()

    def _sync_ejections(self) -> None:
        outlier = self.outlier
        assert outlier is not None
        changed = False
        for host in self.hosts:
            ejected = outlier.is_ejected(host)
            if ejected != host.ejected:
                host.ejected = ejected
                changed = True
        if changed:
            self.refresh()


def _balancer(config: ClusterConfig, hosts: list[Host]) -> Balancer[Host]:
    threshold = config.panic_threshold / 100
    policies: dict[str, type[Balancer[Host]]] = {
        "round_robin": RoundRobinBalancer,
        "least_request": LeastRequestBalancer,
        "random": RandomBalancer,
        "ring_hash": RingHashBalancer,
        "maglev": MaglevBalancer,
    }
    return policies[config.lb_policy](hosts, panic_threshold=threshold)


def health_checker(cluster: Cluster, config: ClusterHealthCheckConfig) -> HealthChecker:
    """The checker ``config`` describes, for every host of ``cluster``, exporting its stats with the cluster's."""
    checks: dict[str, Callable[[], Checker]] = {
        "tcp": lambda: tcp_check(send=config.send.encode(), expect=config.expect.encode()),
        "http": lambda: http_check(path=config.path, expected_statuses=set(config.expected_statuses)),
        "grpc": lambda: grpc_check(config.service),
        "mongo": mongo_check,
        "dynamodb": dynamodb_check,
    }
    checker = HealthChecker(
        cluster.name,
        cluster.hosts,
        checks[config.type](),
        HealthCheckConfig(
            interval=config.interval,
            jitter=config.jitter,
            timeout=config.timeout,
            unhealthy_threshold=config.unhealthy_threshold,
            healthy_threshold=config.healthy_threshold,
            unhealthy_interval=config.unhealthy_interval,
            event_log_path=config.event_log_path,
        ),
        stats=HealthCheckStats.register(cluster.store, cluster.name),
        on_change=lambda host: cluster.refresh(),
    )
    cluster.health = checker
    cluster.refresh()
    return checker
