"""Client-side balancing (``meshproxy.cluster.client``): service code picks hosts from a running cluster.

Backends are real TCP servers on 127.0.0.1 that the tests stop; health checks run every 50 ms, and tests
poll for the state they expect (with a generous deadline) rather than sleeping a fixed time.
"""

from __future__ import annotations

import functools
import socket
import socketserver
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import wait

from meshproxy.cluster.client import ClusterClient, ClusterClientThread, outcome_from_exception
from meshproxy.cluster.outlier import Outcome
from meshproxy.config import ClusterConfig

DEADLINE = 10.0


class _Quiet(socketserver.BaseRequestHandler):
    def handle(self) -> None:  # accept and close: all a tcp health check needs
        pass


class Backend:
    """A TCP server on 127.0.0.1 in a thread, until ``stop()``."""

    def __init__(self) -> None:
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Quiet)
        self.server.daemon_threads = True
        self.address: tuple[str, int] = self.server.server_address[:2]  # type: ignore[assignment]
        self.name = f"{self.address[0]}:{self.address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.server.shutdown()
            self.server.server_close()
            self._thread.join()


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend() for _ in range(3)]
    try:
        yield started
    finally:
        for backend in started:
            backend.stop()


def closed_port() -> tuple[str, int]:
    """An address nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()  # type: ignore[no-any-return]


def config(addresses: list[tuple[str, int]] | None, **extra: Any) -> ClusterConfig:
    """Cluster ``svc`` with a fast tcp health check; ``addresses`` None when ``extra`` gives dns or hosts_file."""
    data: dict[str, Any] = {
        "name": "svc",
        "health_check": {"type": "tcp", "interval": 0.05, "timeout": 1, "unhealthy_threshold": 2},
    }
    if addresses is not None:
        data["hosts"] = [f"{h}:{p}" for h, p in addresses]
    return ClusterConfig.model_validate({**data, **extra})


wait_until = functools.partial(wait.await_until, timeout=DEADLINE)
wait_until_sync = functools.partial(wait.wait_for, timeout=DEADLINE)


async def test_picks_spread_over_every_host_then_avoid_one_health_checking_marked_down(
    backends: list[Backend],
) -> None:
    async with ClusterClient.from_config(config([b.address for b in backends])) as cluster:
        checks = cluster.stats.values
        await wait_until(lambda: checks()["cluster.svc.health_check.success"] >= 3)
        before = Counter(cluster.pick().name for _ in range(30))
        assert before == {b.name: 10 for b in backends}  # round robin over three healthy hosts

        backends[0].stop()
        dead = next(h for h in cluster.hosts if h.name == backends[0].name)
        await wait_until(lambda: not dead.healthy)
        after = Counter(cluster.pick().name for _ in range(300))
        assert dead.name not in after
        assert set(after) == {backends[1].name, backends[2].name}
        assert checks()["cluster.svc.health_check.healthy"] == 2


def test_the_thread_form_runs_health_checks_for_blocking_callers(backends: list[Backend]) -> None:
    with ClusterClientThread.from_config(config([b.address for b in backends])) as cluster:
        assert {cluster.pick().name for _ in range(3)} == {b.name for b in backends}
        backends[2].stop()
        dead = next(h for h in cluster.hosts if h.name == backends[2].name)
        wait_until_sync(lambda: not dead.healthy)
        assert dead.name not in {cluster.pick().name for _ in range(300)}
        attempts = cluster.stats.values()["cluster.svc.health_check.attempt"]
    # leaving the block stops the checks: the count no longer moves once the thread has joined
    assert cluster.stats.values()["cluster.svc.health_check.attempt"] == attempts


async def test_request_counts_active_requests_which_least_request_reads(backends: list[Backend]) -> None:
    two = [b.address for b in backends[:2]]
    async with ClusterClient.from_config(config(two, lb_policy="least_request")) as cluster:
        busy, idle = cluster.hosts
        values = cluster.stats.values
        with cluster.request(busy) as rq:
            assert rq.host is busy
            assert busy.active_requests == 1
            assert values()["cluster.svc.upstream_rq_active"] == 1
            with cluster.request(busy):
                assert busy.active_requests == 2
            # two choices with replacement pick the busy host only when both draws are it: 25 %
            picks = Counter(cluster.pick().name for _ in range(400))
            assert picks[idle.name] > 250
        assert busy.active_requests == 0
        assert values()["cluster.svc.upstream_rq_active"] == 0
        assert values()[f"cluster.svc.host.{busy.name}.rq_total"] == 2
        assert values()["cluster.svc.upstream_rq_total"] == 2


async def test_request_reports_outcomes_so_outlier_detection_ejects_a_failing_host(backends: list[Backend]) -> None:
    unreachable = closed_port()
    addresses = [unreachable, backends[0].address]
    no_health_check = config(addresses, outlier_detection={"consecutive_5xx": 3}).model_copy(
        update={"health_check": None}
    )
    async with ClusterClient.from_config(no_health_check) as cluster:
        bad, good = cluster.hosts
        for _ in range(3):
            with pytest.raises(ConnectionRefusedError), cluster.request(bad):
                socket.create_connection(bad.address, timeout=5).close()  # a real refused connect
        assert bad.ejected
        assert not bad.healthy
        assert {cluster.pick().name for _ in range(50)} == {good.name}
        assert cluster.stats.values()["cluster.svc.outlier_detection.ejections_enforced_consecutive_5xx"] == 1
        with cluster.request(good):
            socket.create_connection(good.address, timeout=5).close()
        assert not good.ejected


async def test_the_block_can_set_the_outcome_and_unknown_exceptions_report_nothing(backends: list[Backend]) -> None:
    one_strike = config([b.address for b in backends[:2]], outlier_detection={"consecutive_5xx": 1})
    async with ClusterClient.from_config(one_strike.model_copy(update={"health_check": None})) as cluster:
        first, second = cluster.hosts
        with pytest.raises(ValueError, match="caller's bug"), cluster.request(first):
            raise ValueError("the caller's bug, not the host's")
        assert not first.ejected
        assert first.active_requests == 0

        with cluster.request(second) as rq:  # e.g. a response that carried UNAVAILABLE without raising
            rq.outcome = Outcome.GATEWAY_FAILURE
        assert second.ejected


def test_the_thread_form_follows_a_hosts_file(backends: list[Backend], tmp_path: Path) -> None:
    hosts_file = tmp_path / "hosts.yaml"

    def write(chosen: list[Backend]) -> None:  # atomically, as docs/clusters.md tells operators to
        draft = tmp_path / "hosts.yaml.new"
        draft.write_text("".join(f"- {b.name}\n" for b in chosen))
        draft.replace(hosts_file)

    write(backends[:2])
    file_config = config(None, hosts_file={"path": str(hosts_file), "refresh_interval": 0.05})
    with ClusterClientThread.from_config(file_config) as cluster:
        assert {cluster.pick().name for _ in range(4)} == {backends[0].name, backends[1].name}
        write(backends[1:])
        # the newcomer is picked once its first health check passed; the host that left, never again
        wait_until_sync(lambda: {cluster.pick().name for _ in range(6)} == {backends[1].name, backends[2].name})
        assert backends[0].name not in {cluster.pick().name for _ in range(300)}
        assert cluster.stats.values()["cluster.svc.membership_change"] == 2


async def test_a_dns_cluster_is_resolved_before_the_first_pick_and_follows_the_answer(
    backends: list[Backend],
) -> None:
    answer = [backends[0].address]

    async def resolver(name: str, port: int) -> list[tuple[str, int]]:
        assert (name, port) == ("db.internal", 27017)
        return list(answer)

    dns_config = {"name": "svc", "dns": {"name": "db.internal", "port": 27017, "refresh_interval": 0.05}}
    async with ClusterClient.from_config(dns_config, resolver=resolver) as cluster:
        assert cluster.pick().name == backends[0].name
        answer[:] = [b.address for b in backends[1:]]
        await wait_until(lambda: {h.name for h in cluster.hosts} == {backends[1].name, backends[2].name})
        assert {cluster.pick().name for _ in range(4)} == {backends[1].name, backends[2].name}


async def test_request_without_a_host_picks_one_with_the_key() -> None:
    hosts = [f"127.0.0.1:{port}" for port in (1001, 1002, 1003)]
    cluster = ClusterClient.from_config({"name": "hashed", "hosts": hosts, "lb_policy": "maglev"})
    with cluster.request(key="user-42") as rq:
        chosen = rq.host
    assert all(cluster.pick("user-42") is chosen for _ in range(20))
    assert cluster.pick(b"user-42") is chosen


# -- outcome_from_exception: what real drivers raise --------------------------------------------------------------


def test_pymongo_errors_map_to_outcomes() -> None:
    from pymongo.errors import AutoReconnect, NotPrimaryError, OperationFailure, ServerSelectionTimeoutError

    assert outcome_from_exception(OperationFailure("E11000 duplicate key", code=11000)) is Outcome.SUCCESS
    assert outcome_from_exception(OperationFailure("shutting down", code=91)) is Outcome.UPSTREAM_ERROR
    assert outcome_from_exception(NotPrimaryError("not primary")) is Outcome.UPSTREAM_ERROR
    assert outcome_from_exception(AutoReconnect("reset")) is Outcome.LOCAL_ORIGIN_FAILURE
    assert outcome_from_exception(ServerSelectionTimeoutError("no server")) is Outcome.LOCAL_ORIGIN_FAILURE


def test_botocore_errors_map_to_outcomes() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    def client_error(code: str, status: int) -> ClientError:
        response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(response, "PutItem")

    assert outcome_from_exception(client_error("ProvisionedThroughputExceededException", 400)) is Outcome.SUCCESS
    assert outcome_from_exception(client_error("ValidationException", 400)) is Outcome.SUCCESS
    assert outcome_from_exception(client_error("InternalServerError", 500)) is Outcome.UPSTREAM_ERROR
    assert outcome_from_exception(client_error("ServiceUnavailable", 503)) is Outcome.GATEWAY_FAILURE
    assert outcome_from_exception(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")) is (
        Outcome.LOCAL_ORIGIN_FAILURE
    )
    assert outcome_from_exception(ReadTimeoutError(endpoint_url="http://127.0.0.1:1")) is Outcome.LOCAL_ORIGIN_FAILURE


def test_grpc_errors_from_a_real_server_map_to_outcomes() -> None:
    import grpc

    from testbeds.grpc.service import EchoClient, EchoServer

    def raised(call: Callable[[], object]) -> BaseException:
        try:
            call()
        except grpc.RpcError as exc:
            return exc
        raise AssertionError("the call did not fail")

    with EchoServer(workers=2) as server, EchoClient(("127.0.0.1", server.port)) as client:
        assert outcome_from_exception(raised(lambda: client.fail(b"14 down", timeout=5))) is Outcome.GATEWAY_FAILURE
        assert outcome_from_exception(raised(lambda: client.fail(b"13 broken", timeout=5))) is Outcome.UPSTREAM_ERROR
        assert outcome_from_exception(raised(lambda: client.fail(b"3 bad request", timeout=5))) is Outcome.SUCCESS
    with EchoClient(closed_port()) as nowhere:
        assert outcome_from_exception(raised(lambda: nowhere.unary(b"x", timeout=5))) is Outcome.GATEWAY_FAILURE


def test_connection_errors_are_local_origin_and_other_exceptions_say_nothing() -> None:
    assert outcome_from_exception(ConnectionRefusedError()) is Outcome.LOCAL_ORIGIN_FAILURE
    assert outcome_from_exception(TimeoutError()) is Outcome.LOCAL_ORIGIN_FAILURE
    assert outcome_from_exception(KeyError("x")) is None
