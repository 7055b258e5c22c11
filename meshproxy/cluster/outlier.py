"""Outlier detection (Envoy's passive health checking), sans-IO: outcomes in, ejections out.

Why it looks like this:

- **One vocabulary for every protocol** (design principle 4). Sessions turn a gRPC status, an HTTP status,
  a DynamoDB error type or a Mongo ``ok: 0`` reply into an ``Outcome`` with the ``outcome_from_*`` helpers
  below and call ``report(host, outcome)``. The detector never sees a protocol detail, so one set of tests
  covers the algorithms for all of them.
- **No clock, no timer, no randomness of its own.** The clock and the random generator are injected, and
  the interval work happens when the owner calls ``tick()`` (every ``config.interval`` seconds). Tests
  drive time by hand and are exact; the wiring decides how to schedule ``tick``.
- **The detector owns the per-host state.** The balancer reads ``is_ejected(host)`` (or the ``ejected``
  flag of ``state(host)``); a host only needs a ``name``, which is also the key, so any host type fits.
- **Envoy's semantics and stat names**, so Envoy users can read the stats and tune the knobs they know.
  The one deviation: one host can always be ejected, whatever ``max_ejection_percent`` says (see
  ``docs/clusters.md``).
"""

from __future__ import annotations

import enum
import logging
import math
import random as _random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from meshproxy.stats import Counter, Gauge, StatsStore

__all__ = [
    "DYNAMO_THROTTLING",
    "MONGO_UNWELL_CODES",
    "EjectionType",
    "HostState",
    "NamedHost",
    "Outcome",
    "OutlierConfig",
    "OutlierDetector",
    "OutlierEvent",
    "outcome_from_dynamo",
    "outcome_from_grpc_status",
    "outcome_from_http_status",
    "outcome_from_mongo",
]

log = logging.getLogger("meshproxy.cluster.outlier")


# -- the shared vocabulary ----------------------------------------------------------------------------


class Outcome(enum.Enum):
    """What one request to one host told us about that host's health."""

    SUCCESS = "success"
    """The host answered sensibly. Errors that are the caller's (bad request, duplicate key, throttling)
    are successes here: the host is fine."""
    LOCAL_ORIGIN_FAILURE = "local_origin_failure"
    """The proxy could not get an answer: connect refused or timed out, connection reset, request timeout."""
    GATEWAY_FAILURE = "gateway_failure"
    """The host said it cannot serve now (HTTP 502/503/504, gRPC UNAVAILABLE / DEADLINE_EXCEEDED)."""
    UPSTREAM_ERROR = "upstream_error"
    """Any other server-side failure (HTTP 500, gRPC INTERNAL, DynamoDB InternalServerError, a Mongo error
    code that means the server is shutting down or not primary)."""


def outcome_from_http_status(status: int) -> Outcome:
    """502/503/504 are gateway failures, other 5xx upstream errors, everything else (4xx too) success."""
    if status in (502, 503, 504):
        return Outcome.GATEWAY_FAILURE
    if 500 <= status <= 599:
        return Outcome.UPSTREAM_ERROR
    return Outcome.SUCCESS


_GRPC_GATEWAY = frozenset({4, 14})  # DEADLINE_EXCEEDED, UNAVAILABLE (Envoy maps them to 504, 503)
_GRPC_UPSTREAM = frozenset({2, 13, 15})  # UNKNOWN, INTERNAL, DATA_LOSS (Envoy maps them to 500)


def outcome_from_grpc_status(code: int) -> Outcome:
    """gRPC status codes as Envoy's gRPC-to-HTTP mapping sees them, except UNIMPLEMENTED (12).

    Envoy turns UNIMPLEMENTED into 501 and so counts it as a 5xx; a method the server does not have is the
    caller's mistake and says nothing about the host's health, so here it is a success, like every status
    a client causes (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...)."""
    if code in _GRPC_GATEWAY:
        return Outcome.GATEWAY_FAILURE
    if code in _GRPC_UPSTREAM:
        return Outcome.UPSTREAM_ERROR
    return Outcome.SUCCESS


DYNAMO_THROTTLING = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
"""DynamoDB error types that mean a table's or account's capacity is used up, not that the host is unwell."""


def outcome_from_dynamo(status: int, error_type: str | None = None) -> Outcome:
    """A DynamoDB response: its HTTP status and ``__type`` (with or without the ``com.amazonaws...#`` prefix).

    Throttling is a success for host health: it is the table's provisioned capacity (or the account's
    limit) that ran out, every host would say the same, and ejecting hosts for it would only concentrate
    the load. ``InternalServerError`` is an upstream error, ``ServiceUnavailable`` a gateway failure; any
    other type falls back to the HTTP status (so a 4xx validation error is a success)."""
    short = (error_type or "").rpartition("#")[2]
    if short in DYNAMO_THROTTLING:
        return Outcome.SUCCESS
    if short == "InternalServerError":
        return Outcome.UPSTREAM_ERROR
    if short == "ServiceUnavailable":
        return Outcome.GATEWAY_FAILURE
    return outcome_from_http_status(status)


MONGO_UNWELL_CODES: dict[int, str] = {
    91: "ShutdownInProgress",
    189: "PrimarySteppedDown",
    10107: "NotWritablePrimary",
    11600: "InterruptedAtShutdown",
    11602: "InterruptedDueToReplStateChange",
    13436: "NotPrimaryOrSecondary",
}
"""Mongo ``ok: 0`` codes that say the *server* cannot serve (shutting down, stepped down, not primary).
Deliberately small: every other code (11000 DuplicateKey, 2 BadValue, 13 Unauthorized, ...) is about the
client's request and counts as a success for host health."""


def outcome_from_mongo(ok: float | bool, code: int | None = None) -> Outcome:
    """A Mongo reply's ``ok`` and ``code``. Network errors are not replies: report them as
    ``Outcome.LOCAL_ORIGIN_FAILURE`` directly."""
    if ok:
        return Outcome.SUCCESS
    if code is not None and code in MONGO_UNWELL_CODES:
        return Outcome.UPSTREAM_ERROR
    return Outcome.SUCCESS


# -- configuration --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Envoy's ``outlier_detection`` knobs and defaults; times are seconds, percentages 0-100."""

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    consecutive_local_origin_failure: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    split_external_local_origin_errors: bool = False
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_success_rate: int = 100
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: float = 1.9
    enforcing_failure_percentage: int = 0
    failure_percentage_threshold: int = 85
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    event_log_size: int = 100

    def __post_init__(self) -> None:
        for name in (
            "max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_consecutive_gateway_failure",
            "enforcing_consecutive_local_origin_failure", "enforcing_success_rate",
            "enforcing_failure_percentage", "failure_percentage_threshold",
        ):
            value = getattr(self, name)
            if not 0 <= value <= 100:
                raise ValueError(f"outlier_detection.{name} must be within [0, 100], got {value}")
        for name in ("interval", "base_ejection_time", "max_ejection_time"):
            if not getattr(self, name) > 0:
                raise ValueError(f"outlier_detection.{name} must be positive, got {getattr(self, name)}")
        for name in ("consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure",
                     "event_log_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"outlier_detection.{name} must be at least 1, got {getattr(self, name)}")

    def enforcing(self, kind: EjectionType) -> int:
        return int(getattr(self, f"enforcing_{kind.value}"))


# -- per host state, events -----------------------------------------------------------------------------


class EjectionType(enum.Enum):
    """Why a host was ejected; the values are Envoy's stat name parts."""

    CONSECUTIVE_5XX = "consecutive_5xx"
    CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"
    SUCCESS_RATE = "success_rate"
    FAILURE_PERCENTAGE = "failure_percentage"


class NamedHost(Protocol):
    """All the detector needs from a host: a name unique within the cluster."""

    @property
    def name(self) -> str: ...


@dataclass(slots=True)
class HostState:
    """What the detector knows about one host. ``ejected`` is the flag the balancer reads."""

    name: str
    ejected: bool = False
    num_ejections: int = 0
    """How many times the host was ever ejected."""
    backoff: int = 0
    """The ejection time multiplier: +1 per ejection (while ``base * backoff`` stays within the maximum),
    -1 per ``base_ejection_time`` the host then stays in service."""
    ejected_at: float = 0.0
    ejection_duration: float = 0.0
    last_unejected_at: float | None = None
    consecutive_5xx: int = 0
    consecutive_gateway_failure: int = 0
    consecutive_local_origin_failure: int = 0
    interval_successes: int = 0
    interval_failures: int = 0
    last_interval_successes: int = 0
    """The counts of the last completed interval, kept for display (``/clusters``): the running interval's
    counts start at zero at every ``tick`` and so say little at a random moment."""
    last_interval_failures: int = 0


@dataclass(frozen=True, slots=True)
class OutlierEvent:
    """One line of the event log."""

    time: float
    host: str
    action: Literal["eject", "uneject"]
    reason: EjectionType | None
    """Why it was ejected (``None`` for an uneject)."""
    num_ejections: int
    duration: float
    """For an eject, how long the host stays out."""


@dataclass(slots=True)
class _Stats:
    ejections_active: Gauge
    ejections_total: Counter
    ejections_enforced_total: Counter
    ejections_overflow: Counter
    enforced: dict[EjectionType, Counter] = field(default_factory=dict)
    detected: dict[EjectionType, Counter] = field(default_factory=dict)


def _make_stats(store: StatsStore, cluster: str) -> _Stats:
    labels = {"cluster": cluster}

    def counter(stat: str) -> Counter:
        return store.counter(
            f"cluster.{cluster}.outlier_detection.{stat}",
            prom=f"meshproxy_cluster_outlier_detection_{stat.removesuffix('_total')}", labels=labels,
        )

    stats = _Stats(
        ejections_active=store.gauge(
            f"cluster.{cluster}.outlier_detection.ejections_active",
            prom="meshproxy_cluster_outlier_detection_ejections_active", labels=labels,
        ),
        ejections_total=counter("ejections_total"),
        ejections_enforced_total=counter("ejections_enforced_total"),
        ejections_overflow=counter("ejections_overflow"),
    )
    for kind in EjectionType:
        stats.enforced[kind] = counter(f"ejections_enforced_{kind.value}")
        stats.detected[kind] = counter(f"ejections_detected_{kind.value}")
    return stats


# -- the detector ---------------------------------------------------------------------------------------


class OutlierDetector:
    """Envoy's outlier detection for one cluster.

    ``report(host, outcome)`` after every request (consecutive-error ejections happen right there);
    ``tick()`` every ``config.interval`` seconds (success rate, failure percentage, unejection).
    Outcomes for hosts the detector does not know (removed meanwhile) are ignored.
    """

    def __init__(
        self,
        config: OutlierConfig,
        hosts: Iterable[NamedHost],
        stats: StatsStore,
        cluster_name: str,
        clock: Callable[[], float],
        random: _random.Random | None = None,
    ) -> None:
        self.config = config
        self.cluster_name = cluster_name
        self._clock = clock
        self._random = random if random is not None else _random.Random()
        self._stats = _make_stats(stats, cluster_name)
        self._states: dict[str, HostState] = {}
        self.events: deque[OutlierEvent] = deque(maxlen=config.event_log_size)
        """The most recent ejections and unejections, oldest first."""
        self.set_hosts(hosts)

    # -- host set -------------------------------------------------------------------------------------

    def set_hosts(self, hosts: Iterable[NamedHost]) -> None:
        """Track exactly ``hosts``: new ones start clean, known ones keep their state, gone ones are dropped."""
        wanted = {h.name: h for h in hosts}
        for name in set(self._states) - set(wanted):
            self.remove_host(self._states[name])
        for host in wanted.values():
            self.add_host(host)

    def add_host(self, host: NamedHost) -> None:
        """Start tracking ``host`` (clean state); a host already tracked keeps its state."""
        self._states.setdefault(host.name, HostState(host.name))

    def remove_host(self, host: NamedHost) -> None:
        """Stop tracking ``host``; if it was ejected it no longer counts as ejected. Its outcomes reported
        afterwards (requests that were already on it) are ignored."""
        state = self._states.pop(host.name, None)
        if state is not None and state.ejected:
            self._stats.ejections_active.dec()

    def state(self, host: NamedHost) -> HostState:
        return self._states[host.name]

    def success_rate(self, host: NamedHost) -> float | None:
        """Percent of successes among the outcomes of ``host`` in the last completed interval (as Envoy's
        ``/clusters`` shows it, but without a minimum request volume); ``None`` when it had none or the host
        is not tracked."""
        state = self._states.get(host.name)
        if state is None:
            return None
        total = state.last_interval_successes + state.last_interval_failures
        return 100.0 * state.last_interval_successes / total if total else None

    def is_ejected(self, host: NamedHost) -> bool:
        state = self._states.get(host.name)
        return state is not None and state.ejected

    def ejected_hosts(self) -> list[str]:
        """Names of the hosts currently ejected."""
        return [s.name for s in self._states.values() if s.ejected]

    # -- the data path --------------------------------------------------------------------------------

    def report(self, host: NamedHost, outcome: Outcome) -> None:
        """Record one request's outcome; eject ``host`` at once if a consecutive-error threshold is reached."""
        st = self._states.get(host.name)
        if st is None:
            return
        cfg = self.config
        if outcome is Outcome.SUCCESS:
            st.interval_successes += 1
            st.consecutive_5xx = st.consecutive_gateway_failure = st.consecutive_local_origin_failure = 0
            return
        if outcome is Outcome.LOCAL_ORIGIN_FAILURE:
            if cfg.split_external_local_origin_errors:
                # Kept apart from the host's own answers: the network or the proxy may be at fault.
                st.consecutive_local_origin_failure += 1
                if st.consecutive_local_origin_failure >= cfg.consecutive_local_origin_failure:
                    st.consecutive_local_origin_failure = 0
                    self._try_eject(st, EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE)
                return
            outcome = Outcome.GATEWAY_FAILURE  # what Envoy does: a connect failure or timeout becomes a 503
        st.interval_failures += 1
        if outcome is Outcome.GATEWAY_FAILURE:
            st.consecutive_gateway_failure += 1
            if st.consecutive_gateway_failure >= cfg.consecutive_gateway_failure:
                st.consecutive_gateway_failure = 0
                self._try_eject(st, EjectionType.CONSECUTIVE_GATEWAY_FAILURE)
        else:
            st.consecutive_gateway_failure = 0
        st.consecutive_5xx += 1  # gateway failures are 5xx too, as in Envoy
        if st.consecutive_5xx >= cfg.consecutive_5xx:
            st.consecutive_5xx = 0
            self._try_eject(st, EjectionType.CONSECUTIVE_5XX)

    # -- the interval ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """The interval sweep: uneject hosts whose time is up (and shrink the ejection multiplier of hosts
        that stayed in service for ``base_ejection_time``), run success rate and failure percentage over
        this interval's counts, then start a new interval."""
        now = self._clock()
        base = self.config.base_ejection_time
        for st in self._states.values():
            if st.ejected:
                if now - st.ejected_at >= st.ejection_duration:
                    self._uneject(st, now)
            elif st.last_unejected_at is not None and st.backoff > 0 and now - st.last_unejected_at >= base:
                st.backoff -= 1
                st.last_unejected_at = now
        self._success_rate()
        self._failure_percentage()
        for st in self._states.values():
            st.last_interval_successes, st.last_interval_failures = st.interval_successes, st.interval_failures
            st.interval_successes = st.interval_failures = 0

    def _success_rate(self) -> None:
        cfg = self.config
        rates = {
            st.name: 100.0 * st.interval_successes / volume
            for st in self._states.values()
            if (volume := st.interval_successes + st.interval_failures) >= cfg.success_rate_request_volume
        }
        if len(rates) < cfg.success_rate_minimum_hosts:
            return
        mean = sum(rates.values()) / len(rates)
        stdev = math.sqrt(sum((r - mean) ** 2 for r in rates.values()) / len(rates))
        threshold = mean - cfg.success_rate_stdev_factor * stdev
        for name, rate in rates.items():
            if rate < threshold:
                self._try_eject(self._states[name], EjectionType.SUCCESS_RATE)

    def _failure_percentage(self) -> None:
        cfg = self.config
        failing = {
            st.name: 100.0 * st.interval_failures / volume
            for st in self._states.values()
            if (volume := st.interval_successes + st.interval_failures) >= cfg.failure_percentage_request_volume
        }
        if len(failing) < cfg.failure_percentage_minimum_hosts:
            return
        for name, percent in failing.items():
            if percent >= cfg.failure_percentage_threshold:
                self._try_eject(self._states[name], EjectionType.FAILURE_PERCENTAGE)

    # -- ejecting -------------------------------------------------------------------------------------

    def _room_for_one_more(self) -> bool:
        """Envoy's rule (the share already ejected is below ``max_ejection_percent``), plus: one host may
        always go, even when ``max_ejection_percent`` is 0 or rounds to less than one host."""
        active = sum(1 for s in self._states.values() if s.ejected)
        return active == 0 or 100.0 * active / len(self._states) < self.config.max_ejection_percent

    def _try_eject(self, st: HostState, kind: EjectionType) -> None:
        if st.ejected:
            return
        if not self._room_for_one_more():
            self._stats.ejections_overflow.inc()
            log.info("outlier: cluster %s host %s not ejected (%s): max_ejection_percent reached",
                     self.cluster_name, st.name, kind.value)
            return
        self._stats.ejections_total.inc()
        self._stats.detected[kind].inc()
        enforcing = self.config.enforcing(kind)
        if enforcing <= 0 or (enforcing < 100 and self._random.randrange(100) >= enforcing):
            log.info("outlier: cluster %s host %s detected (%s) but not enforced",
                     self.cluster_name, st.name, kind.value)
            return
        cfg = self.config
        now = self._clock()
        if st.backoff * cfg.base_ejection_time < cfg.max_ejection_time + cfg.base_ejection_time:
            st.backoff += 1
        st.num_ejections += 1
        st.ejected = True
        st.ejected_at = now
        st.ejection_duration = min(cfg.base_ejection_time * st.backoff,
                                   max(cfg.base_ejection_time, cfg.max_ejection_time))
        self._stats.ejections_active.inc()
        self._stats.ejections_enforced_total.inc()
        self._stats.enforced[kind].inc()
        self.events.append(OutlierEvent(now, st.name, "eject", kind, st.num_ejections, st.ejection_duration))
        log.warning("outlier: cluster %s host %s ejected (%s) for %gs, ejection #%d",
                    self.cluster_name, st.name, kind.value, st.ejection_duration, st.num_ejections)

    def _uneject(self, st: HostState, now: float) -> None:
        st.ejected = False
        st.last_unejected_at = now
        st.consecutive_5xx = st.consecutive_gateway_failure = st.consecutive_local_origin_failure = 0
        self._stats.ejections_active.dec()
        self.events.append(OutlierEvent(now, st.name, "uneject", None, st.num_ejections, 0.0))
        log.info("outlier: cluster %s host %s back in service", self.cluster_name, st.name)
