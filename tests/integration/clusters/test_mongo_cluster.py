"""Three real SecantusDB servers behind one Mongo listener that balances operations, not connections.

The servers stand in for a cluster's stateless ``mongos`` routers. They do not share storage, so every one
is loaded with the same documents before the proxy starts: a read gives the same answer wherever it goes,
and a write lands on exactly one server, which lets the tests see where each operation went. Stateful
operations prove their affinity by working at all: a ``getMore`` on a server that did not open the cursor
fails with CursorNotFound, and a transaction whose operations are split fails with NoSuchTransaction.

Failures come from the servers themselves: ``stop()`` for a killed host, ``configureFailPoint`` /
``failCommand`` for a host failing its finds (``closeConnection``: the server drops the connection, a
local-origin failure for outlier detection) and for a slow one (``blockConnection``).

Why not a failing host's error *replies* (code 91 ShutdownInProgress and the other "server unwell" codes):
they reach the client, which takes them as its one server (the proxy) going down and pauses all its
operations until its monitor has checked again (pymongo: at most every 500 ms), so a test of ejection by
replies would spend its time waiting for the driver. Outlier detection counts them all the same
(``tests/cluster/test_outlier.py``).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from support import wait

from meshproxy.config import config_from_dict
from meshproxy.proxy import ProxyThread

WAIT = 15.0
DOCS = 300
LISTENER = "mongo"


wait_for = functools.partial(wait.wait_for, timeout=WAIT, interval=0.02)


class Backends:
    """Three SecantusDB servers loaded with the same ``shop.items``."""

    def __init__(self, tmp: Any) -> None:
        from secantus import SecantusDBServer

        self.stack = ExitStack()
        self.servers = [
            self.stack.enter_context(SecantusDBServer(port=0, storage_path=str(tmp / f"s{i}"))) for i in range(3)
        ]
        self.addresses = [(str(s.address[0]), int(s.address[1])) for s in self.servers]
        for address in self.addresses:
            with self.direct(address) as client:
                client.shop.items.insert_many([{"_id": i, "n": i} for i in range(DOCS)])

    @staticmethod
    def direct(address: tuple[str, int]) -> MongoClient[dict[str, Any]]:
        return MongoClient(*address, directConnection=True, serverSelectionTimeoutMS=3000)

    def fail_command(self, index: int, mode: Any, **data: Any) -> None:
        with self.direct(self.addresses[index]) as client:
            client.admin.command("configureFailPoint", "failCommand", mode=mode, data=data)

    def close(self) -> None:
        self.stack.close()


@pytest.fixture
def backends(tmp_path: Any) -> Iterator[Backends]:
    rig = Backends(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


def proxy_for(backends: Backends, listener: dict[str, Any] | None = None, **cluster: Any) -> ProxyThread:
    config = config_from_dict(
        {
            "admin": None,
            "listeners": [
                {"name": LISTENER, "address": "127.0.0.1:0", "protocol": "mongo", "cluster": "db", **(listener or {})}
            ],
            "clusters": [
                {
                    "name": "db",
                    "hosts": [f"{h}:{p}" for h, p in backends.addresses],
                    "health_check": {"type": "mongo", "interval": "0.2s", "timeout": "1s", "unhealthy_threshold": 2},
                    "outlier_detection": {"interval": "0.2s", "base_ejection_time": "1s"},
                    **cluster,
                }
            ],
        }
    )
    return ProxyThread(config)


def client_of(proxy: ProxyThread, **options: Any) -> MongoClient[dict[str, Any]]:
    host, port = proxy.listener_address(LISTENER)
    options.setdefault("serverSelectionTimeoutMS", 5000)
    return MongoClient(f"mongodb://{host}:{port}/", **options)


def host_requests(proxy: ProxyThread, backends: Backends) -> list[int]:
    values = proxy.stats.values()
    return [int(values[f"cluster.db.host.{h}:{p}.rq_total"]) for h, p in backends.addresses]


def host_state(proxy: ProxyThread, index: int, backends: Backends) -> Any:
    h, p = backends.addresses[index]
    for cluster in proxy.proxy.cluster_status():
        for host in cluster.hosts:
            if host.address == f"{h}:{p}":
                return host
    raise AssertionError(f"host {h}:{p} is not in /clusters")


def test_one_pooled_connection_spreads_its_operations_over_all_three_hosts(backends: Backends) -> None:
    with proxy_for(backends) as proxy, client_of(proxy, maxPoolSize=1) as client:
        before = host_requests(proxy, backends)
        for i in range(60):
            assert client.shop.items.find_one({"_id": i}) == {"_id": i, "n": i}
        after = host_requests(proxy, backends)
        served = [a - b for a, b in zip(after, before, strict=True)]
        # Round robin over one connection: every host takes about a third of the 60 finds.
        assert all(15 <= n <= 25 for n in served), served
        assert proxy.stats.values()[f"mongo.{LISTENER}.route_balanced"] >= 60


def test_cursors_over_many_get_mores_stay_on_the_host_that_opened_them(backends: Backends) -> None:
    """Three cursors interleaved, 7 documents a batch: 42 getMores each. A getMore anywhere else than the
    cursor's own server would fail with CursorNotFound."""
    with proxy_for(backends) as proxy, client_of(proxy, maxPoolSize=2) as client:
        cursors = [client.shop.items.find({}, batch_size=7).sort("_id", 1) for _ in range(3)]
        seen: list[list[int]] = [[], [], []]
        for _ in range(DOCS):
            for index, cursor in enumerate(cursors):
                seen[index].append(next(cursor)["_id"])
        assert seen == [list(range(DOCS))] * 3
        abandoned = client.shop.items.find({}, batch_size=5)
        next(abandoned)
        abandoned.close()  # killCursors, sent to the cursor's host
        values = proxy.stats.values()
        assert values[f"mongo.{LISTENER}.route_cursor"] >= 3 * (DOCS // 7) + 1
        assert values[f"mongo.{LISTENER}.cmd.getMore.total"] >= 3 * (DOCS // 7)
        assert values.get(f"mongo.{LISTENER}.op_reply_cursor_not_found", 0) == 0
        assert min(host_requests(proxy, backends)) > 0


def test_a_transaction_stays_on_its_host_and_plain_writes_land_once_each(backends: Backends) -> None:
    with proxy_for(backends) as proxy, client_of(proxy, maxPoolSize=1) as client:
        orders = client.shop.orders
        with client.start_session() as session, session.start_transaction():
            orders.insert_many([{"_id": f"t{i}"} for i in range(3)], session=session)
            assert orders.count_documents({"_id": {"$regex": "^t"}}, session=session) == 3
            orders.update_one({"_id": "t0"}, {"$set": {"paid": True}}, session=session)
        for i in range(30):
            orders.insert_one({"_id": f"w{i}"})
        assert proxy.stats.values()[f"mongo.{LISTENER}.route_transaction"] >= 3
    per_host_txn = []
    per_host_writes = []
    for address in backends.addresses:
        with Backends.direct(address) as direct:
            per_host_txn.append(direct.shop.orders.count_documents({"_id": {"$regex": "^t"}}))
            per_host_writes.append(direct.shop.orders.count_documents({"_id": {"$regex": "^w"}}))
    assert sorted(per_host_txn) == [0, 0, 3]  # the whole transaction committed on one server
    assert sum(per_host_writes) == 30  # each write once, nowhere twice
    assert sum(1 for n in per_host_writes if n) == 3  # spread over the three


def test_a_killed_host_is_marked_down_and_reads_see_no_failure(backends: Backends) -> None:
    """Reads run in a loop while one server stops. Requests in flight on it get HostUnreachable, which
    pymongo retries (retryReads); requests not yet sent move to another host. No read fails."""
    errors: list[BaseException] = []
    reads = 0
    stop = threading.Event()

    def read_loop(client: MongoClient[dict[str, Any]]) -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                assert client.shop.items.find_one({"_id": reads % DOCS}) is not None
                reads += 1
            except (PyMongoError, AssertionError) as error:
                errors.append(error)

    with proxy_for(backends) as proxy, client_of(proxy, maxPoolSize=2) as client:
        workers = [threading.Thread(target=read_loop, args=(client,)) for _ in range(2)]
        for worker in workers:
            worker.start()
        try:
            wait_for(lambda: reads > 50, "reads through all three hosts")
            backends.servers[2].stop()
            marked_down = wait_for(lambda: host_state(proxy, 2, backends).failed_active_health_check, "mark down")
            down_at = host_requests(proxy, backends)[2]
            reads_at = reads
            wait_for(lambda: reads > reads_at + 100, "100 more reads")
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        assert errors == []
        assert host_requests(proxy, backends)[2] == down_at  # nothing more went to the dead host
        print(f"killed host marked down {marked_down:.2f}s after stop(); {reads} reads, 0 failed")


def test_a_host_failing_its_operations_is_ejected_and_readmitted_after_the_ejection_time(
    backends: Backends,
) -> None:
    """Host 1 drops the connection on every find: each such find is a local-origin failure for outlier
    detection and gets HostUnreachable, which pymongo retries, and the session sends the retry to another
    host. Six client connections reading at once fail there 5 times in a row, the host is ejected, and once
    the ejection time has passed it takes traffic again. No find fails client-side."""
    with proxy_for(backends) as proxy, client_of(proxy, maxPoolSize=6) as client:
        backends.fail_command(1, "alwaysOn", failCommands=["find"], closeConnection=True)
        errors: list[BaseException] = []
        finds = 0

        def read_until_ejected() -> None:
            nonlocal finds
            start = time.monotonic()
            while not host_state(proxy, 1, backends).ejected and time.monotonic() - start < WAIT:
                try:
                    assert client.shop.items.find_one({"_id": 1}) == {"_id": 1, "n": 1}
                    finds += 1
                except (PyMongoError, AssertionError) as error:
                    errors.append(error)

        workers = [threading.Thread(target=read_until_ejected) for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert errors == []
        assert host_state(proxy, 1, backends).ejected
        backends.fail_command(1, "off")
        during = host_requests(proxy, backends)[1]
        for _ in range(30):
            assert client.shop.items.find_one({"_id": 1}) is not None
        assert host_requests(proxy, backends)[1] == during  # ejected: it gets nothing
        readmitted = wait_for(lambda: not host_state(proxy, 1, backends).ejected, "readmission")
        for _ in range(30):
            assert client.shop.items.find_one({"_id": 1}) is not None
        assert host_requests(proxy, backends)[1] > during  # back in rotation
        values = proxy.stats.values()
        assert values["cluster.db.outlier_detection.ejections_enforced_total"] >= 1
        lost = values[f"mongo.{LISTENER}.upstream_lost_reply"]
        assert lost >= 1  # finds dropped by host 1, answered HostUnreachable and retried by pymongo
        print(f"ejected after {finds} finds ({lost} dropped by host 1, retried); readmitted {readmitted:.2f}s later")


def test_with_retry_on_the_proxy_retries_reads_and_driver_marked_writes_but_no_other_write(
    backends: Backends,
) -> None:
    """``retry`` on the listener: a client that retries nothing itself still sees no failed find or
    retryable insert when host 1 drops them; an insert the driver did not mark retryable is not resent
    (it may have been applied), so that client sees HostUnreachable."""
    backends.fail_command(1, "alwaysOn", failCommands=["find", "insert"], closeConnection=True)
    with proxy_for(backends, listener={"retry": {}}) as proxy:
        values = proxy.stats.values
        operations = 0
        with client_of(proxy, maxPoolSize=1, retryReads=False, retryWrites=True) as client:
            # After a failure the listener avoids host 1 for a second, so this takes a few seconds.
            deadline = time.monotonic() + WAIT
            while values()["cluster.db.upstream_rq_retry"] < 3 and time.monotonic() < deadline:
                assert client.shop.items.find_one({"_id": operations % DOCS}) is not None
                client.shop.retried.insert_one({"_id": operations})  # has a txnNumber: retryable
                operations += 1
        retried = values()["cluster.db.upstream_rq_retry"]
        assert retried >= 3
        assert values()["cluster.db.upstream_rq_retry_success"] == retried
        with client_of(proxy, maxPoolSize=1, retryReads=False, retryWrites=False) as plain:
            failure = None
            deadline, i = time.monotonic() + WAIT, 0
            while failure is None and time.monotonic() < deadline:
                try:
                    plain.shop.unmarked.insert_one({"_id": i})  # no txnNumber: never resent
                except PyMongoError as error:
                    failure = error
                i += 1
        assert failure is not None
        assert "HostUnreachable" in str(failure)
        assert values()["cluster.db.upstream_rq_retry"] == retried
    landed = 0
    for address in backends.addresses:
        with Backends.direct(address) as direct:
            landed += direct.shop.retried.count_documents({})
    assert landed == operations  # each retryable insert exactly once
    print(f"proxy retried {retried} of {2 * operations} operations, all succeeded; an unmarked insert failed")


def test_least_request_sends_a_slow_host_less(backends: Backends) -> None:
    backends.fail_command(0, "alwaysOn", failCommands=["find"], blockConnection=True, blockTimeMS=40)
    with proxy_for(backends, lb_policy="least_request") as proxy, client_of(proxy, maxPoolSize=8) as client:
        before = host_requests(proxy, backends)
        done = threading.Event()

        def loop() -> None:
            while not done.is_set():
                client.shop.items.find_one({"_id": 3})

        workers = [threading.Thread(target=loop) for _ in range(6)]
        for worker in workers:
            worker.start()
        try:
            wait_for(lambda: sum(host_requests(proxy, backends)) - sum(before) > 600, "600 finds")
        finally:
            done.set()
            for worker in workers:
                worker.join()
        served = [a - b for a, b in zip(host_requests(proxy, backends), before, strict=True)]
        share = served[0] / sum(served)
        # Round robin would give it a third; with two random choices it wins only against a less busy
        # host, so it gets far less. Tolerance: under 20 %.
        assert share < 0.20, served
        print(f"slow host share {share:.1%} of {sum(served)} finds: {served}")
