"""Acceptance (issue 5, DynamoDB): one meshproxy DynamoDB listener in front of three real moto servers,
driven by real boto3 clients, balancing every request rather than every connection.

Rig: ``boto3 -> meshproxy (listener "ddb", cluster "backends") -> host A: moto, host B: meshproxy -> moto,
host C: meshproxy -> moto``. moto closes its connection after every response (``Connection: close``, every
time), so a host that is a bare moto server costs one upstream connection per request whatever the proxy
does; hosts B and C are moto behind a second meshproxy, which keeps its client side alive as any HTTP
server should, and that is where the front proxy's keep-alive shows. The second meshproxies also carry the
faults of (c) and (d) (the DynamoDB fault filter: an ``InternalServerError`` abort, a fixed delay).

moto keeps its tables in state shared by every server of the process, so the table made once is on all
three hosts. Nothing waits a fixed time for a state: every wait polls with a generous deadline, and no
assertion is about how long something took.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from moto.server import ThreadedMotoServer
from support import wait
from support.moto import start_moto

from meshproxy.cluster.cluster import Host
from meshproxy.config import config_from_dict
from meshproxy.proxy import ProxyThread

Address = tuple[str, int]

CLUSTER = "backends"
TABLE = f"accept_{uuid.uuid4().hex[:8]}"
"""The module's table (a fresh name: moto's state is shared with the rest of the suite)."""
DEADLINE = 20.0
"""Seconds any polled state may take before the test fails (states come within a second here)."""

NO_RETRIES = Config(
    retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=10, max_pool_connections=1
)
"""boto3 without its own retries: a failed call is a failed call, whatever the proxy did."""


def address_of(server: ThreadedMotoServer) -> Address:
    return server.get_host_and_port()


def client(address: Address) -> Any:
    host, port = address
    return boto3.client(
        "dynamodb", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="x", config=NO_RETRIES,
    )


@pytest.fixture(scope="module")
def motos() -> Iterator[list[Address]]:
    """Three moto servers; the module's table ``TABLE`` exists on all of them (moto's shared state)."""
    servers = [start_moto() for _ in range(3)]
    addresses = [address_of(s) for s in servers]
    direct = client(addresses[0])
    direct.create_table(
        TableName=TABLE, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
    )
    for i in range(20):
        direct.put_item(TableName=TABLE, Item={"pk": {"S": f"k{i}"}, "v": {"N": str(i)}})
    try:
        yield addresses
    finally:
        try:
            direct.delete_table(TableName=TABLE)
        finally:
            for server in servers:
                server.stop()


def front(upstream: Address, fault: dict[str, Any] | None = None) -> ProxyThread:
    """A second meshproxy in front of one moto server (keep-alive towards the first; optional fault)."""
    filters: list[dict[str, Any]] = [{"type": "stats"}]
    if fault is not None:
        filters.append({"type": "fault", "match": {"operations": ["GetItem"]}, **fault})
    config = config_from_dict({
        "admin": None,
        "listeners": [{
            "name": "front", "address": "127.0.0.1:0", "protocol": "dynamo", "cluster": "moto", "filters": filters,
        }],
        "clusters": [{"name": "moto", "hosts": [f"{upstream[0]}:{upstream[1]}"]}],
    })
    return ProxyThread(config)  # started by ``with``


def mesh(
    hosts: list[Address], lb_policy: str = "round_robin", outlier: dict[str, Any] | None = None, **listener: Any
) -> ProxyThread:
    """The proxy under test: one DynamoDB listener, one cluster of ``hosts`` with a DynamoDB health check
    and outlier detection on short timers (``outlier`` adds to its settings)."""
    config = config_from_dict({
        "admin": None,
        "listeners": [{
            "name": "ddb", "address": "127.0.0.1:0", "protocol": "dynamo", "cluster": CLUSTER, **listener,
        }],
        "clusters": [{
            "name": CLUSTER,
            "hosts": [f"{h}:{p}" for h, p in hosts],
            "lb_policy": lb_policy,
            "connect_timeout": 2,
            "health_check": {
                "type": "dynamodb", "interval": 0.2, "timeout": 1, "unhealthy_threshold": 2, "healthy_threshold": 1,
            },
            "outlier_detection": {
                "consecutive_5xx": 3, "interval": 0.1, "base_ejection_time": 0.5, **(outlier or {}),
            },
        }],
    })
    return ProxyThread(config)  # started by ``with``


def hosts_of(proxy: ProxyThread) -> list[Host]:
    return proxy.proxy.clusters[CLUSTER].hosts


def host_stat(proxy: ProxyThread, host: Address, stat: str) -> int:
    return int(proxy.stats.values().get(f"cluster.{CLUSTER}.host.{host[0]}:{host[1]}.{stat}", 0))


def stat(proxy: ProxyThread, name: str) -> int:
    return int(proxy.stats.values().get(name, 0))


wait_for = functools.partial(wait.wait_for, timeout=DEADLINE, interval=0.02)


class Loop:
    """One boto3 client (one keep-alive connection) calling GetItem in a thread until stopped."""

    def __init__(self, address: Address) -> None:
        self.client = client(address)
        self.done = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self.client.get_item(TableName=TABLE, Key={"pk": {"S": f"k{i % 20}"}})
            except (ClientError, BotoCoreError) as error:
                self.errors.append(str(error))
            self.done += 1
            i += 1

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)

    def wait_calls(self, more: int) -> None:
        target = self.done + more
        wait_for(lambda: self.done >= target, f"{more} more calls (at {self.done})")


def test_one_client_connection_spreads_its_requests_over_every_host_on_kept_alive_connections(
    motos: list[Address],
) -> None:
    """(a) Round robin over one boto3 connection: every host gets a third of the requests; the hosts that
    keep connections alive (B, C) are dialled once, the bare moto (A) once per request it gets."""
    with front(motos[1]) as b, front(motos[2]) as c:
        hosts = [motos[0], b.listener_address("front"), c.listener_address("front")]
        with mesh(hosts) as proxy:
            ddb = client(proxy.listener_address("ddb"))
            for i in range(60):
                assert ddb.get_item(TableName=TABLE, Key={"pk": {"S": f"k{i % 20}"}})["Item"]["v"] == {"N": str(i % 20)}
            rq = [host_stat(proxy, h, "rq_total") for h in hosts]
            cx = [host_stat(proxy, h, "cx_total") for h in hosts]
            print(f"\n(a) requests per host {rq}, upstream connections per host {cx}")
            assert stat(proxy, "listener.ddb.downstream_cx_total") == 1
            assert all(19 <= n <= 21 for n in rq), rq  # round robin: 20 each (±1 for where the cycle starts)
            assert cx[1] == cx[2] == 1, cx  # keep-alive: one connection each for all their requests
            assert cx[0] == rq[0], (cx, rq)  # moto says Connection: close after every response
            assert all(host_stat(proxy, h, "rq_active") == 0 for h in hosts)


def test_a_backend_that_dies_is_skipped_without_a_failed_call(motos: list[Address]) -> None:
    """(b) The bare moto host is stopped while a client loops with boto3's retries off: until health
    checking marks it down, the proxy re-picks another host when connecting fails (the request never left);
    afterwards it is not picked at all. No call fails."""
    victim = start_moto()
    try:
        with front(motos[1]) as b, front(motos[2]) as c:
            hosts = [address_of(victim), b.listener_address("front"), c.listener_address("front")]
            # Connect failures are kept out of outlier detection here (split, not enforced), so that it is the
            # health checker that marks the host down. (With them in, outlier detection ejects the host first,
            # and while a host is ejected the health checker does not count its failures: see the report.)
            local_origin_apart = {
                "split_external_local_origin_errors": True, "enforcing_consecutive_local_origin_failure": 0,
            }
            with mesh(hosts, outlier=local_origin_apart) as proxy, Loop(proxy.listener_address("ddb")) as loop:
                loop.wait_calls(30)
                assert host_stat(proxy, hosts[0], "rq_total") > 0
                victim.stop()
                dead = hosts_of(proxy)[0]
                wait_for(lambda: not dead.passes_health_checks, "health checking marks the stopped host down")
                loop.wait_calls(3)  # the balancer is rebuilt right after the flag changes, on the proxy's thread
                at_down = host_stat(proxy, hosts[0], "rq_total")
                loop.wait_calls(60)
                after = [host_stat(proxy, h, "rq_total") for h in hosts]
                connect_failures = stat(proxy, f"cluster.{CLUSTER}.upstream_cx_connect_fail")
                retries = stat(proxy, f"cluster.{CLUSTER}.upstream_rq_retry")
            print(
                f"\n(b) calls {loop.done}, failed {len(loop.errors)}, connect failures {connect_failures},"
                f" requests sent to another host {retries}, per host {after}, errors {loop.errors}"
            )
            assert loop.errors == []
            assert after[0] == at_down  # marked down: no more requests for it
            assert after[1] > 30
            assert after[2] > 30
    finally:
        victim.stop()


def test_a_backend_answering_errors_is_ejected_then_readmitted(motos: list[Address]) -> None:
    """(c) Host B answers every GetItem with InternalServerError (500; its health check, a ListTables,
    passes): three in a row eject it (``consecutive_5xx: 3``); after ``base_ejection_time`` it is back in
    the rotation, fails three more and is ejected again. The client sees only those errors."""
    with front(motos[1], {"abort": {"error_type": "InternalServerError"}}) as b, front(motos[2]) as c:
        hosts = [motos[0], b.listener_address("front"), c.listener_address("front")]
        with mesh(hosts) as proxy:
            sick = hosts_of(proxy)[1]
            enforced = f"cluster.{CLUSTER}.outlier_detection.ejections_enforced_total"
            with Loop(proxy.listener_address("ddb")) as loop:
                wait_for(lambda: sick.ejected, "the failing host is ejected")
                first = host_stat(proxy, hosts[1], "rq_total")
                wait_for(lambda: stat(proxy, enforced) >= 2, "re-admitted after the ejection time, then ejected again")
                second = host_stat(proxy, hosts[1], "rq_total")
            ejections = stat(proxy, enforced)
            served = [host_stat(proxy, h, "rq_total") for h in hosts]
        print(
            f"\n(c) calls {loop.done}, errors {len(loop.errors)}, ejections {ejections}, per host {served},"
            f" B at first ejection {first}, at second {second}"
        )
        assert second >= first + 3  # it was picked again after its first ejection ran out
        assert all("InternalServerError" in e for e in loop.errors), loop.errors[:3]
        # Round robin gives B every third request until it is out: 3 errors per ejection, plus a streak in progress.
        assert len(loop.errors) <= 3 * ejections + 2
        assert served[1] < min(served[0], served[2])


def test_least_request_sends_a_slow_backend_clearly_less_than_a_third(motos: list[Address]) -> None:
    """(d) Host C answers GetItem 0.2 s late; six concurrent clients over least_request: requests pile up
    on C, so power-of-two-choices prefers the others. C gets less than a quarter (a third would be 33 %;
    measured 8-17 % of 180 requests over fifteen runs, mean 14 %; 25 % is four standard deviations above)."""
    with front(motos[1]) as b, front(motos[2], {"delay": {"duration": 0.2}}) as c:
        hosts = [motos[0], b.listener_address("front"), c.listener_address("front")]
        with mesh(hosts, "least_request") as proxy:
            address = proxy.listener_address("ddb")
            clients = [client(address) for _ in range(6)]
            errors: list[BaseException] = []

            def work(ddb: Any) -> None:
                try:
                    for i in range(30):
                        ddb.get_item(TableName=TABLE, Key={"pk": {"S": f"k{i % 20}"}})
                except BaseException as error:  # reported by the main thread
                    errors.append(error)

            threads = [threading.Thread(target=work, args=(ddb,)) for ddb in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            served = [host_stat(proxy, h, "rq_total") for h in hosts]
        share = served[2] / sum(served)
        print(f"\n(d) per host {served}, slow host's share {share:.1%}")
        assert errors == []
        assert sum(served) == 180
        assert share < 0.25, served


def test_ring_hash_sends_each_item_to_one_host_by_its_partition_key(motos: list[Address]) -> None:
    """``partition_keys`` makes ring hash place every request for one item (GetItem, PutItem, UpdateItem) on
    the same host, while different items spread over the hosts."""
    with mesh(motos, "ring_hash", partition_keys={TABLE: "pk"}) as proxy:
        ddb = client(proxy.listener_address("ddb"))

        def served_by(call: Callable[[], object]) -> int:
            before = [host_stat(proxy, h, "rq_total") for h in motos]
            call()
            after = [host_stat(proxy, h, "rq_total") for h in motos]
            changed = [i for i in range(3) if after[i] != before[i]]
            assert len(changed) == 1
            return changed[0]

        where: dict[str, set[int]] = {}
        for i in range(20):
            key = {"pk": {"S": f"k{i}"}}
            where[f"k{i}"] = {
                served_by(lambda key=key: ddb.get_item(TableName=TABLE, Key=key)),  # type: ignore[misc]
                served_by(lambda i=i: ddb.put_item(TableName=TABLE, Item={"pk": {"S": f"k{i}"}, "v": {"N": str(i)}})),  # type: ignore[misc]
                served_by(lambda key=key: ddb.update_item(  # type: ignore[misc]
                    TableName=TABLE, Key=key, UpdateExpression="SET v = v + :z",
                    ExpressionAttributeValues={":z": {"N": "0"}},
                )),
                served_by(lambda key=key: ddb.get_item(TableName=TABLE, Key=key)),  # type: ignore[misc]
            }
        assert all(len(hosts) == 1 for hosts in where.values()), where
        assert len(set().union(*where.values())) >= 2  # 20 keys do not all hash to one of three hosts
