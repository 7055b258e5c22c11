"""``python -m testbeds.replay`` (or ``./dev demo replay``): capture real traffic of the three protocols,
replay each capture against a fresh backend with ``meshproxy replay``, and show that every answer matched.

For each protocol a real client talks to a real server, and the traffic is captured:

- with **tcpdump** on the loopback interface when it is installed and may capture here (root), the client
  talking to the server directly; else
- with the **meshproxy tap**: the client talks through a meshproxy listener whose tap is switched on and
  off through the admin endpoint (``POST /tap/start`` / ``/tap/stop``).

- MongoDB: pymongo -> SecantusDB: create an index, insert 300 orders, read them in batches of 10 (getMore),
  a hinted query, an aggregation, count, distinct;
- DynamoDB: boto3 -> moto: create a table, put 20 items, get, query, a paginated scan, a batch write, a
  transaction, a delete;
- gRPC: grpcio -> the testbed's echo server: unary calls, server, client and bidirectional streaming.

Then ``meshproxy replay FILE --target HOST:PORT --writes --rate 500`` (in its own process, as a user runs
it) sends each capture's operations to a fresh server of the same kind (an empty SecantusDB, moto after a
reset, a new echo server), compares every answer with the recorded one, and exits 0 when nothing differed.
The run ends with a summary table and exits 1 when any replay did not exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshproxy.config import MeshConfig, dynamo_sidecar_config, grpc_sidecar_config, mongo_sidecar_config
from meshproxy.proxy import ProxyThread
from meshproxy.replay.decode import decode_file

REPLAY_RATE = 500
"""Operations per second the replays run at: the recorded pauses would only make the testbed slower."""


@dataclass(slots=True)
class Outcome:
    protocol: str
    capture: str
    path: Path
    operations: Counter[str]
    exit_code: int
    sent: int = 0
    skipped: int = 0
    differences: int = -1


# -- capturing ------------------------------------------------------------------------------------------


def tcpdump_usable() -> bool:
    """tcpdump is installed and this process may capture (root)."""
    return shutil.which("tcpdump") is not None and hasattr(os, "geteuid") and os.geteuid() == 0


@contextlib.contextmanager
def tcpdump(path: Path, port: int) -> Iterator[None]:
    """tcpdump on ``lo`` for TCP port ``port`` into ``path`` for the ``with`` block."""
    process = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-U", "-s", "0", "-w", str(path), f"tcp port {port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    line = process.stderr.readline()  # "listening on lo, ..." once it captures
    if "listening" not in line:
        process.kill()
        raise RuntimeError(f"tcpdump did not start: {line.strip()}")
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)


def _admin(proxy: ProxyThread, path: str) -> dict[str, Any]:
    address = proxy.admin_address
    assert address is not None
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("POST", path)
        response = connection.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: {response.status} {body.strip()}")
        return dict(json.loads(body))
    finally:
        connection.close()


@contextlib.contextmanager
def tapped(config: MeshConfig, directory: Path, name: str) -> Iterator[tuple[str, int]]:
    """A meshproxy listener (the ``config``'s only one) recorded by its tap into ``directory/name`` for the
    ``with`` block; yields the address clients should use."""
    assert config.admin is not None
    config = config.model_copy(update={"admin": config.admin.model_copy(update={"tap_directory": str(directory)})})
    listener = config.listeners[0].name
    with ProxyThread(config) as proxy:
        _admin(proxy, f"/tap/start?listener={listener}&path={name}")
        try:
            yield proxy.listener_address(listener)
        finally:
            status = _admin(proxy, f"/tap/stop?listener={listener}")
            if status["dropped_bytes"]:
                print(f"warning: the tap dropped {status['dropped_bytes']} bytes", file=sys.stderr)


def wait_until_captured(path: Path, expected: int, timeout: float = 5.0) -> None:
    """tcpdump writes what it has seen shortly after: wait until the file holds ``expected`` operations."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(decode_file(path).operations) >= expected:
            return
        time.sleep(0.05)


# -- workloads ------------------------------------------------------------------------------------------


def mongo_workload(address: tuple[str, int]) -> int:
    """Returns the number of commands pymongo sent (as its command monitoring saw them)."""
    from pymongo import ASCENDING, MongoClient, monitoring

    class Count(monitoring.CommandListener):
        sent = 0

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            Count.sent += 1

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    with MongoClient(*address, directConnection=True, event_listeners=[Count()]) as client:
        orders = client.shop.orders
        orders.create_index([("customer", ASCENDING)])
        orders.insert_many([{"_id": i, "customer": i % 10, "amount": i * 3 % 97} for i in range(300)])
        assert len(list(orders.find({}, batch_size=10))) == 300
        assert len(list(orders.find({"customer": 3}, batch_size=7).hint([("customer", ASCENDING)]))) == 30
        pipeline = [{"$match": {"amount": {"$gt": 50}}}, {"$sort": {"_id": 1}}]
        assert list(orders.aggregate(pipeline, batchSize=20))
        assert orders.count_documents({"customer": {"$lt": 5}}) == 150
        assert sorted(orders.distinct("customer")) == list(range(10))
    return Count.sent


def dynamo_workload(address: tuple[str, int]) -> int:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "dynamodb", endpoint_url=f"http://{address[0]}:{address[1]}", region_name="us-east-1",
        aws_access_key_id="testbed", aws_secret_access_key="testbed", config=Config(retries={"total_max_attempts": 1}),
    )  # fmt: skip
    calls = 0

    def call(name: str, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return getattr(client, name)(**kwargs)

    call(
        "create_table", TableName="orders", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "customer", "KeyType": "HASH"}, {"AttributeName": "n", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "customer", "AttributeType": "S"}, {"AttributeName": "n", "AttributeType": "N"},
        ],
    )  # fmt: skip
    for n in range(20):
        call("put_item", TableName="orders", Item={"customer": {"S": f"c{n % 4}"}, "n": {"N": str(n)}})
    call("get_item", TableName="orders", Key={"customer": {"S": "c1"}, "n": {"N": "5"}})
    call(
        "query", TableName="orders", KeyConditionExpression="customer = :c",
        ExpressionAttributeValues={":c": {"S": "c2"}},
    )  # fmt: skip
    page = call("scan", TableName="orders", Limit=8)
    while "LastEvaluatedKey" in page:
        page = call("scan", TableName="orders", Limit=8, ExclusiveStartKey=page["LastEvaluatedKey"])
    puts = [{"PutRequest": {"Item": {"customer": {"S": "c9"}, "n": {"N": str(n)}}}} for n in range(5)]
    call("batch_write_item", RequestItems={"orders": puts})
    transaction = [
        {"Put": {"TableName": "orders", "Item": {"customer": {"S": "t"}, "n": {"N": str(n)}}}} for n in range(2)
    ]
    call("transact_write_items", TransactItems=transaction)
    call("delete_item", TableName="orders", Key={"customer": {"S": "c0"}, "n": {"N": "0"}})
    client.close()
    return calls


def grpc_workload(address: tuple[str, int]) -> int:
    from testbeds.grpc.service import EchoClient

    with EchoClient(address) as client:
        for n in range(5):
            assert client.unary(b"%d" % n, timeout=5) == b"echo:%d" % n
        assert len(list(client.count(b"20", timeout=5))) == 20
        assert client.sum(iter([b"x" * 100] * 10), timeout=5)
        assert len(list(client.ping(iter([b"a", b"b", b"c"]), timeout=5))) == 3
    return 8


# -- one protocol ---------------------------------------------------------------------------------------


def capture_and_replay(
    protocol: str, directory: Path, use_tcpdump: bool, server: tuple[str, int],
    sidecar: Callable[[tuple[str, int]], MeshConfig], workload: Callable[[tuple[str, int]], int],
    fresh_target: Callable[[], contextlib.AbstractContextManager[tuple[str, int]]], extra: list[str],
) -> Outcome:  # fmt: skip
    path = directory / f"{protocol}.pcapng"
    if use_tcpdump:
        path = path.with_suffix(".pcap")
        with tcpdump(path, server[1]):
            done = workload(server)
            wait_until_captured(path, done)
        how = "tcpdump"
    else:
        with tapped(sidecar(server), directory, path.name) as address:
            done = workload(address)
        how = "meshproxy tap"
    decoded = decode_file(path)
    operations = Counter(op.operation for op in decoded.operations)
    print(f"\n== {protocol}: {done} client calls captured by {how} into {path} ({path.stat().st_size} bytes)")
    print("   decoded: " + ", ".join(f"{name} x{count}" for name, count in sorted(operations.items())))
    with fresh_target() as target:
        command = [
            sys.executable, "-m", "meshproxy", "replay", str(path), "--target", f"{target[0]}:{target[1]}",
            "--writes", "--rate", str(REPLAY_RATE), *extra,
        ]  # fmt: skip
        print("$ meshproxy " + " ".join(command[3:]))
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    print(result.stdout.rstrip())
    if result.stderr.strip():
        print(result.stderr.rstrip(), file=sys.stderr)
    outcome = Outcome(protocol, how, path, operations, result.returncode)
    match = re.search(r"^(\d+) sent, (\d+) skipped", result.stdout, re.MULTILINE)
    if match:
        outcome.sent, outcome.skipped = int(match.group(1)), int(match.group(2))
    match = re.search(r"^(\d+) difference\(s\)", result.stdout, re.MULTILINE)
    if match:
        outcome.differences = int(match.group(1))
    return outcome


@contextlib.contextmanager
def secantus(directory: Path) -> Iterator[tuple[str, int]]:
    from secantus import SecantusDBServer

    with SecantusDBServer(port=0, storage_path=str(directory / f"db-{uuid.uuid4().hex[:8]}")) as server:
        yield (str(server.address[0]), int(server.address[1]))


@contextlib.contextmanager
def moto(reset: bool = True) -> Iterator[tuple[str, int]]:
    """moto as an HTTP server; ``reset``: no tables (moto's state is shared by the whole process)."""
    import logging
    import urllib.request

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        if reset:
            request = urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
            urllib.request.urlopen(request, timeout=5).close()
        yield (str(host), int(port))
    finally:
        server.stop()


@contextlib.contextmanager
def echo_server() -> Iterator[tuple[str, int]]:
    from testbeds.grpc.service import EchoServer

    with EchoServer() as server:
        yield ("127.0.0.1", server.port)


def run(capture: str, directory: Path) -> list[Outcome]:
    use_tcpdump = capture == "tcpdump" or (capture == "auto" and tcpdump_usable())
    if capture == "tcpdump" and not tcpdump_usable():
        raise SystemExit("tcpdump is not installed or this user may not capture: use --capture tap")
    local = ("127.0.0.1", 0)
    admin = ("127.0.0.1", 0)
    outcomes = []
    with secantus(directory) as db:
        outcomes.append(capture_and_replay(
            "mongodb", directory, use_tcpdump, db,
            lambda upstream: mongo_sidecar_config(listen=local, upstream=upstream, admin=admin, stat_prefix="mongo"),
            mongo_workload, lambda: secantus(directory), ["--compare-bodies"],
        ))  # fmt: skip
    with moto() as source:
        outcomes.append(capture_and_replay(
            "dynamodb", directory, use_tcpdump, source,
            lambda upstream: dynamo_sidecar_config(listen=local, upstream=upstream, admin=admin, stat_prefix="ddb"),
            dynamo_workload, moto, [],
        ))  # fmt: skip
    with echo_server() as source:
        outcomes.append(capture_and_replay(
            "grpc", directory, use_tcpdump, source,
            lambda upstream: grpc_sidecar_config(listen=local, upstream=upstream, admin=admin, stat_prefix="grpc"),
            grpc_workload, echo_server, ["--compare-bodies"],
        ))  # fmt: skip
    return outcomes


def print_summary(outcomes: list[Outcome]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="capture -> meshproxy replay on a fresh backend")
    for column in ("protocol", "captured by", "operations", "replayed", "skipped", "differences", "exit"):
        table.add_column(column, justify="left" if column in ("protocol", "captured by") else "right")
    for o in outcomes:
        table.add_row(
            o.protocol, o.capture, str(sum(o.operations.values())), str(o.sent), str(o.skipped),
            str(o.differences) if o.differences >= 0 else "?", str(o.exit_code),
        )  # fmt: skip
    Console(width=100).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbeds.replay", description=__doc__.split("\n")[0])
    parser.add_argument("--capture", choices=["auto", "tap", "tcpdump"], default="auto",
                        help="tcpdump when usable (auto), or always the meshproxy tap, or always tcpdump")  # fmt: skip
    parser.add_argument("--keep", metavar="DIR", help="write the captures into DIR and keep them")
    args = parser.parse_args(argv)
    began = time.monotonic()
    if args.keep:
        directory = Path(args.keep)
        directory.mkdir(parents=True, exist_ok=True)
        outcomes = run(args.capture, directory)
    else:
        with tempfile.TemporaryDirectory(prefix="meshproxy-replay-") as temporary:
            outcomes = run(args.capture, Path(temporary))
    print()
    print_summary(outcomes)
    failed = [o.protocol for o in outcomes if o.exit_code != 0 or o.differences != 0]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} replays matched their capture in "
          f"{time.monotonic() - began:.1f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
