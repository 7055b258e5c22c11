"""The stats store: one object per name, consistent Prometheus families, Envoy text/JSON and Prometheus output."""

from __future__ import annotations

import itertools
import math
import re
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from meshproxy.stats import DEFAULT_BUCKETS, Counter, Gauge, Histogram, StatsError, StatsStore, escape_name


def _families(store: StatsStore) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(store.prometheus().decode())}


def _command_counter(store: StatsStore, command: str, collection: str = "c") -> Counter:
    return store.counter(
        f"mongo.app.collection.{collection}.cmd.{command}.total",
        prom="meshproxy_mongo_command",
        labels={"prefix": "app", "db": "t", "collection": collection, "command": command},
    )


# -- registration -----------------------------------------------------------------------------------------


def test_asking_twice_for_a_name_returns_the_same_object() -> None:
    store = StatsStore()
    assert store.counter("a.count") is store.counter("a.count")
    assert store.gauge("a.gauge") is store.gauge("a.gauge")
    assert store.histogram("a.hist") is store.histogram("a.hist")
    assert _command_counter(store, "find") is _command_counter(store, "find")
    assert store.counter("mongo.app.collection.c.cmd.find.total") is _command_counter(store, "find")


def test_a_name_reused_with_another_kind_raises() -> None:
    store = StatsStore()
    store.counter("x.y")
    with pytest.raises(StatsError, match="is a counter, not a gauge"):
        store.gauge("x.y")
    with pytest.raises(StatsError, match="is a counter, not a histogram"):
        store.histogram("x.y")


def test_a_name_reused_with_other_labels_or_family_raises() -> None:
    store = StatsStore()
    _command_counter(store, "find")
    with pytest.raises(StatsError, match="already exists"):
        store.counter(
            "mongo.app.collection.c.cmd.find.total",
            prom="meshproxy_mongo_command",
            labels={"prefix": "app", "db": "OTHER", "collection": "c", "command": "find"},
        )
    with pytest.raises(StatsError, match="already exists"):
        store.counter("mongo.app.collection.c.cmd.find.total", prom="meshproxy_other", labels={"a": "b"})


def test_label_keys_within_a_prometheus_family_must_be_the_same() -> None:
    store = StatsStore()
    _command_counter(store, "find")
    with pytest.raises(StatsError, match="has labels"):
        store.counter("mongo.x.cmd.find.total", prom="meshproxy_mongo_command", labels={"command": "find"})


def test_label_keys_may_come_in_any_order() -> None:
    store = StatsStore()
    store.counter("a.1", prom="meshproxy_f", labels={"x": "1", "y": "2"})
    store.counter("a.2", prom="meshproxy_f", labels={"y": "4", "x": "3"})
    (family,) = _families(store).values()
    assert {tuple(sorted(s.labels.items())) for s in family.samples} == {  # type: ignore[attr-defined]
        (("x", "1"), ("y", "2")),
        (("x", "3"), ("y", "4")),
    }


def test_a_prometheus_family_has_one_kind() -> None:
    store = StatsStore()
    store.counter("a.b", prom="meshproxy_thing", labels={"k": "1"})
    with pytest.raises(StatsError, match="is a counter, not a gauge"):
        store.gauge("a.c", prom="meshproxy_thing", labels={"k": "2"})


def test_exported_prometheus_names_of_two_families_cannot_collide() -> None:
    store = StatsStore()
    store.counter("a.requests", prom="meshproxy_requests")  # exports meshproxy_requests_total
    with pytest.raises(StatsError, match="clashes"):
        store.gauge("a.requests_total", prom="meshproxy_requests_total")
    store.histogram("a.latency", prom="meshproxy_latency")
    with pytest.raises(StatsError, match="clashes"):
        store.counter("a.latency_count", prom="meshproxy_latency_count")


def test_two_flat_names_cannot_become_the_same_prometheus_series() -> None:
    store = StatsStore()
    store.counter("a.b")
    with pytest.raises(StatsError, match="same Prometheus series"):
        store.counter("a_b")  # both derive meshproxy_a_b, unlabelled


def test_names_carrying_client_data_are_escaped_not_refused() -> None:
    store = StatsStore()
    spaced = store.counter(
        "mongo.app.collection.my orders.callsite.list\tby sku.query.total",
        prom="meshproxy_mongo_callsite_query",
        labels={"collection": "my orders", "callsite": "list\tby sku"},
    )
    spaced.inc()
    assert store.counter("mongo.app.collection.my orders.callsite.list\tby sku.query.total") is spaced
    assert "mongo.app.collection.my orders.callsite.list\tby sku.query.total" in store
    assert store.text() == "mongo.app.collection.my%20orders.callsite.list%09by%20sku.query.total: 1\n"
    # escaping keeps distinct names distinct, even one that already holds an escape sequence
    assert store.counter("a.my%20orders") is not store.counter("a.my orders")
    assert "a.my%2520orders" in store.values()
    assert escape_name("no\u00a0break") == "no%C2%A0break"
    families = _families(store)
    (sample,) = families["meshproxy_mongo_callsite_query"].samples  # type: ignore[attr-defined]
    assert sample.labels == {"collection": "my orders", "callsite": "list\tby sku"}


def test_labels_need_an_explicit_prometheus_family() -> None:
    with pytest.raises(StatsError, match="prom="):
        StatsStore().counter("a.b", labels={"k": "v"})


@pytest.mark.parametrize(
    ("name", "prom", "labels"),
    [
        ("", None, None),
        ("a.b", "1starts_with_digit", None),
        ("a.b", "has-dash", None),
        ("a.b", "meshproxy_ok", {"bad-key": "v"}),
        ("a.b", "meshproxy_ok", {"__reserved": "v"}),
    ],
)
def test_invalid_names_are_refused_at_registration(
    name: str, prom: str | None, labels: dict[str, str] | None
) -> None:
    with pytest.raises(StatsError):
        StatsStore().counter(name, prom=prom, labels=labels)


def test_a_histogram_cannot_use_the_le_label() -> None:
    with pytest.raises(StatsError, match="label name 'le'"):
        StatsStore().histogram("a.h", prom="meshproxy_h", labels={"le": "1"})


def test_histograms_of_one_family_share_their_bucket_bounds() -> None:
    store = StatsStore()
    store.histogram("a.1", prom="meshproxy_h", labels={"k": "1"})
    with pytest.raises(StatsError, match="share bucket bounds"):
        store.histogram("a.2", prom="meshproxy_h", labels={"k": "2"}, buckets=(1, 2, 3))
    with pytest.raises(StatsError, match="other bucket bounds"):
        store.histogram("a.1", buckets=(1, 2, 3))


@pytest.mark.parametrize("bounds", [(), (1, 1), (5, 1), (1, math.inf), (math.nan,)])
def test_bucket_bounds_must_be_finite_and_strictly_increasing(bounds: tuple[float, ...]) -> None:
    with pytest.raises(StatsError):
        Histogram(bounds)


def test_concurrent_registration_of_one_name_yields_one_object() -> None:
    store = StatsStore()
    seen: list[Counter] = []
    barrier = threading.Barrier(8)

    def register() -> None:
        barrier.wait()
        for i in range(200):
            seen.append(_command_counter(store, "find", collection=f"c{i}"))

    threads = [threading.Thread(target=register) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 200
    assert len(store.values()) == 200


# -- counting ---------------------------------------------------------------------------------------------


def test_counters_count_by_attribute_and_by_inc() -> None:
    store = StatsStore()
    counter = store.counter("mongo.app.op_msg")
    counter.value += 1
    counter.inc()
    counter.inc(5)
    assert store.values()["mongo.app.op_msg"] == 7


def test_gauges_go_up_down_and_can_be_set() -> None:
    gauge = StatsStore().gauge("mongo.app.op_active")
    gauge.inc()
    gauge.inc(3)
    gauge.dec()
    assert gauge.value == 3
    gauge.set(1.5)
    assert gauge.value == 1.5
    assert isinstance(gauge, Gauge)


def test_histogram_buckets_are_inclusive_upper_bounds_with_an_overflow_bucket() -> None:
    h = Histogram((1, 5, 10))
    for value in (0.2, 1, 1.0001, 5, 10, 10.5, 1e9):
        h.record(value)
    assert h.counts == [2, 2, 1, 2]  # <=1: 0.2, 1 | <=5: 1.0001, 5 | <=10: 10 | overflow: 10.5, 1e9
    assert h.count == 7
    assert h.sum == pytest.approx(0.2 + 1 + 1.0001 + 5 + 10 + 10.5 + 1e9)
    assert h.cumulative() == [(1, 2), (5, 4), (10, 5), (math.inf, 7)]


def test_default_buckets_are_envoys() -> None:
    assert DEFAULT_BUCKETS == (
        0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
        1800000, 3600000,
    )
    assert StatsStore().histogram("h").bounds == tuple(float(b) for b in DEFAULT_BUCKETS)


def test_quantiles_interpolate_within_a_bucket_and_end_at_min_and_max() -> None:
    h = Histogram()
    for ms in range(1, 101):  # 1..100 ms, uniform
        h.record(float(ms))
    assert h.quantile(0) == 1
    assert h.quantile(1) == 100
    assert 25 <= h.quantile(0.5) <= 50  # the bucket (25, 50] holds the median (50.5)
    assert h.quantile(0.99) == pytest.approx(99.5, abs=1)
    assert [h.quantile(q / 10) for q in range(11)] == sorted(h.quantile(q / 10) for q in range(11))


def test_a_histogram_of_one_repeated_value_reports_that_value_at_every_quantile() -> None:
    h = Histogram()
    for _ in range(10):
        h.record(7.25)
    assert {h.quantile(q) for q in (0, 0.25, 0.5, 0.99, 1)} == {7.25}


def test_an_empty_histogram_has_nan_quantiles_and_bad_quantiles_raise() -> None:
    h = Histogram()
    assert math.isnan(h.quantile(0.5))
    with pytest.raises(ValueError, match="quantile"):
        h.quantile(1.5)


def test_histograms_merge_bucket_by_bucket() -> None:
    a, b = Histogram((1, 10)), Histogram((1, 10))
    a.record(0.5)
    b.record(5)
    b.record(50)
    a.merge(b)
    assert a.counts == [1, 1, 1]
    assert (a.min, a.max, a.sum) == (0.5, 50, 55.5)
    with pytest.raises(StatsError):
        a.merge(Histogram((2, 3)))


@given(st.lists(st.floats(min_value=0, max_value=5e6, allow_nan=False), min_size=1, max_size=200))
def test_quantiles_stay_within_the_recorded_range_and_grow_with_q(values: list[float]) -> None:
    h = Histogram()
    for v in values:
        h.record(v)
    assert h.count == len(values)
    estimates = [h.quantile(q / 20) for q in range(21)]
    assert estimates[0] == min(values)
    assert estimates[-1] == max(values)
    assert all(min(values) <= e <= max(values) for e in estimates)
    assert all(a <= b for a, b in itertools.pairwise(estimates))


# -- Envoy text and JSON ----------------------------------------------------------------------------------


def test_text_is_name_colon_value_lines_sorted_by_name() -> None:
    store = StatsStore()
    for name in ("mongo.app.op_reply", "cluster.up.upstream_cx_total", "mongo.app.op_msg"):
        store.counter(name).inc(2)
    store.gauge("mongo.app.op_active").set(3)
    assert store.text() == (
        "cluster.up.upstream_cx_total: 2\n"
        "mongo.app.op_active: 3\n"
        "mongo.app.op_msg: 2\n"
        "mongo.app.op_reply: 2\n"
    )


def test_text_prints_histograms_as_envoy_percentiles_with_nan_interval() -> None:
    store = StatsStore()
    store.histogram("mongo.app.cmd.find.reply_time_ms").record(3)
    store.histogram("mongo.app.cmd.insert.reply_time_ms")
    lines = store.text().splitlines()
    assert lines == [
        "mongo.app.cmd.find.reply_time_ms: P0(nan,3) P25(nan,3) P50(nan,3) P75(nan,3) P90(nan,3) P95(nan,3) "
        "P99(nan,3) P99.5(nan,3) P99.9(nan,3) P100(nan,3)",
        "mongo.app.cmd.insert.reply_time_ms: No recorded values",
    ]


def test_text_filter_is_a_regex_search_and_usedonly_skips_zeroes() -> None:
    store = StatsStore()
    store.counter("mongo.app.cmd.find.total").inc()
    store.counter("mongo.app.cmd.insert.total")
    store.counter("cluster.up.upstream_cx_total").inc()
    assert store.text(re.compile(r"cmd\.")) == "mongo.app.cmd.find.total: 1\nmongo.app.cmd.insert.total: 0\n"
    assert store.text(used_only=True) == "cluster.up.upstream_cx_total: 1\nmongo.app.cmd.find.total: 1\n"


def test_json_has_envoys_shape() -> None:
    store = StatsStore()
    store.counter("b.count").inc(4)
    store.gauge("a.gauge").set(2)
    store.histogram("c.hist").record(10)
    assert store.json() == {
        "stats": [
            {"name": "a.gauge", "value": 2},
            {"name": "b.count", "value": 4},
            {
                "histograms": {
                    "supported_quantiles": [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100],
                    "computed_quantiles": [
                        {"name": "c.hist", "values": [{"interval": None, "cumulative": 10}] * 10}
                    ],
                }
            },
        ]
    }


def test_values_lists_counters_and_gauges_and_the_summary_describes_a_histogram() -> None:
    store = StatsStore()
    store.counter("a").inc()
    store.gauge("b").set(5)
    h = store.histogram("c")
    h.record(2)
    h.record(4)
    assert store.values() == {"a": 1, "b": 5}
    summary = store.histogram_summary("c")
    assert (summary["count"], summary["sum"], summary["min"], summary["max"], summary["mean"]) == (2, 6, 2, 4, 3)
    assert summary["quantiles"]["P100"] == 4
    assert summary["buckets"][:3] == [(0.5, 0), (1.0, 0), (5.0, 2)]
    with pytest.raises(KeyError):
        store.histogram_summary("a")


# -- Prometheus -------------------------------------------------------------------------------------------


def test_prometheus_exports_labelled_families_that_parse_back() -> None:
    store = StatsStore()
    _command_counter(store, "find").inc(3)
    _command_counter(store, "insert").inc(137)
    store.gauge("mongo.app.op_active", prom="meshproxy_mongo_op_active", labels={"prefix": "app"}).set(2)
    families = _families(store)

    command = families["meshproxy_mongo_command"]
    assert command.type == "counter"  # type: ignore[attr-defined]
    samples = {s.labels["command"]: s for s in command.samples}  # type: ignore[attr-defined]
    assert samples["insert"].name == "meshproxy_mongo_command_total"
    assert samples["insert"].value == 137
    assert samples["find"].value == 3
    assert samples["find"].labels == {"prefix": "app", "db": "t", "collection": "c", "command": "find"}
    assert "mongo.<prefix>.collection.<collection>.cmd.<command>.total" in command.documentation  # type: ignore[attr-defined]

    (active,) = families["meshproxy_mongo_op_active"].samples  # type: ignore[attr-defined]
    assert (active.labels, active.value) == ({"prefix": "app"}, 2)


def test_prometheus_name_is_derived_from_the_flat_name_when_not_given() -> None:
    store = StatsStore()
    store.counter("cluster.up.host.127.0.0.1:27017.cx_total").inc()
    store.gauge("server.live").set(1)
    text = store.prometheus().decode()
    assert "meshproxy_cluster_up_host_127_0_0_1_27017_cx_total 1.0" in text
    assert "meshproxy_server_live 1.0" in text


def test_a_counter_family_given_with_total_does_not_get_it_twice() -> None:
    store = StatsStore()
    store.counter("a.b", prom="meshproxy_requests_total").inc()
    assert "meshproxy_requests_total 1.0" in store.prometheus().decode()
    assert "_total_total" not in store.prometheus().decode()


def test_prometheus_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    store = StatsStore()
    h = store.histogram(
        "mongo.app.cmd.find.reply_time_ms",
        prom="meshproxy_mongo_command_duration_ms",
        labels={"prefix": "app", "command": "find"},
    )
    for ms in (0.3, 0.7, 3, 40, 4_000_000):
        h.record(ms)
    (family,) = _families(store).values()
    assert family.type == "histogram"  # type: ignore[attr-defined]
    buckets = [s for s in family.samples if s.name.endswith("_bucket")]  # type: ignore[attr-defined]
    les = [s.labels["le"] for s in buckets]
    assert les[:2] == ["0.5", "1.0"]
    assert les[-3:] == ["1.8e+06", "3.6e+06", "+Inf"]  # Go float formatting, as Prometheus writes le
    assert [float(le) for le in les[:-1]] == [float(b) for b in DEFAULT_BUCKETS]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts)  # cumulative
    by_le = {float(s.labels["le"]): s.value for s in buckets}
    assert (by_le[0.5], by_le[1.0], by_le[5.0], by_le[50.0], by_le[3600000.0], by_le[math.inf]) == (1, 2, 3, 4, 4, 5)
    sample = {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")}  # type: ignore[attr-defined]
    assert sample["meshproxy_mongo_command_duration_ms_count"] == 5
    assert sample["meshproxy_mongo_command_duration_ms_sum"] == pytest.approx(4_000_044)
    assert all(s.labels["command"] == "find" for s in buckets)


def test_prometheus_can_be_filtered_by_flat_name() -> None:
    store = StatsStore()
    _command_counter(store, "find").inc()
    store.counter("cluster.up.upstream_cx_total").inc()
    text = store.prometheus(re.compile(r"^cluster\.")).decode()
    assert "meshproxy_cluster_up_upstream_cx_total 1.0" in text
    assert "meshproxy_mongo_command" not in text
    store.counter("cluster.up.upstream_cx_connect_fail")
    used = store.prometheus(used_only=True).decode()
    assert "meshproxy_cluster_up_upstream_cx_total 1.0" in used
    assert "connect_fail" not in used
