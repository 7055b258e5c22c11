"""The sidecar in front of a second, independent MongoDB wire-protocol server: nx-27017 (MIT, on SQLite).

SecantusDB presents itself as a replica-set primary; nx-27017 presents itself as a standalone server, and
speaks the async (uvloop) side of the wire protocol with its own framing code. The same driver workload must
behave as it does directly, and the sidecar's counters must equal what the workload issued.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo import monitoring

from meshproxy.proxy import ProxyThread

from .support import PREFIX, sidecar_config

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def nx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port = _free_port()
    logs = tmp_path_factory.mktemp("nx")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "nx_27017.nx_27017", "--db", "memory", "--host", "127.0.0.1",
            "--port", str(port), "--log-file", str(logs / "nx.log"), "--pid-file", str(logs / "nx.pid"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, "nx-27017 exited at start"
                assert time.monotonic() < deadline, "nx-27017 did not start listening"
                time.sleep(0.05)
        yield ("127.0.0.1", port)
    finally:
        process.terminate()
        process.wait(timeout=10)


class _IssuedCommands(monitoring.CommandListener):
    """What the driver itself says it sent: pymongo's command monitoring."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _reads(client: pymongo.MongoClient[dict[str, Any]]) -> tuple[list[Any], int, list[Any]]:
    orders = client["nx"]["orders"]
    return (
        [doc["_id"] for doc in orders.find({}, batch_size=10)],
        orders.count_documents({"even": True}),
        [doc["_id"] for doc in orders.find({"tag": "e"})],
    )


def test_a_driver_workload_against_nx27017_reads_as_direct_and_is_counted_exactly(
    nx_server: tuple[str, int],
) -> None:
    issued = _IssuedCommands()
    with ProxyThread(sidecar_config(nx_server)) as proxy:
        host, port = proxy.listener_address(PREFIX)
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            f"mongodb://{host}:{port}", serverSelectionTimeoutMS=5000, event_listeners=[issued]
        )
        with client:
            orders = client["nx"]["orders"]
            for number in range(25):
                orders.insert_one({"_id": number, "even": number % 2 == 0})
            orders.insert_many([{"_id": 100 + n, "even": False} for n in range(75)])
            orders.update_many({"even": True}, {"$set": {"tag": "e"}})
            through_sidecar = _reads(client)
            assert client.address == (host, port)
        stats = proxy.stats.values()
    direct: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        f"mongodb://{nx_server[0]}:{nx_server[1]}", serverSelectionTimeoutMS=5000
    )
    with direct:
        assert _reads(direct) == through_sidecar

    assert sorted(through_sidecar[0]) == [*range(25), *range(100, 175)]
    assert through_sidecar[1] == 13
    scope = f"mongo.{PREFIX}.db.nx.collection.orders.cmd"
    for command in ("insert", "update", "find", "getMore", "aggregate"):
        assert stats[f"{scope}.{command}.total"] == issued.counts[command], command
    assert issued.counts["insert"] == 26  # 25 insert_one + one insert_many batch
    assert issued.counts["getMore"] >= 9  # 100 documents in batches of 10
    assert stats[f"mongo.{PREFIX}.decoding_error"] == 0
    assert stats[f"mongo.{PREFIX}.unexpected_reply"] == 0
