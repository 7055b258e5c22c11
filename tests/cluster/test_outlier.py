"""Outlier detection: what ejects a host, for how long, how many may go, and how protocols map outcomes."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from meshproxy.cluster.outlier import (
    EjectionType,
    Outcome,
    OutlierConfig,
    OutlierDetector,
    outcome_from_dynamo,
    outcome_from_grpc_status,
    outcome_from_http_status,
    outcome_from_mongo,
)
from meshproxy.stats import StatsStore

S, L, G, U = Outcome.SUCCESS, Outcome.LOCAL_ORIGIN_FAILURE, Outcome.GATEWAY_FAILURE, Outcome.UPSTREAM_ERROR


@dataclass(frozen=True)
class FakeHost:
    name: str


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    detector: OutlierDetector
    hosts: list[FakeHost]
    clock: FakeClock
    store: StatsStore

    def stat(self, name: str) -> float:
        return self.store.values()[f"cluster.c.outlier_detection.{name}"]

    def report(self, index: int, *outcomes: Outcome) -> None:
        for outcome in outcomes:
            self.detector.report(self.hosts[index], outcome)

    def ejected(self) -> list[str]:
        return self.detector.ejected_hosts()


def rig(n: int = 3, **config: object) -> Rig:
    hosts = [FakeHost(f"h{i}") for i in range(n)]
    clock = FakeClock()
    store = StatsStore()
    detector = OutlierDetector(OutlierConfig(**config), hosts, store, "c", clock, random.Random(7))  # type: ignore[arg-type]
    return Rig(detector, hosts, clock, store)


# -- consecutive errors -------------------------------------------------------------------------------


def test_consecutive_5xx_ejects_at_exactly_the_threshold() -> None:
    r = rig()
    r.report(0, U, U, U, U)
    assert r.ejected() == []
    r.report(0, U)
    assert r.ejected() == ["h0"]
    assert r.detector.is_ejected(r.hosts[0])
    assert r.detector.state(r.hosts[0]).ejected
    assert r.stat("ejections_active") == 1
    assert r.stat("ejections_enforced_consecutive_5xx") == 1
    assert r.stat("ejections_detected_consecutive_5xx") == 1
    assert r.stat("ejections_enforced_total") == 1


def test_a_success_in_between_resets_the_count() -> None:
    r = rig()
    r.report(0, U, U, U, U, S, U, U, U, U)
    assert r.ejected() == []
    r.report(0, U)
    assert r.ejected() == ["h0"]


def test_gateway_failures_count_as_gateway_failures_and_as_5xx() -> None:
    r = rig(enforcing_consecutive_gateway_failure=100)
    r.report(0, G, G, G, G, G)
    assert r.ejected() == ["h0"]
    assert r.stat("ejections_detected_consecutive_gateway_failure") == 1
    assert r.stat("ejections_enforced_consecutive_gateway_failure") == 1
    # The 5xx count reached 5 too, but the host was already out: nothing more to do.
    assert r.stat("ejections_enforced_consecutive_5xx") == 0


def test_gateway_failures_eject_through_5xx_when_gateway_enforcing_is_off_by_default() -> None:
    r = rig()
    r.report(0, G, G, G, G, G)
    assert r.ejected() == ["h0"]
    assert r.stat("ejections_detected_consecutive_gateway_failure") == 1
    assert r.stat("ejections_enforced_consecutive_gateway_failure") == 0
    assert r.stat("ejections_enforced_consecutive_5xx") == 1


def test_an_upstream_error_breaks_a_run_of_gateway_failures() -> None:
    r = rig(enforcing_consecutive_gateway_failure=100, consecutive_5xx=100)
    r.report(0, G, G, G, G, U, G, G, G, G)
    assert r.ejected() == []
    r.report(0, G)
    assert r.ejected() == ["h0"]


def test_enforcing_zero_detects_but_does_not_eject() -> None:
    r = rig(enforcing_consecutive_5xx=0)
    r.report(0, *[U] * 5)
    assert r.ejected() == []
    assert r.stat("ejections_detected_consecutive_5xx") == 1
    assert r.stat("ejections_total") == 1
    assert r.stat("ejections_enforced_consecutive_5xx") == 0
    assert r.stat("ejections_enforced_total") == 0
    assert r.stat("ejections_active") == 0


def test_enforcing_percentages_are_rolled_with_the_injected_random() -> None:
    r = rig(n=1, enforcing_consecutive_5xx=50, consecutive_5xx=1, max_ejection_percent=100)
    ejected = 0
    for _ in range(1000):
        r.report(0, U)
        if r.detector.is_ejected(r.hosts[0]):
            ejected += 1
            r.clock.now += 1000
            r.detector.tick()
    assert 430 < ejected < 570
    assert r.stat("ejections_detected_consecutive_5xx") == 1000


# -- ejection time ---------------------------------------------------------------------------------------


def eject_and_return(r: Rig) -> float:
    """Eject h0, advance the clock until it is back, and say how long it was out (to 1 s)."""
    r.report(0, *[U] * 5)
    assert r.detector.is_ejected(r.hosts[0])
    start = r.clock.now
    while r.detector.is_ejected(r.hosts[0]):
        r.clock.now += 1
        r.detector.tick()
    return r.clock.now - start


def test_unejected_by_tick_once_the_ejection_time_has_passed() -> None:
    r = rig()
    r.report(0, *[U] * 5)
    r.clock.now += 29.9
    r.detector.tick()
    assert r.ejected() == ["h0"]
    r.clock.now += 0.1
    r.detector.tick()
    assert r.ejected() == []
    assert r.stat("ejections_active") == 0
    assert [(e.host, e.action, e.reason, e.num_ejections) for e in r.detector.events] == [
        ("h0", "eject", EjectionType.CONSECUTIVE_5XX, 1),
        ("h0", "uneject", None, 1),
    ]
    assert r.detector.events[0].duration == 30


def test_ejection_time_grows_with_each_ejection_and_is_capped() -> None:
    r = rig(base_ejection_time=30, max_ejection_time=100)
    assert [eject_and_return(r) for _ in range(5)] == [30, 60, 90, 100, 100]


def test_the_multiplier_shrinks_while_a_host_stays_healthy() -> None:
    r = rig()
    assert [eject_and_return(r) for _ in range(3)] == [30, 60, 90]
    for _ in range(2):  # two base ejection times in service: the multiplier goes from 3 to 1
        r.clock.now += 30
        r.detector.tick()
    assert eject_and_return(r) == 60


# -- max ejection percent --------------------------------------------------------------------------------


def test_max_ejection_percent_with_ten_hosts_allows_one() -> None:
    r = rig(n=10)
    r.report(0, *[U] * 5)
    r.report(1, *[U] * 5)
    assert r.ejected() == ["h0"]
    assert r.stat("ejections_overflow") == 1
    assert r.stat("ejections_detected_consecutive_5xx") == 1


def test_max_ejection_percent_with_twenty_hosts_allows_two() -> None:
    r = rig(n=20)
    for i in range(3):
        r.report(i, *[U] * 5)
    assert r.ejected() == ["h0", "h1"]


def test_one_host_may_go_even_when_the_percent_is_less_than_one_host() -> None:
    r = rig(n=3)
    r.report(0, *[U] * 5)
    r.report(1, *[U] * 5)
    assert r.ejected() == ["h0"]
    r0 = rig(n=3, max_ejection_percent=0)
    r0.report(2, *[U] * 5)
    assert r0.ejected() == ["h2"]


# -- success rate and failure percentage -------------------------------------------------------------


def traffic(r: Rig, successes: list[int], total: int) -> None:
    for i, ok in enumerate(successes):
        r.report(i, *[S] * ok, *[U, S] * ((total - ok) // 2))


def test_success_rate_ejects_a_host_below_mean_minus_1_9_stdev() -> None:
    r = rig(n=5, max_ejection_percent=50)
    # Success rates 100, 100, 100, 100, 60 %: mean 92, stdev 16, threshold 61.6.
    traffic(r, [100, 100, 100, 100, 20], total=100)
    r.detector.tick()
    assert r.ejected() == ["h4"]
    assert r.stat("ejections_enforced_success_rate") == 1
    assert [(e.host, e.reason) for e in r.detector.events] == [("h4", EjectionType.SUCCESS_RATE)]


def test_success_rate_spares_hosts_within_1_9_stdev_of_the_mean() -> None:
    r = rig(n=5)
    # 100, 100, 100, 90, 80 %: mean 94, stdev 8, threshold 78.8.
    traffic(r, [100, 100, 100, 80, 60], total=100)
    r.detector.tick()
    assert r.ejected() == []


def test_success_rate_needs_enough_hosts_with_enough_requests() -> None:
    r = rig(n=5)
    traffic(r, [98, 98, 98, 98, 18], total=98)  # every host one short of the request volume of 100
    r.detector.tick()
    assert r.ejected() == []
    r4 = rig(n=4)  # fewer than the 5 minimum hosts
    traffic(r4, [100, 100, 100, 20], total=100)
    r4.detector.tick()
    assert r4.ejected() == []


def test_interval_counts_start_again_after_each_tick() -> None:
    r = rig(n=5)
    traffic(r, [60, 60, 60, 60, 12], total=60)
    r.detector.tick()
    traffic(r, [60, 60, 60, 60, 12], total=60)
    r.detector.tick()
    assert r.ejected() == []


def failure_percentage_rig(**config: object) -> Rig:
    return rig(n=5, consecutive_5xx=1000, max_ejection_percent=50, **config)


def test_failure_percentage_ejects_a_host_at_or_above_the_threshold() -> None:
    r = failure_percentage_rig(enforcing_failure_percentage=100)
    for i in range(4):
        r.report(i, *[S] * 50)
    r.report(4, *[S, U, U, U, U] * 10)  # 80 % failures: below 85
    r.detector.tick()
    assert r.ejected() == []
    for i in range(4):
        r.report(i, *[S] * 50)
    r.report(4, *[S, U, U, U, U, U, U, U, U, U] * 5)  # 90 %
    r.detector.tick()
    assert r.ejected() == ["h4"]
    assert r.stat("ejections_enforced_failure_percentage") == 1


def test_failure_percentage_is_detected_but_not_enforced_by_default() -> None:
    r = failure_percentage_rig()
    for i in range(4):
        r.report(i, *[S] * 50)
    r.report(4, *[U] * 50)
    r.detector.tick()
    assert r.ejected() == []
    assert r.stat("ejections_detected_failure_percentage") == 1


def test_failure_percentage_needs_enough_hosts_with_enough_requests() -> None:
    r = failure_percentage_rig(enforcing_failure_percentage=100)
    for i in range(3):
        r.report(i, *[S] * 50)
    r.report(3, *[S] * 49)
    r.report(4, *[U] * 50)
    r.detector.tick()
    assert r.ejected() == []


# -- local-origin failures -------------------------------------------------------------------------------


def test_without_the_split_local_origin_failures_count_as_gateway_failures() -> None:
    r = rig()
    r.report(0, L, L, L, U, G)
    assert r.ejected() == ["h0"]
    assert r.stat("ejections_enforced_consecutive_5xx") == 1
    assert r.stat("ejections_detected_consecutive_local_origin_failure") == 0


def test_with_the_split_local_origin_failures_are_counted_on_their_own() -> None:
    r = rig(split_external_local_origin_errors=True)
    r.report(0, U, U, U, U, L, L, L, L)  # neither run complete; the local ones do not break the 5xx run
    assert r.ejected() == []
    r.report(0, L)
    assert r.ejected() == ["h0"]
    assert r.stat("ejections_enforced_consecutive_local_origin_failure") == 1
    r2 = rig(split_external_local_origin_errors=True)
    r2.report(0, U, U, U, U, L, U)
    assert r2.detector.events[0].reason is EjectionType.CONSECUTIVE_5XX


def test_with_the_split_a_success_resets_the_local_origin_run() -> None:
    r = rig(split_external_local_origin_errors=True)
    r.report(0, L, L, L, L, S, L, L, L, L)
    assert r.ejected() == []


def test_with_the_split_local_origin_failures_stay_out_of_the_success_rate() -> None:
    r = rig(n=5, split_external_local_origin_errors=True, consecutive_local_origin_failure=1000)
    traffic(r, [100, 100, 100, 100, 100], total=100)
    r.report(4, *[L] * 100)
    r.detector.tick()
    assert r.ejected() == []


# -- bookkeeping -------------------------------------------------------------------------------------------


def test_hosts_that_leave_take_their_ejection_with_them() -> None:
    r = rig()
    r.report(0, *[U] * 5)
    r.detector.set_hosts(r.hosts[1:])
    assert r.ejected() == []
    assert r.stat("ejections_active") == 0
    r.report(0, *[U] * 5)  # an outcome for a host no longer known is ignored
    assert not r.detector.is_ejected(r.hosts[0])


def test_the_event_log_is_bounded() -> None:
    r = rig(n=1, event_log_size=3, max_ejection_percent=100)
    for _ in range(3):
        eject_and_return(r)
    assert [e.action for e in r.detector.events] == ["uneject", "eject", "uneject"]


def test_stats_are_exported_to_prometheus_with_a_cluster_label() -> None:
    r = rig()
    r.report(0, *[U] * 5)
    text = r.store.prometheus().decode()
    assert 'meshproxy_cluster_outlier_detection_ejections_enforced_consecutive_5xx_total{cluster="c"} 1.0' in text
    assert 'meshproxy_cluster_outlier_detection_ejections_active{cluster="c"} 1.0' in text


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError, match="enforcing_success_rate"):
        OutlierConfig(enforcing_success_rate=101)
    with pytest.raises(ValueError, match="interval"):
        OutlierConfig(interval=0)


# -- the protocol mappings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, S), (204, S), (404, S), (429, S), (500, U), (501, U), (502, G), (503, G), (504, G), (599, U)],
)
def test_http_status(status: int, outcome: Outcome) -> None:
    assert outcome_from_http_status(status) is outcome


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (0, S), (1, S), (2, U), (3, S), (4, G), (5, S), (6, S), (7, S), (8, S), (9, S), (10, S), (11, S),
        (12, S), (13, U), (14, G), (15, U), (16, S),
    ],
)
def test_grpc_status(code: int, outcome: Outcome) -> None:
    assert outcome_from_grpc_status(code) is outcome


@pytest.mark.parametrize(
    ("status", "error_type", "outcome"),
    [
        (200, None, S),
        (400, "com.amazonaws.dynamodb.v20120810#ValidationException", S),
        (400, "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException", S),
        (400, "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException", S),
        (400, "ThrottlingException", S),
        (400, "RequestLimitExceeded", S),
        (500, "com.amazonaws.dynamodb.v20120810#InternalServerError", U),
        (503, "com.amazonaws.dynamodb.v20120810#ServiceUnavailable", G),
        (503, None, G),
        (500, None, U),
    ],
)
def test_dynamo(status: int, error_type: str | None, outcome: Outcome) -> None:
    assert outcome_from_dynamo(status, error_type) is outcome


@pytest.mark.parametrize(
    ("ok", "code", "outcome"),
    [
        (1.0, None, S), (1, None, S), (True, None, S),
        (0.0, 11000, S), (0, 2, S), (0, 13, S), (0, None, S),
        (0.0, 91, U), (0, 189, U), (0, 10107, U), (0, 11600, U), (0, 11602, U), (0, 13436, U),
    ],
)
def test_mongo(ok: float, code: int | None, outcome: Outcome) -> None:
    assert outcome_from_mongo(ok, code) is outcome
