"""One port, every protocol: an ``auto`` listener sniffs each connection and hands it to the Mongo, DynamoDB
or gRPC session, each protocol to its own cluster, while pymongo, boto3 and grpcio use it at the same time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from support.moto import moto_server

from meshproxy.config import config_from_dict
from meshproxy.proxy import ProxyThread
from testbeds.grpc.service import SERVICE, EchoClient, EchoServer

from .support import client_for

pytestmark = pytest.mark.integration

ROUNDS = 20


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, int]]:
    with moto_server(empty=True) as address:
        yield address


def test_pymongo_boto3_and_grpcio_share_one_port_at_once(secantus: tuple[str, int], moto: tuple[str, int]) -> None:
    with EchoServer() as grpc_server:
        config = config_from_dict(
            {
                "admin": None,
                "listeners": [
                    {
                        "name": "edge",
                        "address": "127.0.0.1:0",
                        "protocol": "auto",
                        "cluster": "mongo",
                        "protocol_clusters": {"dynamo": "ddb", "grpc": "echo"},
                    }
                ],
                "clusters": [
                    {"name": "mongo", "hosts": [list(secantus)]},
                    {"name": "ddb", "hosts": [list(moto)]},
                    {"name": "echo", "hosts": [["127.0.0.1", grpc_server.port]]},
                ],
            }
        )
        with ProxyThread(config) as proxy:
            host, port = proxy.listener_address("edge")
            results: dict[str, Any] = {}
            errors: list[BaseException] = []

            def mongo() -> None:
                client = client_for((host, port))
                try:
                    collection = client["shop"]["one_port"]
                    for n in range(ROUNDS):
                        collection.insert_one({"n": n})
                    results["mongo"] = collection.count_documents({})
                finally:
                    client.close()

            def dynamo() -> None:
                client = boto3.client(
                    "dynamodb", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                    aws_access_key_id="x", aws_secret_access_key="x",
                )
                client.create_table(
                    TableName="one_port", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                    BillingMode="PAY_PER_REQUEST",
                )
                for n in range(ROUNDS):
                    client.put_item(TableName="one_port", Item={"pk": {"S": f"k{n}"}})
                results["dynamo"] = client.scan(TableName="one_port", Select="COUNT")["Count"]

            def grpc() -> None:
                with EchoClient((host, port)) as client:
                    results["grpc"] = [client.unary(b"%d" % n, timeout=10) for n in range(ROUNDS)]

            def guarded(work: Callable[[], None]) -> Callable[[], None]:
                def run() -> None:
                    try:
                        work()
                    except BaseException as error:  # reported below, with the protocol that failed
                        errors.append(error)

                return run

            threads = [threading.Thread(target=guarded(work)) for work in (mongo, dynamo, grpc)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert not errors, errors
            stats = proxy.stats.values()
    assert results["mongo"] == ROUNDS
    assert results["dynamo"] == ROUNDS
    assert results["grpc"] == [b"echo:%d" % n for n in range(ROUNDS)]
    assert stats["listener.edge.protocol.mongodb"] >= 1
    assert stats["listener.edge.protocol.http1"] >= 1
    assert stats["listener.edge.protocol.http2"] == 1
    assert stats["mongo.edge.cmd.insert.total"] == ROUNDS
    assert stats["dynamodb.edge.operation.PutItem.upstream_rq_total"] == ROUNDS
    assert stats[f"cluster.echo.grpc.{SERVICE}.Unary.success"] == ROUNDS
