"""Client-side balancing in service code: pick a host for pymongo, boto3 and grpc from a health-checked cluster.

Run: python docs/examples/client_side_balancing.py   (no arguments)

It starts three of each backend on 127.0.0.1 (SecantusDB servers, moto servers, grpcio servers from this
repository's gRPC testbed), builds one cluster per protocol with that protocol's health check, and sends
requests through a client made for the host each pick returns: a ``pymongo.MongoClient`` with
``directConnection=True``, a boto3 DynamoDB client with ``endpoint_url``, a grpc channel; one per host,
cached. Then it stops one backend of each kind and shows the picks moving away from it once health
checking marks it down. No proxy is involved: the balancing happens in this process.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from meshproxy.cluster import ClusterClient, ClusterClientThread, Host

REQUESTS = 30
Address = tuple[str, int]


def cluster_config(name: str, addresses: list[Address], check: dict[str, Any]) -> dict[str, Any]:
    """The same mapping a ``clusters[]`` entry of a meshproxy YAML file holds."""
    return {
        "name": name,
        "hosts": [f"{host}:{port}" for host, port in addresses],
        "lb_policy": "round_robin",
        # Checked every 200 ms here so the demo is quick; Envoy's default interval is 5 s.
        "health_check": {"interval": 0.2, "timeout": 0.5, "unhealthy_threshold": 2, **check},
        "outlier_detection": {},  # Envoy's defaults: five failures in a row eject a host
    }


def tally(picks: Counter[str]) -> str:
    return " ".join(f"{name}={count}" for name, count in sorted(picks.items()))


def demo(protocol: str, cluster: ClusterClient, send: Callable[[Host], object], stop: Callable[[int], None]) -> None:
    """Requests before and after one backend stops; each goes to the host the cluster picks."""

    def one_request() -> str:
        # ``request()`` picks a host, counts the request in flight (least_request reads that) and reports
        # its outcome to outlier detection: success, or what the driver's exception says about the host.
        with cluster.request() as rq:
            send(rq.host)
        return rq.host.name

    print(f"{protocol} before: {tally(Counter(one_request() for _ in range(REQUESTS)))}")

    stop(0)
    dead = cluster.hosts[0]
    print(f"{protocol} stopped: {dead.name}")
    failed, deadline = 0, time.monotonic() + 30
    while dead.healthy:  # traffic goes on while health checking notices
        if time.monotonic() > deadline:
            raise SystemExit(f"{protocol}: {dead.name} was never marked down")
        try:
            one_request()
        except Exception:
            failed += 1  # the requests that reached the stopped backend before it was marked down
        time.sleep(0.05)
    by = "outlier detection" if dead.ejected and dead.passes_health_checks else "health checking"
    print(f"{protocol} marked down: {dead.name} by {by} (requests failed meanwhile: {failed})")

    print(f"{protocol} after: {tally(Counter(one_request() for _ in range(REQUESTS)))}")


# -- MongoDB: a MongoClient per host --------------------------------------------------------------------------


def mongo(stack: ExitStack) -> None:
    import pymongo
    from secantus import SecantusDBServer

    servers = []
    for _ in range(3):
        storage = stack.enter_context(tempfile.TemporaryDirectory())
        servers.append(stack.enter_context(SecantusDBServer(port=0, storage_path=storage)))

    clients: dict[str, pymongo.MongoClient[dict[str, Any]]] = {}  # by host name

    def send(host: Host) -> None:
        client = clients.get(host.name)
        if client is None:
            # directConnection: talk to exactly this host, whatever replica set it says it belongs to.
            client = clients[host.name] = stack.enter_context(
                pymongo.MongoClient(*host.address, directConnection=True, serverSelectionTimeoutMS=500)
            )
        client.shop.orders.insert_one({"sku": "a", "qty": 1})

    config = cluster_config("mongo", [s.address for s in servers], {"type": "mongo"})
    with ClusterClientThread.from_config(config) as cluster:
        # leaving ``stack`` stops the servers again; SecantusDB's stop is safe to repeat
        demo("mongo", cluster, send, lambda i: servers[i].stop())


# -- DynamoDB: a boto3 client per endpoint_url ----------------------------------------------------------------


def dynamodb(stack: ExitStack) -> None:
    import logging

    import boto3
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    servers = []
    for _ in range(3):
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        stack.callback(server.stop)
        servers.append(server)
    addresses = [s.get_host_and_port() for s in servers]

    # Short timeouts and no SDK retries, so a stopped endpoint fails fast and the pick is what you see.
    sdk = Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}, region_name="us-east-1")
    credentials = {"aws_access_key_id": "demo", "aws_secret_access_key": "demo"}
    clients: dict[str, Any] = {}  # by host name

    def client_for(address: Address) -> Any:
        name = f"{address[0]}:{address[1]}"
        if name not in clients:
            clients[name] = boto3.client("dynamodb", endpoint_url=f"http://{name}", config=sdk, **credentials)
        return clients[name]

    # moto's servers in one process share their data, like endpoints of one DynamoDB region.
    client_for(addresses[0]).create_table(
        TableName="orders",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    def send(host: Host) -> None:
        client_for(host.address).put_item(TableName="orders", Item={"id": {"S": "a"}, "qty": {"N": "1"}})

    config = cluster_config("dynamodb", addresses, {"type": "dynamodb"})
    with ClusterClientThread.from_config(config) as cluster:
        demo("dynamodb", cluster, send, lambda i: servers[i].stop())


# -- gRPC: a channel per host ---------------------------------------------------------------------------------


@contextmanager
def grpc_servers() -> Iterator[list[Any]]:
    # The testbed's server lives at the repository root; in your service the channels go to your servers.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from testbeds.grpc.service import EchoServer

    with ExitStack() as stack:
        yield [stack.enter_context(EchoServer(workers=4)) for _ in range(3)]


def grpc_demo(stack: ExitStack) -> None:
    import grpc

    servers = stack.enter_context(grpc_servers())
    stubs: dict[str, Callable[..., bytes]] = {}  # by host name

    def send(host: Host) -> None:
        if host.name not in stubs:
            channel = stack.enter_context(grpc.insecure_channel(host.name))
            stubs[host.name] = channel.unary_unary("/meshproxy.test.Echo/Unary")
        assert stubs[host.name](b"hello", timeout=1) == b"echo:hello"

    # grpc.health.v1.Health/Check for the server as a whole ("" service), as grpc_health_probe asks
    config = cluster_config("grpc", [("127.0.0.1", s.port) for s in servers], {"type": "grpc"})
    with ClusterClientThread.from_config(config) as cluster:
        demo("grpc", cluster, send, lambda i: servers[i].server.stop(grace=None))


def main() -> None:
    if len(sys.argv) > 1:
        raise SystemExit(__doc__)
    for run in (mongo, dynamodb, grpc_demo):
        with ExitStack() as stack:
            run(stack)


if __name__ == "__main__":
    main()
