"""Per-method gRPC stats: Envoy's grpc_stats filter, and what it lacks.

Envoy's names under ``cluster.<cluster>.grpc.<service>.<method>.``: ``total``, ``success``, ``failure``,
``<status code>`` (``0`` ... ``16``), ``request_message_count``, ``response_message_count``,
``upstream_rq_time`` (ms). Added here:

- ``upstream_rq_time_<code>``: latency per method **and** status (a fast ``UNAVAILABLE`` and a slow ``OK``
  are different stories);
- ``active``: calls of the method in progress (a gauge);
- ``local``: calls the proxy ended itself (fault abort, deadline, unreachable upstream), counted in the
  totals above too, since that is what the client saw;
- ``grpc.<prefix>.downstream_rq_<xx>``: the HTTP view of every call, with the class taken from the gRPC
  status when there is one (``UNAVAILABLE`` is a ``5xx`` although its ``:status`` is 200), per the
  mapping gRPC documents from ``google.rpc.Code`` to HTTP; plus ``downstream_rq_total``.

The number of distinct service/method pairs is bounded (``max_methods``): past it, calls share
``_overflow``, so a client inventing paths cannot grow the stats store.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshproxy.filters._shared import OVERFLOW
from meshproxy.filters.grpc.api import GrpcCall, GrpcFilter
from meshproxy.stats import Counter, Gauge, Histogram, StatsStore

GRPC_TO_HTTP_CLASS = ("2xx", "4xx", "5xx", "4xx", "5xx", "4xx", "4xx", "4xx", "4xx", "4xx", "4xx", "4xx", "5xx",
                      "5xx", "5xx", "5xx", "4xx")  # fmt: skip
"""HTTP status class of each gRPC code (OK 200, CANCELLED 499, UNKNOWN 500, INVALID_ARGUMENT 400,
DEADLINE_EXCEEDED 504, NOT_FOUND 404, ALREADY_EXISTS 409, PERMISSION_DENIED 403, RESOURCE_EXHAUSTED 429,
FAILED_PRECONDITION 400, ABORTED 409, OUT_OF_RANGE 400, UNIMPLEMENTED 501, INTERNAL 500, UNAVAILABLE 503,
DATA_LOSS 500, UNAUTHENTICATED 401)."""

NO_METHOD = "-"


@dataclass(slots=True)
class _MethodStats:
    service: str
    method: str
    total: Counter
    success: Counter
    failure: Counter
    local: Counter
    request_messages: Counter
    response_messages: Counter
    time: Histogram
    active: Gauge
    by_status: dict[int, tuple[Counter, Histogram]]


class GrpcStatsFilter(GrpcFilter):
    """Counts every call per service, method and status."""

    def __init__(self, stats: StatsStore, cluster: str, prefix: str, *, max_methods: int = 1000) -> None:
        self.store = stats
        self.cluster = cluster
        self.prefix = prefix
        self.max_methods = max_methods
        self._methods: dict[tuple[str, str], _MethodStats] = {}
        labels = {"prefix": prefix}
        self.rq_total = stats.counter(
            f"grpc.{prefix}.downstream_rq_total", prom="meshproxy_grpc_downstream_rq", labels=labels
        )
        self._by_class = {
            klass: stats.counter(
                f"grpc.{prefix}.downstream_rq_{klass}",
                prom="meshproxy_grpc_downstream_rq_by_class",
                labels={"prefix": prefix, "code_class": klass},
            )
            for klass in ("2xx", "4xx", "5xx")
        }

    def _method(self, service: str, method: str) -> _MethodStats:
        key = (service, method)
        stats = self._methods.get(key)
        if stats is not None:
            return stats
        if len(self._methods) >= self.max_methods:
            service = method = OVERFLOW
            key = (service, method)
            stats = self._methods.get(key)
            if stats is not None:
                return stats
        store = self.store
        scope = f"cluster.{self.cluster}.grpc.{service}.{method}."
        labels = {"cluster": self.cluster, "service": service, "method": method}

        def counter(name: str, family: str) -> Counter:
            return store.counter(scope + name, prom=f"meshproxy_grpc_{family}", labels=labels)

        stats = self._methods[key] = _MethodStats(
            service=service,
            method=method,
            total=counter("total", "calls"),
            success=counter("success", "calls_success"),
            failure=counter("failure", "calls_failure"),
            local=counter("local", "calls_local"),
            request_messages=counter("request_message_count", "request_messages"),
            response_messages=counter("response_message_count", "response_messages"),
            time=store.histogram(scope + "upstream_rq_time", prom="meshproxy_grpc_call_time_ms", labels=labels),
            active=store.gauge(scope + "active", prom="meshproxy_grpc_calls_active", labels=labels),
            by_status={},
        )
        return stats

    def _status(self, stats: _MethodStats, code: int) -> tuple[Counter, Histogram]:
        entry = stats.by_status.get(code)
        if entry is None:
            scope = f"cluster.{self.cluster}.grpc.{stats.service}.{stats.method}."
            labels = {"cluster": self.cluster, "service": stats.service, "method": stats.method, "code": str(code)}
            entry = stats.by_status[code] = (
                self.store.counter(f"{scope}{code}", prom="meshproxy_grpc_calls_by_status", labels=labels),
                self.store.histogram(
                    f"{scope}upstream_rq_time_{code}", prom="meshproxy_grpc_call_time_by_status_ms", labels=labels
                ),
            )
        return entry

    def on_call_start(self, call: GrpcCall) -> None:
        stats = self._method(call.service or NO_METHOD, call.method or NO_METHOD)
        call.extra["grpc_stats"] = stats
        stats.active.value += 1

    def on_call_end(self, call: GrpcCall) -> None:
        stats = call.extra.get("grpc_stats")
        if not isinstance(stats, _MethodStats):
            stats = self._method(call.service or NO_METHOD, call.method or NO_METHOD)
        else:
            stats.active.value -= 1
        stats.total.value += 1
        code = call.grpc_status
        ms = call.duration_ms
        stats.time.record(ms)
        if code == 0:
            stats.success.value += 1
        else:
            stats.failure.value += 1
        if call.local:
            stats.local.value += 1
        stats.request_messages.value += call.request_messages
        stats.response_messages.value += call.response_messages
        self.rq_total.value += 1
        if code is not None and 0 <= code < len(GRPC_TO_HTTP_CLASS):
            counter, histogram = self._status(stats, code)
            counter.value += 1
            histogram.record(ms)
            klass = GRPC_TO_HTTP_CLASS[code]
        else:
            status = call.http_status or 0
            klass = "2xx" if 200 <= status < 300 else "4xx" if 400 <= status < 500 else "5xx"
        self._by_class[klass].value += 1
