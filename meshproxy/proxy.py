"""The proxy as one object: build it from a ``MeshConfig`` and run it, from the CLI or from service code.

Three ways to hold it:

- ``async with Proxy(config) as proxy:`` in async code (anyio, asyncio backend; the data path needs the
  asyncio event loop, so trio is not supported);
- ``with ProxyThread(config) as proxy:`` from synchronous code (a blocking driver such as pymongo in the
  same process): the proxy runs on its own uvloop event loop in a background thread;
- ``run(config)``: what ``meshproxy run`` / ``meshproxy sidecar`` call; blocks until SIGTERM or SIGINT,
  then drains gracefully.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from meshproxy._background import BackgroundLoop
from meshproxy.admin import AdminRequest, AdminResponse, AdminServer, AdminState, ClusterStatus, HostStatus, Route
from meshproxy.capture.tap import TapManager
from meshproxy.cluster import Cluster, Host
from meshproxy.cluster.cluster import health_checker
from meshproxy.cluster.discovery import Discovery, DnsDiscovery, HostsFileDiscovery, Resolver, discovery_for
from meshproxy.cluster.health import HealthChecker
from meshproxy.config import MeshConfig
from meshproxy.filters.dynamo.stats import DynamoStatsFilter
from meshproxy.stats import StatsStore
from meshproxy.transport.listener import ListenerRuntime
from meshproxy.transport.tls import ServerTls, SslStats

log = logging.getLogger("meshproxy")

T = TypeVar("T")


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


class Proxy:
    """Listeners, clusters and the admin endpoint described by one configuration."""

    def __init__(
        self, config: MeshConfig, *, stats: StatsStore | None = None, resolver: Resolver | None = None
    ) -> None:
        """``resolver`` replaces the system's DNS lookups for clusters with ``dns`` (tests, service code)."""
        self.config = config
        self.stats = stats if stats is not None else StatsStore()
        self.state = AdminState()
        self.clusters = {c.name: Cluster.from_config(c, self.stats) for c in config.clusters}
        self.discoveries: dict[str, Discovery] = {}
        for cluster_config in config.clusters:
            discovery = discovery_for(self.clusters[cluster_config.name], cluster_config, resolver)
            if discovery is not None:
                self.discoveries[cluster_config.name] = discovery
            if isinstance(discovery, HostsFileDiscovery):
                discovery.update(force=True)  # a file is read at once; DNS waits for the event loop
        self.listeners = {
            lc.name: ListenerRuntime(
                lc,
                self.clusters[lc.cluster],
                self.stats,
                protocol_clusters={
                    kind: self.clusters[name] for kind, name in (getattr(lc, "protocol_clusters", None) or {}).items()
                },
                sni_clusters={
                    server: self.clusters[name] for server, name in (getattr(lc, "sni_clusters", None) or {}).items()
                },
            )
            for lc in config.listeners
        }
        self.taps = TapManager(
            self.listeners, self.stats, config.admin.tap_directory if config.admin is not None else None
        )
        """Recordings of listeners to pcapng, driven from the admin's ``/tap`` routes."""
        self.health_checkers: dict[str, HealthChecker] = {}
        self.admin: AdminServer | None = None
        self.admin_address: tuple[str, int] | None = None
        self._task_group: TaskGroup | None = None
        self._drained = False

    # -- running --------------------------------------------------------------------------------------

    async def __aenter__(self) -> Proxy:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            # DNS clusters get their first answer before any client can arrive (Envoy's cluster warming);
            # a failed first lookup leaves the cluster without hosts until a later one succeeds.
            for discovery in self.discoveries.values():
                if isinstance(discovery, DnsDiscovery):
                    await discovery.update()
            for listener in self.listeners.values():
                await listener.start()
                if listener.tls is not None:
                    self._task_group.start_soon(listener.tls.watch, name=f"certificate files of {listener.name}")
            await self.taps.start_configured()  # listeners with ``tap:`` record from their first connection
            for cluster_config in self.config.clusters:
                if cluster_config.outlier_detection is not None:
                    self._task_group.start_soon(
                        _tick_outlier_detection, self.clusters[cluster_config.name],
                        cluster_config.outlier_detection.interval,
                    )
                if cluster_config.health_check is not None:
                    checker = health_checker(self.clusters[cluster_config.name], cluster_config.health_check)
                    self.health_checkers[cluster_config.name] = checker
                    self._task_group.start_soon(checker.run, name=f"health checks of {cluster_config.name}")
            for name, discovery in self.discoveries.items():
                self._task_group.start_soon(discovery.run, name=f"host discovery of {name}")
            if self.config.admin is not None:
                admin_tls = None
                if self.config.admin.tls is not None:
                    admin_tls = ServerTls(
                        self.config.admin.tls,
                        protocol="admin",
                        where="admin.tls",
                        stats=SslStats.create(self.stats, "http.admin", "admin", {}),
                        label="admin",
                    )
                    self._task_group.start_soon(admin_tls.watch, name="certificate files of the admin")
                self.admin = AdminServer(
                    self.stats,
                    address=self.config.admin.address,
                    state=self.state,
                    ssl_context=None if admin_tls is None else admin_tls.current,
                    token_file=self.config.admin.token_file,
                    on_handshake=None if admin_tls is None else admin_tls.handshake_ended,
                    clusters=self.cluster_status,
                    config_dump=self.config_dump,
                    extra_routes=[
                        Route(
                            "/dynamodb/hot_keys",
                            self._hot_keys,
                            "hottest DynamoDB partition keys per listener and table (?table=NAME, ?limit=N)",
                        ),
                        *self.taps.routes(),
                    ],
                )
                self.admin_address = await self._task_group.start(self.admin.serve)
                log.info("admin on http://%s:%d/", *self.admin_address)
        except BaseException:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            raise
        self.state.live = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            with anyio.CancelScope(shield=True):
                await self.drain()
        finally:
            assert self._task_group is not None
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(exc_type, exc, tb)
        return None

    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting; let in-flight operations finish up to ``timeout`` (config's drain_timeout);
        then close every connection. Idempotent."""
        if self._drained:
            return
        self._drained = True
        self.state.draining = True
        self.state.live = False
        timeout = self.config.drain_timeout if timeout is None else timeout
        async with anyio.create_task_group() as group:
            for listener in self.listeners.values():
                group.start_soon(listener.drain, timeout)
        await self.taps.stop_all()  # after the drain: the connections' ends are in the files

    def listener_address(self, name: str) -> tuple[str, int]:
        """The bound address of a listener (useful with port 0)."""
        return self.listeners[name].address

    # -- admin views ----------------------------------------------------------------------------------

    def _hot_keys(self, request: AdminRequest) -> AdminResponse:
        """``{listener: {table: [{"key": value, "count": n}, ...]}}``, hottest first, from each DynamoDB
        listener's stats filter (counts are the sketch's upper bounds: see docs/dynamo.md)."""
        wanted = request.param("table")
        limit_text = request.param("limit") or "20"
        if not limit_text.isdigit() or int(limit_text) < 1:
            return AdminResponse(400, f"limit must be a positive whole number, got {limit_text!r}\n")
        limit = int(limit_text)
        view: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for name, listener in self.listeners.items():
            for f in listener.dynamo_filters:
                if isinstance(f, DynamoStatsFilter):
                    tables = [wanted] if wanted is not None else f.hot_tables()
                    view[name] = {
                        table: [{"key": key, "count": count} for key, count in f.hot_keys(table)[:limit]]
                        for table in tables
                    }
        return AdminResponse.json(view)

    def cluster_status(self) -> list[ClusterStatus]:
        """What ``/clusters`` shows: every current host (hosts discovery removed are gone from it even while
        requests on them finish) with its health, ejection, weight, load and success rate."""
        return [
            ClusterStatus(name=cluster.name, hosts=[_host_status(cluster, host) for host in list(cluster.hosts)])
            for cluster in self.clusters.values()
        ]

    def config_dump(self) -> dict[str, Any]:
        dump: dict[str, Any] = self.config.model_dump(mode="json")
        dump["bound"] = {
            "listeners": {name: list(listener.address) for name, listener in self.listeners.items()},
            "admin": list(self.admin_address) if self.admin_address else None,
        }
        return dump


def _host_status(cluster: Cluster, host: Host) -> HostStatus:
    rate, source = cluster.success_rate(host)
    return HostStatus(
        address=host.name,
        cx_active=int(host.stats.cx_active.value),
        rq_active=host.active_requests,
        rq_total=host.stats.rq_total.value,
        cx_connect_fail=host.stats.cx_connect_fail.value,
        healthy=host.healthy,
        weight=host.weight,
        failed_active_health_check=not host.passes_health_checks,
        ejected=host.ejected,
        success_rate=rate,
        success_rate_source=source,
    )


async def _tick_outlier_detection(cluster: Cluster, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        cluster.tick_outlier_detection()


def run(config: MeshConfig) -> int:
    """Run until SIGTERM or SIGINT, then drain. Returns the process exit code."""

    async def main() -> None:
        async with Proxy(config) as proxy:
            for name, listener in proxy.listeners.items():
                log.info("listening: %s on %s:%d", name, *listener.address)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info(
                        "%s: draining (up to %.1fs)", signal.Signals(signum).name, config.drain_timeout
                    )
                    break

    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": uvloop_available()})
    return 0


class ProxyThread:
    """A ``Proxy`` on its own event loop in a daemon thread, for synchronous callers and tests.

    ``call(fn)`` runs an async function on the proxy's loop and returns its result.
    """

    def __init__(self, config: MeshConfig, *, stats: StatsStore | None = None, start_timeout: float = 10.0):
        self.config = config
        self._loop = BackgroundLoop(
            lambda: Proxy(config, stats=stats),
            name="meshproxy",
            start_timeout=start_timeout,
            backend_options={"use_uvloop": uvloop_available()},
        )

    @property
    def proxy(self) -> Proxy:
        if self._loop.value is None:
            raise RuntimeError("the proxy is not running")
        return self._loop.value

    @property
    def stats(self) -> StatsStore:
        return self.proxy.stats

    @property
    def admin_address(self) -> tuple[str, int] | None:
        return self.proxy.admin_address

    def listener_address(self, name: str) -> tuple[str, int]:
        return self.proxy.listener_address(name)

    def __enter__(self) -> ProxyThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self._loop.start()

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``fn()`` on the proxy's event loop and wait for its result."""
        return self._loop.call(fn)

    def stop(self) -> None:
        """Drain and stop; blocks until the thread has finished."""
        self._loop.stop()
