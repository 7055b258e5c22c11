"""Client-side balancing: run a ``Cluster`` with its health checker and outlier detection inside service code.

Why it exists: a service that talks to its upstreams directly (a ``pymongo.MongoClient`` per host with
``directConnection=True``, a boto3 client per ``endpoint_url``, a grpc channel per host) wants the same host
choice the proxy would make, without a proxy hop. The proxy's ``Cluster`` already holds the balancer, the
hosts' health and outlier detection; what only ``meshproxy.proxy.Proxy`` did so far was *run* them (a task
for the health checker, a timer for outlier detection). ``ClusterClient`` does that part, and adds what a
session does for the proxy: count requests in flight (so ``least_request`` sees them) and report each
request's outcome (so outlier detection can eject a failing host).

- ``async with ClusterClient.from_config(config) as cluster:`` runs the checks in an anyio task group for the
  block (asyncio or trio backend; nothing here needs asyncio's protocols).
- ``with ClusterClientThread.from_config(config) as cluster:`` runs the same on an event loop in a daemon
  thread, for blocking code (pymongo, boto3, sync grpc). ``pick``, ``report`` and ``request`` are safe to
  call from any thread: the cluster ``from_config`` builds takes one re-entrant lock in every method that
  reads or changes its balancer, hosts or outlier state, because health checking and host discovery
  (``dns``, ``hosts_file``) change them on the loop thread while callers pick on theirs.
- Host discovery runs as in the proxy: a hosts file is read when the client is built, a DNS name is
  resolved once on entering the block (before the first pick can need it), then both are polled.

``outcome_from_exception`` maps what pymongo, botocore and grpcio raise to the shared ``Outcome``
vocabulary, recognising their exception classes by module and name so meshproxy depends on none of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskGroup

from meshproxy._background import BackgroundLoop
from meshproxy.cluster.cluster import Cluster, Host, health_checker
from meshproxy.cluster.discovery import Discovery, DnsDiscovery, HostsFileDiscovery, Resolver, discovery_for
from meshproxy.cluster.health import HealthChecker
from meshproxy.cluster.outlier import (
    Outcome,
    outcome_from_dynamo,
    outcome_from_grpc_status,
    outcome_from_mongo,
)
from meshproxy.config import ClusterConfig
from meshproxy.stats import StatsStore

Members = Iterable[tuple[tuple[str, int], int]]

__all__ = ["Classifier", "ClusterClient", "ClusterClientThread", "ClusterRequest", "outcome_from_exception"]

Classifier = Callable[[BaseException], Outcome | None]
"""Turns an exception raised inside ``with cluster.request(...)`` into an outcome; ``None`` reports nothing."""

_LOCAL_ORIGIN = frozenset(
    {
        ("pymongo", "ConnectionFailure"),  # AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError
        ("botocore", "ConnectionError"),  # EndpointConnectionError, ConnectTimeoutError
        ("botocore", "HTTPClientError"),  # ConnectionClosedError, ReadTimeoutError
    }
)


def outcome_from_exception(exc: BaseException) -> Outcome | None:
    """The outcome an exception says about the host, for the drivers services use; ``None`` when it says nothing.

    - grpcio's ``RpcError``: its status, as ``outcome_from_grpc_status`` maps it (UNAVAILABLE is a gateway
      failure, INTERNAL an upstream error, INVALID_ARGUMENT a success: the host answered).
    - botocore's ``ClientError``: the HTTP status and error code, as ``outcome_from_dynamo`` maps them
      (throttling is the table's capacity, not the host's health).
    - pymongo's ``NotPrimaryError``: an upstream error (the server cannot serve writes now);
      ``OperationFailure``: its code, as ``outcome_from_mongo`` maps it (a duplicate key is a success).
    - Connection trouble (pymongo's ``ConnectionFailure``, botocore's connection and timeout errors, any
      ``OSError``, ``TimeoutError`` or ``EOFError``): a local-origin failure.
    - Anything else (a bug in the caller, a value it did not like): ``None``. Counting such an exception
      against the host would let a client-side bug eject healthy hosts.
    """
    kinds = {(klass.__module__.partition(".")[0], klass.__name__) for klass in type(exc).__mro__}
    if ("grpc", "RpcError") in kinds:
        code = getattr(exc, "code", None)
        status = code() if callable(code) else None
        value = getattr(status, "value", None)
        if isinstance(value, tuple) and value and isinstance(value[0], int):
            return outcome_from_grpc_status(value[0])
        return Outcome.LOCAL_ORIGIN_FAILURE  # no status: the call never reached a server
    if ("botocore", "ClientError") in kinds:
        response = getattr(exc, "response", None) or {}
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return outcome_from_dynamo(status, response.get("Error", {}).get("Code"))
    if ("pymongo", "NotPrimaryError") in kinds:
        return Outcome.UPSTREAM_ERROR
    if kinds & _LOCAL_ORIGIN:
        return Outcome.LOCAL_ORIGIN_FAILURE
    if ("pymongo", "OperationFailure") in kinds:
        code = getattr(exc, "code", None)
        return outcome_from_mongo(0, code if isinstance(code, int) else None)
    if isinstance(exc, OSError | TimeoutError | EOFError):
        return Outcome.LOCAL_ORIGIN_FAILURE
    return None


@dataclass(slots=True)
class LockedCluster(Cluster):
    """A ``Cluster`` whose every state-changing or balancer-reading method holds ``lock``.

    Why a subclass: the health checker (``cluster.refresh``), host discovery (``cluster.set_hosts``) and
    outlier detection call the cluster directly, on the event loop's thread; locking in the cluster itself
    covers those callers too, not only ``ClusterClient``'s. The lock is re-entrant because ``set_hosts`` and
    ``report`` call ``refresh``. (``Cluster.method(self, ...)`` rather than ``super()``: a slots dataclass
    is rebuilt by the decorator, which breaks zero-argument ``super()`` before Python 3.14.)"""

    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def pick(self, key: bytes | None = None) -> Host:
        with self.lock:
            return Cluster.pick(self, key)

    def refresh(self) -> None:
        with self.lock:
            Cluster.refresh(self)

    def set_hosts(self, members: Members) -> bool:
        with self.lock:
            return Cluster.set_hosts(self, members)

    def report(self, host: Host | None, outcome: Outcome) -> None:
        with self.lock:
            Cluster.report(self, host, outcome)

    def tick_outlier_detection(self) -> None:
        with self.lock:
            Cluster.tick_outlier_detection(self)


@dataclass(slots=True)
class ClusterRequest:
    """One request to ``host``, counted while the ``with`` block runs (``cluster.request(...)`` makes it).

    Entering counts it in the host's and the cluster's ``rq_total`` and ``rq_active`` (what least request
    reads); leaving uncounts it and reports the outcome: ``outcome`` if the block set it (e.g. from a
    response that carried an error without raising), else ``SUCCESS`` when the block returned and the
    client's classifier's answer when it raised. Cancellation and ``KeyboardInterrupt`` report nothing.
    """

    client: ClusterClient
    host: Host
    outcome: Outcome | None = None
    """Set it inside the block to report this instead of what the block's ending implies."""
    _entered: bool = field(default=False, repr=False)

    def __enter__(self) -> ClusterRequest:
        if self._entered:
            raise RuntimeError("a ClusterRequest can be entered once")
        self._entered = True
        self.client._started(self.host)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        outcome = self.outcome
        if outcome is None:
            if exc is None:
                outcome = Outcome.SUCCESS
            elif isinstance(exc, Exception):
                outcome = self.client.classify(exc)
        self.client._finished(self.host, outcome)


class ClusterClient:
    """A ``Cluster`` picked from by service code, with its health checks and outlier detection running.

    ``async with`` it to run them (see the module docstring); ``pick`` also works outside the block, with
    every host as healthy as it was last seen.
    """

    def __init__(
        self,
        cluster: Cluster,
        config: ClusterConfig | None = None,
        *,
        classify: Classifier = outcome_from_exception,
        resolver: Resolver | None = None,
    ) -> None:
        """``config`` says what to run: ``dns`` or ``hosts_file`` discovery, ``health_check`` and the
        ``outlier_detection`` ticks; without it nothing runs and only outcomes reported by hand change a
        host's standing. A plain ``Cluster`` is safe from one thread only; ``from_config`` builds a
        ``LockedCluster``. ``resolver`` replaces the system's DNS lookups (tests, service code)."""
        self.cluster = cluster
        self.config = config
        self.classify = classify
        self._lock: threading.RLock = (
            cluster.lock if isinstance(cluster, LockedCluster) else threading.RLock()
        )
        self.discovery: Discovery | None = None
        self.health_checker: HealthChecker | None = None
        if config is not None:
            self.discovery = discovery_for(cluster, config, resolver)
            if isinstance(self.discovery, HostsFileDiscovery):
                self.discovery.update(force=True)  # a file is read at once; DNS waits for the event loop
            if config.health_check is not None:
                self.health_checker = health_checker(cluster, config.health_check)
        self._task_group: TaskGroup | None = None

    @classmethod
    def from_config(
        cls,
        config: ClusterConfig | Mapping[str, Any],
        *,
        stats: StatsStore | None = None,
        classify: Classifier = outcome_from_exception,
        resolver: Resolver | None = None,
    ) -> ClusterClient:
        """Build the cluster from a ``ClusterConfig`` (or the mapping a YAML ``clusters[]`` entry would be);
        its stats go to ``stats`` (a fresh store by default), under the same names the proxy uses."""
        if not isinstance(config, ClusterConfig):
            config = ClusterConfig.model_validate(dict(config))
        store = stats if stats is not None else StatsStore()
        return cls(LockedCluster.from_config(config, store), config, classify=classify, resolver=resolver)

    # -- what service code calls ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.cluster.name

    @property
    def hosts(self) -> list[Host]:
        """Every host, healthy or not (``host.healthy``, ``host.address``, ``host.name``)."""
        return self.cluster.hosts

    @property
    def stats(self) -> StatsStore:
        """The cluster's stats (``cluster.<name>.*``), for ``values()`` or Prometheus export."""
        return self.cluster.store

    def pick(self, key: bytes | str | None = None) -> Host:
        """The host for the next request: the cluster's ``lb_policy`` over its healthy hosts (all of them in
        panic). ``key`` matters to ``ring_hash`` and ``maglev`` only; a ``str`` is hashed as UTF-8."""
        if isinstance(key, str):
            key = key.encode()
        with self._lock:
            return self.cluster.pick(key)

    def report(self, host: Host, outcome: Outcome) -> None:
        """One request's outcome at ``host``: counted on the host (``rq_success`` / ``rq_error``) and given to
        outlier detection when the cluster has it."""
        with self._lock:
            self.cluster.report(host, outcome)

    def request(self, host: Host | None = None, *, key: bytes | str | None = None) -> ClusterRequest:
        """``with cluster.request(host) as rq:`` count one request to ``host`` (picked with ``key`` when not
        given; ``rq.host``) while it runs, and report its outcome when it ends (see ``ClusterRequest``)."""
        return ClusterRequest(self, self.pick(key) if host is None else host)

    # -- running ----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> ClusterClient:
        if self._task_group is not None:
            raise RuntimeError("this ClusterClient is already running")
        group = anyio.create_task_group()
        await group.__aenter__()
        self._task_group = group
        try:
            if isinstance(self.discovery, DnsDiscovery):
                # The first answer before the first pick (Envoy's cluster warming); a failed lookup leaves the
                # cluster without hosts until a later one succeeds.
                await self.discovery.update()
        except BaseException:
            group.cancel_scope.cancel()
            self._task_group = None
            await group.__aexit__(None, None, None)
            raise
        if self.discovery is not None:
            group.start_soon(self.discovery.run, name=f"host discovery of {self.name}")
        if self.health_checker is not None:
            group.start_soon(self.health_checker.run, name=f"health checks of {self.name}")
        if self.config is not None and self.config.outlier_detection is not None:
            group.start_soon(self._tick, self.config.outlier_detection.interval, name=f"outlier ticks of {self.name}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        group, self._task_group = self._task_group, None
        assert group is not None
        group.cancel_scope.cancel()
        return await group.__aexit__(exc_type, exc, tb)

    async def _tick(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            with self._lock:
                self.cluster.tick_outlier_detection()

    # -- bookkeeping shared with ClusterRequest ---------------------------------------------------------------

    def _started(self, host: Host) -> None:
        with self._lock:
            host.stats.rq_total.inc()
            host.stats.rq_active.inc()
            self.cluster.stats.upstream_rq_total.inc()
            self.cluster.stats.upstream_rq_active.inc()

    def _finished(self, host: Host, outcome: Outcome | None) -> None:
        with self._lock:
            host.stats.rq_active.dec()
            self.cluster.stats.upstream_rq_active.dec()
            if outcome is not None:
                self.cluster.report(host, outcome)


class ClusterClientThread:
    """A ``ClusterClient`` running on its own event loop in a daemon thread, for blocking code.

    ``with ClusterClientThread.from_config(config) as cluster:`` gives the running ``ClusterClient``; its
    ``pick``, ``report`` and ``request`` are thread-safe. Leaving the block stops the checks and the thread.
    """

    def __init__(self, client: ClusterClient, *, start_timeout: float = 10.0) -> None:
        self.client = client
        self._loop = BackgroundLoop(
            lambda: client, name=f"meshproxy cluster {client.name}", start_timeout=start_timeout
        )

    @classmethod
    def from_config(
        cls,
        config: ClusterConfig | Mapping[str, Any],
        *,
        stats: StatsStore | None = None,
        classify: Classifier = outcome_from_exception,
    ) -> ClusterClientThread:
        return cls(ClusterClient.from_config(config, stats=stats, classify=classify))

    def __enter__(self) -> ClusterClient:
        self.start()
        return self.client

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the thread; returns once the checks run (raises what stopped them from starting)."""
        self._loop.start()

    def stop(self) -> None:
        """Stop the checks; blocks until the thread has finished. Idempotent."""
        self._loop.stop()
