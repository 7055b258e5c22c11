"""Counters, gauges and histograms under Envoy-style names, exported as Envoy text, JSON and Prometheus.

Why it looks like this:

- **The hot path pays one attribute add.** A filter resolves its stat objects once (when it first sees a
  command or collection) and then only does ``counter.value += 1`` or ``histogram.record(ms)``. The stat
  objects are tiny slotted classes with no lock, no label lookup and no callback; at ~100k Mongo operations
  a second, with several counters each, anything heavier shows up in the proxy's throughput. Everything
  costly (sorting, quantiles, label rendering) happens when someone reads ``/stats``.
- **Two names per stat.** Each stat has the flat name Envoy users know (``mongo.app.cmd.find.total``),
  which ``/stats`` prints, and a Prometheus *family* plus label values
  (``meshproxy_mongo_command_total{prefix="app",command="find",...}``), which ``/stats/prometheus`` prints.
  Prometheus users aggregate over labels instead of parsing flattened names.
- **Plain data, easy to merge.** A counter is an int, a gauge a number, a histogram a list of per-bucket
  counts with a sum, min and max over fixed bucket bounds. Worker processes (later) can ship these and a
  supervisor can add them up bucket by bucket.

Registration (``StatsStore.counter`` / ``gauge`` / ``histogram``) takes a lock so that a proxy running in a
background thread and a reader in another thread (tests, ``ProxyThread``) see a consistent registry;
readers take a snapshot of the registry, so rendering never blocks the data path.
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

__all__ = [
    "DEFAULT_BUCKETS",
    "ENVOY_QUANTILES",
    "Counter",
    "Gauge",
    "Histogram",
    "StatsError",
    "StatsStore",
    "escape_name",
]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
    1800000, 3600000,
)
"""Envoy's default histogram bucket upper bounds (``ConfigHelper`` / ``HistogramSettingsImpl``): they are
milliseconds for latency histograms, but any unit works. A value above the last bound is counted in an
overflow bucket (Prometheus ``le="+Inf"``)."""

ENVOY_QUANTILES: tuple[float, ...] = (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)
"""The percentiles Envoy's ``/stats`` prints for every histogram, in that order."""

Kind = Literal["counter", "gauge", "histogram"]

_PROM_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_PROM_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_NOT_PROM = re.compile(r"[^a-zA-Z0-9_]")
_ESCAPED = re.compile(r"[\s\x00-\x1f\x7f%]")


def escape_name(name: str) -> str:
    """``name`` with whitespace, control characters and ``%`` written as ``%XX`` (``my orders`` ->
    ``my%20orders``, ``100%`` -> ``100%25``; other whitespace as its UTF-8 bytes).

    Flat names carry data the proxy sees (a collection called ``my orders``, a ``$comment`` callsite);
    in ``/stats`` a name must stay one token before ``": "``. Escaping rather than refusing keeps counting
    whatever clients send; escaping ``%`` too keeps distinct names distinct."""
    if not _ESCAPED.search(name):
        return name
    return _ESCAPED.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), name)


class StatsError(ValueError):
    """A stat was registered inconsistently: a name reused with another kind or other labels, a Prometheus
    family given two sets of label keys, or an invalid name. Always a programming error, raised at
    registration, never while counting."""


# -- the stat objects: what the data path touches -----------------------------------------------------


class Counter:
    """A monotonically increasing count. Hot path: ``counter.value += 1`` (or ``inc()``)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: int = 0

    def inc(self, n: int = 1) -> None:
        self.value += n

    def __repr__(self) -> str:
        return f"Counter({self.value})"


class Gauge:
    """A value that goes up and down (active connections, in-flight operations)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, n: float = 1) -> None:
        self.value += n

    def dec(self, n: float = 1) -> None:
        self.value -= n

    def set(self, value: float) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Gauge({self.value})"


class Histogram:
    """Counts of recorded values per fixed bucket, with their sum, min and max.

    ``counts[i]`` holds values ``v`` with ``bounds[i-1] < v <= bounds[i]`` (Prometheus ``le`` semantics);
    ``counts[-1]`` is the overflow bucket above the last bound. ``record`` is one ``bisect`` and four
    attribute updates; the total count is derived (``count``) rather than maintained.
    """

    __slots__ = ("bounds", "counts", "max", "min", "sum")

    def __init__(self, bounds: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.bounds: tuple[float, ...] = _check_bounds(bounds)
        self.counts: list[int] = [0] * (len(self.bounds) + 1)
        self.sum: float = 0.0
        self.min: float = math.inf
        self.max: float = -math.inf

    def record(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, values <= bound)`` for every bound, then ``(inf, count)``: Prometheus buckets."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float:
        """An estimate of the ``q`` quantile (``0 <= q <= 1``); ``nan`` when nothing was recorded.

        Within the bucket that holds the rank, values are assumed spread evenly between the bucket's
        edges, with the edges narrowed to the recorded min and max (so ``quantile(0)`` is the minimum,
        ``quantile(1)`` the maximum, and a histogram of one repeated value answers that value exactly).
        The error is at most the width of one bucket, as with Prometheus' ``histogram_quantile``.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {q}")
        counts = list(self.counts)  # a snapshot: the data path may record meanwhile (another thread)
        total = sum(counts)
        if total == 0:
            return math.nan
        lo_all, hi_all = self.min, self.max
        if q == 0.0:
            return lo_all
        rank = q * total
        before = 0
        for i, n in enumerate(counts):
            if n and before + n >= rank:
                lower = self.bounds[i - 1] if i > 0 else lo_all
                upper = self.bounds[i] if i < len(self.bounds) else hi_all
                lower = max(lower, lo_all)
                upper = min(upper, hi_all)
                return lower + (upper - lower) * ((rank - before) / n)
            before += n
        return hi_all  # unreachable unless counts changed under us

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s recordings into this one (same bounds), e.g. a worker's into the supervisor's."""
        if other.bounds != self.bounds:
            raise StatsError("cannot merge histograms with different bucket bounds")
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, sum={self.sum})"


def _check_bounds(bounds: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(b) for b in bounds)
    if not out:
        raise StatsError("a histogram needs at least one bucket bound")
    if any(not math.isfinite(b) for b in out) or any(a >= b for a, b in pairwise(out)):
        raise StatsError(f"bucket bounds must be finite and strictly increasing, got {bounds!r}")
    return out


Stat = Counter | Gauge | Histogram

# -- the registry ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    name: str
    kind: Kind
    stat: Stat
    family: str
    label_values: tuple[str, ...]
    given: tuple[str | None, dict[str, str] | None]
    """``prom`` and ``labels`` as first asked for: a repeat of the same call is answered without the lock."""


@dataclass(slots=True)
class _Family:
    name: str
    kind: Kind
    label_keys: tuple[str, ...]
    documentation: str
    bounds: tuple[float, ...] | None
    members: dict[tuple[str, ...], _Entry] = field(default_factory=dict)


_KIND_CLASS: dict[Kind, type[Counter] | type[Gauge] | type[Histogram]] = {
    "counter": Counter,
    "gauge": Gauge,
    "histogram": Histogram,
}


def _exported_names(kind: Kind, family: str) -> set[str]:
    """Every metric name a family puts in the Prometheus exposition (TYPE line and samples)."""
    if kind == "counter":
        return {family, f"{family}_total", f"{family}_created"}
    if kind == "histogram":
        return {family, f"{family}_bucket", f"{family}_count", f"{family}_sum", f"{family}_created"}
    return {family}


def _template(name: str, labels: Mapping[str, str]) -> str:
    """The flat name with label values replaced by ``<key>``: ``mongo.app.cmd.find.total`` with
    ``{prefix: app, command: find}`` gives ``mongo.<prefix>.cmd.<command>.total``.

    Used as the Prometheus HELP text, so a reader of ``/stats/prometheus`` can find the Envoy-style name.
    Label values are matched as whole dot-separated segments (a host ``127.0.0.1:27017`` spans several)."""
    tokens = name.split(".")
    for key, value in sorted(labels.items(), key=lambda kv: -len(kv[1])):
        parts = value.split(".")
        width = len(parts)
        for i in range(len(tokens) - width + 1):
            if tokens[i : i + width] == parts:
                tokens[i : i + width] = [f"<{key}>"]
                break
    return ".".join(tokens)


class StatsStore:
    """All stats of one proxy process, by flat (Envoy) name.

    ``counter`` / ``gauge`` / ``histogram`` create a stat or return the existing one of that name; keep the
    returned object and update it directly on the hot path.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._families: dict[str, _Family] = {}
        self._exported: dict[str, str] = {}  # exported Prometheus name -> family that owns it
        self._escaped: dict[str, str] = {}  # names as asked for -> as stored (see ``escape_name``)
        self._lock = threading.Lock()

    # -- registration ---------------------------------------------------------------------------------

    def counter(
        self,
        name: str,
        *,
        prom: str | None = None,
        labels: Mapping[str, str] | None = None,
        doc: str | None = None,
    ) -> Counter:
        """The counter named ``name``.

        ``prom`` is the Prometheus family without ``_total`` (a trailing ``_total`` is dropped); ``labels``
        its label values for this stat; ``doc`` the family's HELP text (default: the Envoy name pattern).
        Without ``prom`` the family is ``meshproxy_`` + the flat name with ``.`` -> ``_``, unlabelled.
        """
        stat = self._register(name, "counter", prom, labels, doc, None)
        assert isinstance(stat, Counter)
        return stat

    def gauge(
        self,
        name: str,
        *,
        prom: str | None = None,
        labels: Mapping[str, str] | None = None,
        doc: str | None = None,
    ) -> Gauge:
        stat = self._register(name, "gauge", prom, labels, doc, None)
        assert isinstance(stat, Gauge)
        return stat

    def histogram(
        self,
        name: str,
        *,
        prom: str | None = None,
        labels: Mapping[str, str] | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        doc: str | None = None,
    ) -> Histogram:
        """The histogram named ``name``; every histogram of one Prometheus family has the same ``buckets``."""
        stat = self._register(name, "histogram", prom, labels, doc, _check_bounds(buckets))
        assert isinstance(stat, Histogram)
        return stat

    def _register(
        self,
        name: str,
        kind: Kind,
        prom: str | None,
        labels: Mapping[str, str] | None,
        documentation: str | None,
        bounds: tuple[float, ...] | None,
    ) -> Stat:
        entry = self._entries.get(name)  # fast path, no lock: dict reads are atomic
        if entry is None and name in self._escaped:
            entry = self._entries.get(self._escaped[name])
        if (
            entry is not None
            and entry.kind == kind
            and ((prom is None and labels is None) or entry.given == (prom, labels))
        ):
            if bounds is not None and bounds != self._families[entry.family].bounds:
                raise StatsError(f"histogram {name!r} already exists with other bucket bounds")
            return entry.stat
        with self._lock:
            return self._register_locked(name, kind, prom, labels, documentation, bounds)

    def _register_locked(
        self,
        name: str,
        kind: Kind,
        prom: str | None,
        labels: Mapping[str, str] | None,
        documentation: str | None,
        bounds: tuple[float, ...] | None,
    ) -> Stat:
        if not name:
            raise StatsError("a stat needs a name")
        escaped = escape_name(name)
        if escaped != name:
            self._escaped[name] = escaped
            name = escaped
        given = (prom, None if labels is None else dict(labels))
        labels = dict(labels or {})
        if prom is None:
            if labels:
                raise StatsError(f"{name!r}: labels need an explicit Prometheus family name (prom=...)")
            family_name = "meshproxy_" + _NOT_PROM.sub("_", name)
        else:
            family_name = prom
        if kind == "counter":
            family_name = family_name.removesuffix("_total")
        if not _PROM_NAME.match(family_name):
            raise StatsError(f"{name!r}: invalid Prometheus metric name {family_name!r}")
        for key, value in labels.items():
            if not _PROM_LABEL.match(key) or key.startswith("__") or (kind == "histogram" and key == "le"):
                raise StatsError(f"{name!r}: invalid Prometheus label name {key!r}")
            if not isinstance(value, str):
                raise StatsError(f"{name!r}: label {key!r} must be a string, got {type(value).__name__}")

        existing = self._entries.get(name)
        if existing is not None:
            if existing.kind != kind:
                raise StatsError(f"stat {name!r} is a {existing.kind}, not a {kind}")
            family = self._families[existing.family]
            if bounds is not None and bounds != family.bounds:
                raise StatsError(f"histogram {name!r} already exists with other bucket bounds")
            wanted = tuple(labels.get(k, "") for k in family.label_keys)
            if (prom is not None or labels) and (
                family_name != existing.family
                or set(labels) != set(family.label_keys)
                or wanted != existing.label_values
            ):
                raise StatsError(
                    f"stat {name!r} already exists as {existing.family}"
                    f"{dict(zip(family.label_keys, existing.label_values, strict=True))}"
                )
            return existing.stat

        known = self._families.get(family_name)
        if known is None:
            exported = _exported_names(kind, family_name)
            owner = next((self._exported[n] for n in exported if n in self._exported), None)
            if owner is not None:
                raise StatsError(f"{name!r}: Prometheus family {family_name!r} clashes with {owner!r}")
            family = _Family(
                name=family_name,
                kind=kind,
                label_keys=tuple(labels),
                documentation=documentation or f"meshproxy stat {_template(name, labels)}",
                bounds=bounds,
            )
        else:
            family = known
            if family.kind != kind:
                raise StatsError(
                    f"{name!r}: Prometheus family {family_name!r} is a {family.kind}, not a {kind}"
                )
            if set(labels) != set(family.label_keys):
                raise StatsError(
                    f"{name!r}: Prometheus family {family_name!r} has labels {sorted(family.label_keys)}, "
                    f"not {sorted(labels)}"
                )
            if family.bounds != bounds:
                raise StatsError(f"{name!r}: histograms of family {family_name!r} must share bucket bounds")
        label_values = tuple(labels[k] for k in family.label_keys)
        clash = family.members.get(label_values)
        if clash is not None:
            raise StatsError(
                f"{name!r} and {clash.name!r} would be the same Prometheus series {family_name}"
                f"{dict(zip(family.label_keys, label_values, strict=True))}"
            )
        stat: Stat = Histogram(bounds) if kind == "histogram" and bounds is not None else _KIND_CLASS[kind]()
        entry = _Entry(
            name=name, kind=kind, stat=stat, family=family_name, label_values=label_values, given=given
        )
        if family_name not in self._families:
            self._families[family_name] = family
            for sample_name in _exported_names(kind, family_name):
                self._exported[sample_name] = family_name
        family.members[label_values] = entry
        self._entries[name] = entry
        return stat

    # -- reading --------------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._escaped.get(name, name) in self._entries

    def _snapshot(self, pattern: re.Pattern[str] | None = None, used_only: bool = False) -> list[_Entry]:
        with self._lock:
            entries = list(self._entries.values())
        if pattern is not None:
            entries = [e for e in entries if pattern.search(e.name)]
        if used_only:
            entries = [e for e in entries if _used(e.stat)]
        entries.sort(key=lambda e: e.name)
        return entries

    def values(self) -> dict[str, int | float]:
        """Counters and gauges by flat name (histograms: see ``histogram_summary``)."""
        return {
            e.name: e.stat.value
            for e in self._snapshot()
            if isinstance(e.stat, Counter | Gauge)
        }

    def histogram_summary(self, name: str) -> dict[str, Any]:
        """Count, sum, min, max, mean, Envoy's percentiles and the cumulative buckets of one histogram."""
        entry = self._entries.get(self._escaped.get(name, name))
        if entry is None or not isinstance(entry.stat, Histogram):
            raise KeyError(name)
        h = entry.stat
        count = h.count
        return {
            "count": count,
            "sum": h.sum,
            "min": h.min if count else math.nan,
            "max": h.max if count else math.nan,
            "mean": h.sum / count if count else math.nan,
            "quantiles": {f"P{_num(p)}": h.quantile(p / 100) for p in ENVOY_QUANTILES},
            "buckets": h.cumulative(),
        }

    def text(self, pattern: re.Pattern[str] | None = None, *, used_only: bool = False) -> str:
        """Envoy's ``/stats`` text: one ``name: value`` line per stat, sorted by name.

        Histograms are printed as Envoy prints them, ``name: P0(nan,v) P25(nan,v) ... P100(nan,v)``: Envoy's
        pair is (interval, cumulative); we keep only cumulative data, so the interval part is always ``nan``.
        A histogram with no recordings prints ``name: No recorded values``, as Envoy does.
        """
        lines = []
        for e in self._snapshot(pattern, used_only):
            stat = e.stat
            if isinstance(stat, Histogram):
                if stat.count == 0:
                    lines.append(f"{e.name}: No recorded values")
                else:
                    lines.append(
                        f"{e.name}: "
                        + " ".join(f"P{_num(p)}(nan,{_num(stat.quantile(p / 100))})" for p in ENVOY_QUANTILES)
                    )
            else:
                lines.append(f"{e.name}: {_num(stat.value)}")
        return "".join(line + "\n" for line in lines)

    def json(self, pattern: re.Pattern[str] | None = None, *, used_only: bool = False) -> dict[str, Any]:
        """Envoy's ``/stats?format=json`` shape::

            {"stats": [{"name": "a.b", "value": 1}, ...,
                       {"histograms": {"supported_quantiles": [0, 25, ...],
                                       "computed_quantiles": [{"name": "h", "values":
                                           [{"interval": null, "cumulative": 1.5}, ...]}]}}]}

        The histograms element is present only when some histogram matched; ``cumulative`` is ``null`` for
        a histogram with no recordings, and ``interval`` is always ``null`` (see ``text``).
        """
        stats: list[dict[str, Any]] = []
        computed: list[dict[str, Any]] = []
        for e in self._snapshot(pattern, used_only):
            stat = e.stat
            if isinstance(stat, Histogram):
                empty = stat.count == 0
                computed.append(
                    {
                        "name": e.name,
                        "values": [
                            {"interval": None, "cumulative": None if empty else round(stat.quantile(p / 100), 3)}
                            for p in ENVOY_QUANTILES
                        ],
                    }
                )
            else:
                stats.append({"name": e.name, "value": stat.value})
        if computed:
            stats.append(
                {"histograms": {"supported_quantiles": list(ENVOY_QUANTILES), "computed_quantiles": computed}}
            )
        return {"stats": stats}

    def prometheus(self, pattern: re.Pattern[str] | None = None, *, used_only: bool = False) -> bytes:
        """Prometheus text exposition format 0.0.4, rendered by ``prometheus_client``.

        One family per ``prom`` name, one series per stat, labelled; counters get ``_total``; histograms
        export ``_bucket{le=...}`` (cumulative, the same bounds as the store, e.g. milliseconds),
        ``_sum`` and ``_count``. ``pattern`` filters on the flat (Envoy) name, as Envoy does.
        """
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self, pattern, used_only))
        data: bytes = generate_latest(registry)
        return data

    def families(self, pattern: re.Pattern[str] | None = None, *, used_only: bool = False) -> Iterator[Any]:
        """The Prometheus metric families (``prometheus_client`` objects), e.g. for a custom registry."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        entries = self._snapshot(pattern, used_only)
        with self._lock:
            families = {name: self._families[name] for name in {e.family for e in entries}}
        by_family: dict[str, list[_Entry]] = {}
        for e in entries:
            by_family.setdefault(e.family, []).append(e)
        for family_name in sorted(by_family):
            family = families[family_name]
            keys = list(family.label_keys)
            members = sorted(by_family[family_name], key=lambda e: e.label_values)
            if family.kind == "counter":
                counter = CounterMetricFamily(family_name, family.documentation, labels=keys)
                for e in members:
                    counter.add_metric(list(e.label_values), e.stat.value)  # type: ignore[union-attr]
                yield counter
            elif family.kind == "gauge":
                gauge = GaugeMetricFamily(family_name, family.documentation, labels=keys)
                for e in members:
                    gauge.add_metric(list(e.label_values), e.stat.value)  # type: ignore[union-attr]
                yield gauge
            else:
                histogram = HistogramMetricFamily(family_name, family.documentation, labels=keys)
                les = [_go_float(b) for b in (*(family.bounds or ()), math.inf)]  # shared by the family
                for e in members:
                    h = e.stat
                    assert isinstance(h, Histogram)
                    buckets = [(le, float(n)) for le, (_, n) in zip(les, h.cumulative(), strict=True)]
                    histogram.add_metric(list(e.label_values), buckets, h.sum)
                yield histogram


class _Collector:
    """A ``prometheus_client`` custom collector over a store (read at scrape time)."""

    def __init__(self, store: StatsStore, pattern: re.Pattern[str] | None, used_only: bool) -> None:
        self._store = store
        self._pattern = pattern
        self._used_only = used_only

    def collect(self) -> Iterator[Any]:
        return self._store.families(self._pattern, used_only=self._used_only)


def _used(stat: Stat) -> bool:
    if isinstance(stat, Histogram):
        return any(stat.counts)
    return stat.value != 0


def _go_float(bound: float) -> str:
    """A bucket bound as Prometheus writes ``le`` (Go's float formatting: ``1.0``, ``1.8e+06``, ``+Inf``)."""
    from prometheus_client.utils import floatToGoString

    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


def _num(value: float) -> str:
    """Compact number text: integers without ``.0``, others to three decimals (``nan`` as ``nan``)."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    rounded = round(value, 3)
    if rounded.is_integer() and abs(rounded) < 1e15:
        return str(int(rounded))
    return repr(rounded)
