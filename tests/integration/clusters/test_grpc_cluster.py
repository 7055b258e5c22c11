"""Three real grpcio servers behind one meshproxy gRPC listener: calls are balanced one by one over the
pooled HTTP/2 connections, health checking takes a dead server out, outlier detection ejects a failing one
and re-admits it, least request steers around a slow one, and a retry moves to another host.

Chain: ``grpcio client -> meshproxy (cluster "backends" of three hosts) -> EchoServer x 3`` (for the slow
host: ``-> a second meshproxy with a fault delay -> EchoServer``). Everything is on 127.0.0.1 and real: no
mocks. States are awaited by polling with a generous deadline, never by fixed sleeps, and no assertion is
about time; the figures the tests see (shares, time to mark a host down, ejection and readmission) are
printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import grpc
import pytest
from support import wait

from meshproxy.cluster import Cluster, Host
from meshproxy.config import MeshConfig, config_from_dict, grpc_sidecar_config
from meshproxy.proxy import ProxyThread
from testbeds.grpc.service import SERVICE, EchoClient, EchoServer

pytestmark = pytest.mark.integration

CLUSTER = "backends"
DEADLINE = 15.0
"""Generous bound for a state to appear (health checks run every 0.2 s here): a wait, not a measurement."""
HEALTH_INTERVAL = 0.2
UNHEALTHY_THRESHOLD = 2
EJECTION_TIME = 1.0


OUTLIER = {"consecutive_5xx": 3, "interval": 0.1, "base_ejection_time": EJECTION_TIME, "max_ejection_percent": 34}


def front_config(
    hosts: list[tuple[str, int]],
    *,
    lb_policy: str = "round_robin",
    outlier: dict[str, Any] | None = OUTLIER,
    retry_on: tuple[str, ...] = ("UNAVAILABLE",),
    **listener: Any,
) -> MeshConfig:
    """One gRPC listener retrying UNAVAILABLE, in front of a cluster of ``hosts`` with a gRPC health check
    every 0.2 s (two failures mark a host down) and, by default, outlier detection ejecting after three
    5xx for 1 s."""
    return config_from_dict(
        {
            "admin": None,
            "listeners": [
                {
                    "name": "front",
                    "address": "127.0.0.1:0",
                    "protocol": "grpc",
                    "cluster": CLUSTER,
                    "stat_prefix": "front",
                    "retry": {"on": list(retry_on), "max_retries": 2, "backoff": "1ms"},
                    **listener,
                }
            ],
            "clusters": [
                {
                    "name": CLUSTER,
                    "hosts": [f"{host}:{port}" for host, port in hosts],
                    "lb_policy": lb_policy,
                    "health_check": {
                        "type": "grpc",
                        "interval": HEALTH_INTERVAL,
                        "timeout": 1.0,
                        "unhealthy_threshold": UNHEALTHY_THRESHOLD,
                        "healthy_threshold": 1,
                    },
                    "outlier_detection": outlier,
                }
            ],
        }
    )


@contextmanager
def servers(count: int = 3) -> Iterator[list[EchoServer]]:
    with ExitStack() as stack:
        yield [stack.enter_context(EchoServer()) for _ in range(count)]


def address(server: EchoServer) -> tuple[str, int]:
    return ("127.0.0.1", server.port)


def cluster(proxy: ProxyThread) -> Cluster:
    return proxy.proxy.clusters[CLUSTER]


def host_of(proxy: ProxyThread, target: tuple[str, int]) -> Host:
    return next(h for h in cluster(proxy).hosts if h.address == target)


def rq_totals(proxy: ProxyThread) -> dict[tuple[str, int], int]:
    """Calls each host received, from the proxy's stats (``cluster.<c>.host.<h:p>.rq_total``)."""
    values = proxy.stats.values()
    return {h.address: int(values[f"cluster.{CLUSTER}.host.{h.name}.rq_total"]) for h in cluster(proxy).hosts}


wait_for = functools.partial(wait.wait_for, timeout=DEADLINE)


def shares(counts: dict[tuple[str, int], int]) -> dict[int, float]:
    total = sum(counts.values())
    return {port: round(count / total, 3) for (_, port), count in counts.items()}


def test_one_client_channel_is_spread_over_all_three_hosts_on_one_pooled_connection_each() -> None:
    """(a) Per-call balancing: one grpcio channel (one HTTP/2 connection to the proxy) reaches all three
    hosts, in turn under round robin, while the proxy keeps one upstream connection per host."""
    with servers() as backends, ProxyThread(front_config([address(s) for s in backends])) as proxy:
        with EchoClient(proxy.listener_address("front")) as client:
            for index in range(60):
                assert client.unary(b"%d" % index, timeout=10) == b"echo:%d" % index
        counts = rq_totals(proxy)
        values = proxy.stats.values()
        connections = {h.name: values[f"cluster.{CLUSTER}.host.{h.name}.cx_total"] for h in cluster(proxy).hosts}
    print(f"\n(a) calls per host, one channel, round robin: {counts}")
    assert sum(counts.values()) == 60
    # Round robin takes the hosts in turn (20 each, as seen in every run); the tolerance of +-5 leaves room
    # for a health check that a loaded machine answers late.
    assert all(15 <= count <= 25 for count in counts.values())
    assert set(connections.values()) == {1}  # every call of a host shared its one pooled connection


def test_a_killed_server_is_marked_down_by_health_checks_and_no_call_fails_meanwhile() -> None:
    """(b) A server stops while a client calls in a loop: calls that meet it fail UNAVAILABLE upstream (a
    refused dial or a closed connection) and are retried on another host, so the client sees no failure;
    health checking marks it down (2 checks at 0.2 s), after which it gets no traffic."""
    # Connect failures are kept out of outlier detection here (split, not enforced): this test is about what
    # active health checking does on its own. (With both, the refused dials eject the host first, and the
    # health checker, which tests ``host.healthy``, false while a host is ejected, then never marks it down:
    # a bug in meshproxy/cluster/health.py, reported to its owners.)
    local_apart = {
        **OUTLIER,
        "split_external_local_origin_errors": True,
        "enforcing_consecutive_local_origin_failure": 0,
    }
    # A grpcio server stopped with stop(None) answers a call it had already accepted with a trailers-only
    # CANCELLED (about one run in 40 catches one): for idempotent calls that is as retryable as UNAVAILABLE
    # (Envoy's grpc retry_on has "cancelled" for it).
    with (
        servers() as backends,
        ProxyThread(
            front_config([address(s) for s in backends], outlier=local_apart, retry_on=("UNAVAILABLE", "CANCELLED"))
        ) as proxy,
    ):
        victim = backends[0]
        dead = host_of(proxy, address(victim))
        failures: list[BaseException] = []
        done = threading.Event()
        calls = [0]

        def loop() -> None:
            with EchoClient(proxy.listener_address("front")) as client:
                while not done.is_set():
                    try:
                        assert client.unary(b"x", timeout=10) == b"echo:x"
                        calls[0] += 1
                    except grpc.RpcError as error:  # pragma: no cover - what the test forbids
                        failures.append(error)

        caller = threading.Thread(target=loop)
        caller.start()
        try:
            wait_for(lambda: rq_totals(proxy)[dead.address] >= 10, "traffic reaches every host")
            victim.server.stop(None)
            marked_down = wait_for(lambda: not dead.passes_health_checks, "the health check marks the host down")
            after_down = rq_totals(proxy)
            calls_at_down = calls[0]
            wait_for(lambda: calls[0] >= calls_at_down + 60, "60 more calls")
        finally:
            done.set()
            caller.join()
        later = rq_totals(proxy)
        values = proxy.stats.values()
    survivors = [a for a in later if a != dead.address]
    print(
        f"\n(b) marked down {marked_down:.3f} s after the stop (interval {HEALTH_INTERVAL} s x threshold "
        f"{UNHEALTHY_THRESHOLD}); calls {calls[0]}, retries {values[f'cluster.{CLUSTER}.upstream_rq_retry']}; "
        f"per host after the mark-down: { {a[1]: later[a] - after_down[a] for a in later} }"
    )
    assert failures == []
    assert later[dead.address] == after_down[dead.address]  # nothing more went to the dead host
    assert all(later[a] > after_down[a] for a in survivors)  # the other two took the traffic
    assert values[f"cluster.{CLUSTER}.health_check.network_failure"] >= UNHEALTHY_THRESHOLD


def test_a_host_returning_errors_is_ejected_and_readmitted_once_healthy() -> None:
    """(c) One host answers UNAVAILABLE (the service's ``Flaky`` method fails its first three calls of a
    key on that server only): each failed attempt is retried elsewhere, so the client sees no failure, and
    is reported to outlier detection, which ejects the host after three 5xx. After the ejection time it is
    re-admitted and, healthy again, serves calls successfully."""
    failures_at_b = 3
    with servers() as backends, ProxyThread(front_config([address(s) for s in backends])) as proxy:
        flaky = backends[1]
        for server in backends:
            if server is not flaky:
                server.service.attempts["k"] = 1_000_000  # past its failures: these two always succeed
        sick = host_of(proxy, address(flaky))
        request = b"k %d headers" % failures_at_b
        ejected_at = readmitted_at = 0.0
        with EchoClient(proxy.listener_address("front")) as client:
            start = time.monotonic()
            while not sick.ejected:
                assert client.flaky(request, timeout=10).startswith(b"ok:")
                assert time.monotonic() - start < DEADLINE, "the failing host was not ejected"
            ejected_at = time.monotonic() - start
            at_ejection = rq_totals(proxy)[sick.address]
            served = 0
            while sick.ejected:  # calls while it is out go to the other two
                assert client.flaky(request, timeout=10).startswith(b"ok:")
                served += 1
                if sick.ejected:
                    assert rq_totals(proxy)[sick.address] == at_ejection
                assert time.monotonic() - start < DEADLINE, "the ejected host was not re-admitted"
            readmitted_at = time.monotonic() - start
            wait_for(
                lambda: (
                    client.flaky(request, timeout=10).startswith(b"ok:")
                    and flaky.service.attempts["k"] > failures_at_b + 2
                ),
                "the re-admitted host serves calls again",
            )
        values = proxy.stats.values()
    print(
        f"\n(c) ejected {ejected_at:.3f} s after the first call, re-admitted {readmitted_at - ejected_at:.3f} s "
        f"later (base_ejection_time {EJECTION_TIME} s, tick 0.1 s); {served} calls served while it was out; "
        f"attempts at the flaky server {flaky.service.attempts['k']}"
    )
    assert values[f"cluster.{CLUSTER}.outlier_detection.ejections_enforced_consecutive_5xx"] == 1
    assert values[f"cluster.{CLUSTER}.upstream_rq_retry"] >= failures_at_b
    assert flaky.service.attempts["k"] > failures_at_b  # it answered successfully after readmission
    assert sick.healthy


def calls_per_host_under_load(
    hosts: list[tuple[str, int]], lb_policy: str, callers: int, calls: int
) -> dict[tuple[str, int], int]:
    with ProxyThread(front_config(hosts, lb_policy=lb_policy)) as proxy:
        with EchoClient(proxy.listener_address("front")) as client:
            client.unary(b"warm", timeout=10)
            before = rq_totals(proxy)

            def work() -> None:
                for _ in range(calls):
                    assert client.unary(b"x", timeout=10) == b"echo:x"

            threads = [threading.Thread(target=work) for _ in range(callers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        after = rq_totals(proxy)
    return {a: after[a] - before[a] for a in after}


def test_least_request_sends_a_slow_host_clearly_less_than_its_round_robin_share() -> None:
    """(d) The third host answers 50 ms late (a second meshproxy with a fault delay in front of it). With
    eight concurrent callers, round robin still gives it a third of the calls; least request, which sees
    its requests in flight (per-host ``rq_active``), clearly less (tolerance below)."""
    with servers() as backends, ExitStack() as stack:
        slow_front = stack.enter_context(
            ProxyThread(
                grpc_sidecar_config(
                    listen=("127.0.0.1", 0),
                    upstream=address(backends[2]),
                    admin=None,
                    stat_prefix="slow",
                    filters=[{"type": "fault", "delay": {"duration": "50ms"}, "match": {"services": [SERVICE]}}],
                )
            )
        )
        slow = slow_front.listener_address("slow")
        hosts = [address(backends[0]), address(backends[1]), slow]
        round_robin = calls_per_host_under_load(hosts, "round_robin", callers=8, calls=30)
        least_request = calls_per_host_under_load(hosts, "least_request", callers=8, calls=30)
    print(f"\n(d) slow third host; shares: round robin {shares(round_robin)}, least request {shares(least_request)}")
    assert sum(round_robin.values()) == sum(least_request.values()) == 240
    rr_share = round_robin[slow] / 240
    lr_share = least_request[slow] / 240
    # Tolerance: round robin gives the slow host its third (exact turns in every run seen; +-5 % leaves room
    # for a late health check on a loaded machine).
    # Least request must give it under 25 %, three quarters of that third. The power of two choices (two
    # samples drawn with replacement) still picks it when both samples land on it, 1/9 of the picks, and on
    # ties with an as-busy fast host, so its share cannot reach 0: seen 12.5-19.6 % on a shared 2-core
    # machine, against the 1/9 floor.
    assert abs(rr_share - 1 / 3) < 0.05
    assert lr_share < 0.25


def test_a_retry_moves_to_another_host_even_when_the_hash_points_at_the_failing_one() -> None:
    """Ring hash on ``hash_key_header``: calls with one ``x-user`` stick to one host, and different users
    spread. When that host keeps failing UNAVAILABLE, the retry avoids it (Envoy's previous-hosts predicate,
    with the key perturbed as Envoy's ring hash does for a retry) instead of hashing back to it, so the call
    succeeds."""
    # No outlier detection: alice's host must stay in the ring for every call, so each retry has to avoid it.
    with (
        servers() as backends,
        ProxyThread(
            front_config([address(s) for s in backends], lb_policy="ring_hash", outlier=None, hash_key_header="x-user")
        ) as proxy,
        EchoClient(proxy.listener_address("front")) as client,
    ):
        before = rq_totals(proxy)
        for _ in range(10):
            client.unary(b"x", metadata=(("x-user", "alice"),), timeout=10)
        moved = {a: n - before[a] for a, n in rq_totals(proxy).items() if n != before[a]}
        assert list(moved.values()) == [10]  # one user, one host
        (alice_host,) = moved
        before = rq_totals(proxy)
        for index in range(60):
            client.unary(b"x", metadata=(("x-user", f"user-{index}"),), timeout=10)
        spread = {a: n - before[a] for a, n in rq_totals(proxy).items()}
        assert all(count > 0 for count in spread.values())  # 60 users reach all three hosts

        for server in backends:  # alice's host fails every call; the others never do
            server.service.attempts["r"] = 0 if address(server) == alice_host else 1_000_000
        for _ in range(5):
            answer = client.flaky(b"r 1000000 headers", metadata=(("x-user", "alice"),), timeout=10)
            assert answer.startswith(b"ok:")
    failing = next(s for s in backends if address(s) == alice_host)
    print(f"\n(e) ring hash: 60 users over the hosts {spread}; alice's host failed {failing.service.attempts['r']}")
    assert failing.service.attempts["r"] == 5  # each call tried it once, then moved on
