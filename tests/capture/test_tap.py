"""The tap, end to end with real parts: a real client, a meshproxy listener in front of a real server, the tap
switched on and off through the admin endpoint (HTTP POST), and the file it wrote read back by
``meshproxy.replay.decode.decode_file``, which must give exactly the operations the client made, from the
client's real port.

Redaction is checked against a second proxy in the chain recording the same bytes without redaction: the
redacted file holds none of the values the client sent, and decodes to the same operations with the same
sizes.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from support.commands import CommandNames as Commands
from support.moto import moto_server
from support.wait import wait_for

from meshproxy.capture import CaptureReport, read_packets
from meshproxy.capture.redact import HttpRedactor, MongoRedactor, redact_json
from meshproxy.codecs.mongo import encode_op_msg
from meshproxy.config import MeshConfig, dynamo_sidecar_config, grpc_sidecar_config, mongo_sidecar_config
from meshproxy.proxy import ProxyThread
from meshproxy.replay.decode import DecodedCapture, decode_file

pytestmark = pytest.mark.integration

HANDSHAKES = {"hello", "ismaster", "isMaster"}
"""Sent by pymongo when it connects and by its monitors; command listeners do not see them."""


def with_taps(config: MeshConfig, directory: Path) -> MeshConfig:
    assert config.admin is not None
    return config.model_copy(update={"admin": config.admin.model_copy(update={"tap_directory": str(directory)})})


def admin(proxy: ProxyThread, method: str, path: str) -> tuple[int, Any]:
    address = proxy.admin_address
    assert address is not None
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read().decode()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body
    finally:
        connection.close()


def start_tap(proxy: ProxyThread, listener: str, query: str) -> dict[str, Any]:
    status, body = admin(proxy, "POST", f"/tap/start?listener={listener}&{query}")
    assert status == 200, body
    assert body["state"] == "recording"
    return dict(body)


def stop_tap(proxy: ProxyThread, listener: str) -> dict[str, Any]:
    status, body = admin(proxy, "POST", f"/tap/stop?listener={listener}")
    assert status == 200, body
    assert body["state"] == "stopped"
    return dict(body)


def name(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def clients_of(proxy: ProxyThread, listener: str) -> set[str]:
    """The client addresses (``ip:port``) of the listener's open connections, as the proxy saw them."""
    return {session.info.client for session in list(proxy.proxy.listeners[listener].sessions)}


def assert_clean(decoded: DecodedCapture) -> None:
    assert decoded.report.damage == []
    assert decoded.lost_bytes == 0
    assert decoded.notes == []


# -- MongoDB ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secantus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    from secantus import SecantusDBServer

    with SecantusDBServer(port=0, storage_path=str(tmp_path_factory.mktemp("secantus"))) as server:
        yield (str(server.address[0]), int(server.address[1]))





def mongo_proxy(upstream: tuple[str, int], directory: Path, prefix: str = "tapm") -> ProxyThread:
    config = mongo_sidecar_config(
        listen=("127.0.0.1", 0), upstream=upstream, admin=("127.0.0.1", 0), stat_prefix=prefix
    )
    return ProxyThread(with_taps(config, directory))


def mongo_workload(address: tuple[str, int], secret: str = "s3cret") -> list[str]:
    """What pymongo did: its command names in order."""
    commands = Commands()
    with MongoClient(*address, directConnection=True, event_listeners=[commands]) as client:
        orders = client.shop[f"orders_{uuid.uuid4().hex[:8]}"]
        orders.insert_many([{"_id": i, "customer": f"{secret}-{i}", "amount": i * 7} for i in range(40)])
        assert len(list(orders.find({}, batch_size=6))) == 40
        orders.update_one({"_id": 3}, {"$set": {"customer": secret}})
        orders.delete_one({"_id": 4})
        assert orders.count_documents({"amount": {"$gt": 10}}) == 37
    return commands.names


def test_a_mongo_tap_started_from_the_admin_records_exactly_the_clients_commands(
    secantus: tuple[str, int], tmp_path: Path
) -> None:
    with mongo_proxy(secantus, tmp_path) as proxy:
        started = start_tap(proxy, "tapm", "path=mongo.pcapng")
        assert started["path"] == str((tmp_path / "mongo.pcapng").resolve())
        commands = Commands()
        address = proxy.listener_address("tapm")
        with MongoClient(*address, directConnection=True, event_listeners=[commands]) as client:
            orders = client.shop.tap_orders
            orders.insert_many([{"_id": i, "customer": f"c{i % 3}", "amount": i * 7} for i in range(40)])
            assert len(list(orders.find({}, batch_size=6))) == 40  # find + 6 getMores
            orders.update_one({"_id": 3}, {"$set": {"amount": 1}})
            orders.delete_one({"_id": 4})
            assert orders.count_documents({"amount": {"$gt": 10}}) == 36
            seen = clients_of(proxy, "tapm")
        stopped = stop_tap(proxy, "tapm")
        counters = proxy.stats.text(None, used_only=True)
    decoded = decode_file(tmp_path / "mongo.pcapng")
    assert_clean(decoded)
    operations = [op for op in decoded.operations if op.operation not in HANDSHAKES]
    assert [op.operation for op in operations] == commands.names
    assert commands.names.count("getMore") == 6
    assert all(op.status == "ok" for op in operations)
    assert {op.client for op in decoded.operations} <= seen  # the real client ports
    assert {op.client for op in operations} & seen
    assert {op.server for op in decoded.operations} == {name(address)}
    assert stopped["bytes_written"] == (tmp_path / "mongo.pcapng").stat().st_size
    assert stopped["connections"] >= 2
    assert stopped["dropped_bytes"] == 0
    assert "tap.tapm.started: 1" in counters
    assert "tap.tapm.stopped_admin: 1" in counters
    assert f"tap.tapm.bytes_written: {stopped['bytes_written']}" in counters


def test_connections_open_before_the_tap_starts_are_recorded_from_then_on(
    secantus: tuple[str, int], tmp_path: Path
) -> None:
    """No handshake is written for them (as tcpdump would see them); the decoder finds the next message."""
    with mongo_proxy(secantus, tmp_path) as proxy:
        commands = Commands()
        with MongoClient(*proxy.listener_address("tapm"), directConnection=True, event_listeners=[commands]) as client:
            orders = client.shop.early
            orders.insert_many([{"_id": i} for i in range(30)])
            before = len(commands.names)
            start_tap(proxy, "tapm", "path=midway.pcapng")
            assert len(list(orders.find({}, batch_size=10))) == 30
            assert orders.count_documents({}) == 30
            after = commands.names[before:]
            seen = clients_of(proxy, "tapm")
            stop_tap(proxy, "tapm")
    decoded = decode_file(tmp_path / "midway.pcapng")
    operations = [op for op in decoded.operations if op.operation not in HANDSHAKES]
    assert [op.operation for op in operations] == after
    assert after[0] == "find"
    assert after[-1] == "aggregate"
    assert after.count("getMore") >= 2
    assert {op.client for op in operations} <= seen
    assert all(op.status == "ok" for op in operations)


def test_a_tap_on_a_tls_listener_records_what_the_client_sent_decrypted(
    secantus: tuple[str, int], tmp_path: Path
) -> None:
    import trustme

    from meshproxy.config import config_from_dict

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    paths["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    config = config_from_dict(
        {
            "admin": {"address": "127.0.0.1:0", "tap_directory": str(tmp_path)},
            "listeners": [
                {
                    "name": "edge", "address": "127.0.0.1:0", "protocol": "mongo", "cluster": "up",
                    "tls": {"cert_file": str(paths["cert"]), "key_file": str(paths["key"])},
                }
            ],
            "clusters": [{"name": "up", "hosts": [list(secantus)]}],
        }
    )  # fmt: skip
    with ProxyThread(config) as proxy:
        start_tap(proxy, "edge", "path=tls.pcapng")
        commands = Commands()
        address = proxy.listener_address("edge")
        with MongoClient(
            *address, tls=True, tlsCAFile=str(paths["ca"]), directConnection=True, event_listeners=[commands]
        ) as client:
            client.shop.tls_tap.insert_one({"n": 1})
            assert client.shop.tls_tap.find_one({"n": 1}) is not None
            seen = clients_of(proxy, "edge")
        stop_tap(proxy, "edge")
    decoded = decode_file(tmp_path / "tls.pcapng")
    assert_clean(decoded)
    operations = [op for op in decoded.operations if op.operation not in HANDSHAKES]
    assert [op.operation for op in operations] == commands.names
    assert {op.client for op in operations} <= seen
    assert {op.server for op in decoded.operations} == {name(address)}


def test_a_tap_in_the_configuration_records_from_the_first_connection(
    secantus: tuple[str, int], tmp_path: Path
) -> None:
    from meshproxy.config import config_from_dict

    config = config_from_dict(
        {
            "admin": {"address": "127.0.0.1:0", "tap_directory": str(tmp_path / "taps")},
            "listeners": [
                {
                    "name": "boot", "address": "127.0.0.1:0", "protocol": "mongo", "cluster": "up",
                    "tap": {"path": str(tmp_path / "boot.pcapng"), "max_bytes": "10MiB", "duration": "5m"},
                },
                {
                    "name": "taken", "address": "127.0.0.1:0", "protocol": "mongo", "cluster": "up",
                    "tap": {"path": "boot.pcapng"},  # relative: in the tap directory, where it exists already
                },
            ],
            "clusters": [{"name": "up", "hosts": [list(secantus)]}],
        }
    )  # fmt: skip
    (tmp_path / "taps").mkdir()
    (tmp_path / "taps" / "boot.pcapng").write_bytes(b"mine")
    commands = Commands()
    with ProxyThread(config) as proxy:
        with MongoClient(*proxy.listener_address("boot"), directConnection=True, event_listeners=[commands]) as client:
            client.shop.boot.insert_one({"n": 1})
            with MongoClient(*proxy.listener_address("taken"), directConnection=True) as other:
                assert other.shop.boot.count_documents({}) >= 1  # the listener whose tap could not start serves
        view = admin(proxy, "GET", "/tap")[1]["listeners"]
        assert view["boot"]["state"] == "recording"
        assert view["boot"]["max_bytes"] == 10 * 1024 * 1024
        assert view["taken"] == {"state": "off"}
        stop_tap(proxy, "boot")
    assert (tmp_path / "taps" / "boot.pcapng").read_bytes() == b"mine"
    operations = decode_file(tmp_path / "boot.pcapng").operations
    assert [op.operation for op in operations if op.operation not in HANDSHAKES] == commands.names


def test_a_mongo_tap_with_redaction_keeps_operations_and_sizes_but_no_value(
    secantus: tuple[str, int], tmp_path: Path
) -> None:
    """pymongo -> proxy A (plain tap) -> proxy B (redacting tap) -> SecantusDB: both record the same bytes."""
    secret = "TOPSECRET" + uuid.uuid4().hex
    with (
        mongo_proxy(secantus, tmp_path, "inner") as inner,
        mongo_proxy(inner.listener_address("inner"), tmp_path, "outer") as outer,
    ):
        start_tap(inner, "inner", "path=redacted.pcapng&redact=1")
        start_tap(outer, "outer", "path=plain.pcapng")
        commands = mongo_workload(outer.listener_address("outer"), secret)
        stop_tap(outer, "outer")
        status = stop_tap(inner, "inner")
    assert status["redact"] is True
    plain, redacted = tmp_path / "plain.pcapng", tmp_path / "redacted.pcapng"
    assert secret.encode() in plain.read_bytes()
    assert secret.encode() not in redacted.read_bytes()
    assert secret[:12].encode() not in redacted.read_bytes()
    a, b = decode_file(plain), decode_file(redacted)
    assert_clean(b)

    def shape(decoded: DecodedCapture) -> list[tuple[Any, ...]]:
        # hello replies differ between the two proxies: each rewrites the topology to its own address
        return [
            (op.operation, op.namespace, op.status, op.request_bytes, op.response_bytes, op.documents)
            for op in decoded.operations
            if op.operation not in HANDSHAKES
        ]

    assert shape(b) == shape(a)
    assert [row[0] for row in shape(b)] == commands


# -- DynamoDB --------------------------------------------------------------------------------------------


def dynamo_workload(address: tuple[str, int], secret: str = "s3cret") -> list[str]:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "dynamodb", endpoint_url="http://" + name(address), region_name="us-east-1",
        aws_access_key_id="AKIDTAPTEST", aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1}),
    )  # fmt: skip
    table = f"tap_{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=table, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
    )  # fmt: skip
    done = ["CreateTable"]
    for n in range(5):
        client.put_item(TableName=table, Item={"pk": {"S": f"{secret}-{n}"}, "n": {"N": str(1000 + n)}})
        done.append("PutItem")
    item = client.get_item(TableName=table, Key={"pk": {"S": f"{secret}-3"}})["Item"]
    assert item["n"] == {"N": "1003"}
    puts = [{"PutRequest": {"Item": {"pk": {"S": f"{secret}-b{n}"}}}} for n in range(3)]
    client.batch_write_item(RequestItems={table: puts})
    assert client.scan(TableName=table)["Count"] == 8
    client.delete_table(TableName=table)
    client.close()
    return [*done, "GetItem", "BatchWriteItem", "Scan", "DeleteTable"]


def test_a_dynamodb_tap_records_exactly_boto3s_operations(tmp_path: Path) -> None:
    with moto_server(empty=True) as moto:
        config = dynamo_sidecar_config(
            listen=("127.0.0.1", 0), upstream=moto, admin=("127.0.0.1", 0), stat_prefix="tapd"
        )
        with ProxyThread(with_taps(config, tmp_path)) as proxy:
            start_tap(proxy, "tapd", "path=dynamo.pcapng")
            expected = dynamo_workload(proxy.listener_address("tapd"))
            stop_tap(proxy, "tapd")
            address = name(proxy.listener_address("tapd"))
    decoded = decode_file(tmp_path / "dynamo.pcapng")
    assert_clean(decoded)
    assert [op.operation for op in decoded.operations] == expected
    assert all(op.status == "200" for op in decoded.operations)
    assert {op.server for op in decoded.operations} == {address}
    assert all(op.client.startswith("127.0.0.1:") and op.client != address for op in decoded.operations)


def test_a_dynamodb_tap_with_redaction_keeps_operations_and_sizes_but_no_value(tmp_path: Path) -> None:
    secret = "TOPSECRET" + uuid.uuid4().hex
    with moto_server(empty=True) as moto:
        inner_config = dynamo_sidecar_config(
            listen=("127.0.0.1", 0), upstream=moto, admin=("127.0.0.1", 0), stat_prefix="inner"
        )
        with ProxyThread(with_taps(inner_config, tmp_path)) as inner:
            outer_config = dynamo_sidecar_config(
                listen=("127.0.0.1", 0), upstream=inner.listener_address("inner"), admin=("127.0.0.1", 0),
                stat_prefix="outer",
            )  # fmt: skip
            with ProxyThread(with_taps(outer_config, tmp_path)) as outer:
                start_tap(inner, "inner", "path=redacted.pcapng&redact=1")
                start_tap(outer, "outer", "path=plain.pcapng")
                expected = dynamo_workload(outer.listener_address("outer"), secret)
                stop_tap(outer, "outer")
                stop_tap(inner, "inner")
    plain, redacted = (tmp_path / "plain.pcapng").read_bytes(), (tmp_path / "redacted.pcapng").read_bytes()
    assert secret.encode() in plain
    assert b"AKIDTAPTEST" in plain
    assert secret[:12].encode() not in redacted
    assert b"AKIDTAPTEST" not in redacted
    assert b"1003" not in redacted
    a, b = decode_file(tmp_path / "plain.pcapng"), decode_file(tmp_path / "redacted.pcapng")
    assert_clean(b)

    def shape(decoded: DecodedCapture) -> list[tuple[Any, ...]]:
        return [
            (op.operation, op.namespace, op.status, op.request_bytes, op.response_bytes) for op in decoded.operations
        ]

    assert shape(b) == shape(a)
    assert [row[0] for row in shape(b)] == expected


# -- gRPC ----------------------------------------------------------------------------------------------


def grpc_workload(address: tuple[str, int], secret: bytes = b"s3cret") -> list[str]:
    from testbeds.grpc.service import SERVICE, EchoClient

    with EchoClient(address) as client:
        assert client.unary(secret + b"-1", timeout=5) == b"echo:" + secret + b"-1"
        assert client.unary(b"2", timeout=5) == b"echo:2"
        assert [m for m in client.count(b"5", timeout=5)] == [b"m%d" % n for n in range(5)]
        assert client.sum(iter([secret] * 4), timeout=5)
        assert list(client.ping(iter([b"a", secret]), timeout=5)) == [b"pong:a", b"pong:" + secret]
    return [f"/{SERVICE}/{method}" for method in ("Unary", "Unary", "Count", "Sum", "Ping")]


def test_a_grpc_tap_records_exactly_the_calls_and_redaction_zeroes_the_messages(tmp_path: Path) -> None:
    from testbeds.grpc.service import EchoServer

    secret = b"TOPSECRET" + uuid.uuid4().hex.encode()
    with EchoServer() as server:
        config = grpc_sidecar_config(
            listen=("127.0.0.1", 0), upstream=("127.0.0.1", server.port), admin=("127.0.0.1", 0), stat_prefix="tapg"
        )
        with ProxyThread(with_taps(config, tmp_path)) as proxy:
            address = proxy.listener_address("tapg")
            start_tap(proxy, "tapg", "path=grpc.pcapng")
            expected = grpc_workload(address, secret)
            stop_tap(proxy, "tapg")
            start_tap(proxy, "tapg", "path=grpc-redacted.pcapng&redact=true")
            assert grpc_workload(address, secret) == expected
            stop_tap(proxy, "tapg")
    plain, redacted = decode_file(tmp_path / "grpc.pcapng"), decode_file(tmp_path / "grpc-redacted.pcapng")
    for decoded in (plain, redacted):
        assert_clean(decoded)
        assert [op.operation for op in decoded.operations] == expected
        assert all(op.status == "OK" for op in decoded.operations)
        assert {op.server for op in decoded.operations} == {name(address)}
    assert secret in (tmp_path / "grpc.pcapng").read_bytes()
    assert secret not in (tmp_path / "grpc-redacted.pcapng").read_bytes()
    sizes = [(op.request_bytes, op.response_bytes) for op in plain.operations]
    assert [(op.request_bytes, op.response_bytes) for op in redacted.operations] == sizes


# -- bounds and the admin's rules --------------------------------------------------------------------------


def test_a_tap_stops_itself_at_max_bytes_and_its_file_still_decodes(secantus: tuple[str, int], tmp_path: Path) -> None:
    with mongo_proxy(secantus, tmp_path) as proxy:
        start_tap(proxy, "tapm", "path=small.pcapng&max_bytes=20000")
        with MongoClient(*proxy.listener_address("tapm"), directConnection=True) as client:
            orders = client.shop.small
            for n in range(200):
                orders.insert_one({"_id": f"{uuid.uuid4()}", "n": n, "pad": "p" * 200})
                if admin(proxy, "GET", "/tap")[1]["listeners"]["tapm"]["state"] != "recording":
                    break
            wait_for(lambda: admin(proxy, "GET", "/tap")[1]["listeners"]["tapm"]["state"] == "stopped", "the tap stops")
            status = admin(proxy, "GET", "/tap")[1]["listeners"]["tapm"]
            assert orders.count_documents({}) >= 1  # the proxy carries on without the tap
        counters = proxy.stats.text(None, used_only=True)
    assert status["reason"] == "max_bytes"
    size = (tmp_path / "small.pcapng").stat().st_size
    assert size <= 20000
    assert status["bytes_written"] == size
    assert "tap.tapm.stopped_max_bytes: 1" in counters
    report = CaptureReport()
    packets = list(read_packets(tmp_path / "small.pcapng", report))
    assert packets
    assert report.damage == []
    assert report.complete
    assert [op.operation for op in decode_file(tmp_path / "small.pcapng").operations if op.operation == "insert"]


def test_a_tap_stops_itself_after_its_duration(secantus: tuple[str, int], tmp_path: Path) -> None:
    with mongo_proxy(secantus, tmp_path) as proxy:
        start_tap(proxy, "tapm", "path=short.pcapng&duration=0.2")
        wait_for(lambda: admin(proxy, "GET", "/tap")[1]["listeners"]["tapm"]["state"] == "stopped", "the tap stops")
        status = admin(proxy, "GET", "/tap")[1]["listeners"]["tapm"]
    assert status["reason"] == "duration"
    assert list(read_packets(tmp_path / "short.pcapng")) == []  # a valid, empty capture


def test_the_admin_refuses_get_paths_outside_the_directory_and_overwrites(
    secantus: tuple[str, int], tmp_path: Path
) -> None:
    directory = tmp_path / "taps"
    (tmp_path / "outside").mkdir()
    with mongo_proxy(secantus, directory) as proxy:
        assert admin(proxy, "GET", "/tap/start?listener=tapm")[0] == 405
        assert admin(proxy, "GET", "/tap/stop?listener=tapm")[0] == 405
        for path in ("../outside/x.pcapng", str(tmp_path / "outside" / "x.pcapng"), "/etc/passwd", "..", ""):
            if path:
                status, body = admin(proxy, "POST", f"/tap/start?listener=tapm&path={path}")
                assert status == 400, (path, body)
        assert list((tmp_path / "outside").iterdir()) == []
        assert admin(proxy, "POST", "/tap/start?listener=nope")[0] == 400
        assert admin(proxy, "POST", "/tap/start?listener=tapm&max_bytes=lots")[0] == 400
        start_tap(proxy, "tapm", "path=one.pcapng")
        assert admin(proxy, "POST", "/tap/start?listener=tapm&path=two.pcapng")[0] == 409  # one at a time
        stop_tap(proxy, "tapm")
        assert admin(proxy, "POST", "/tap/start?listener=tapm&path=one.pcapng")[0] == 409  # never overwritten
        status, view = admin(proxy, "GET", "/tap")
    assert status == 200
    assert view["listeners"]["tapm"]["state"] == "stopped"
    assert view["directory"] == str(directory)


# -- redaction, unit by unit ----------------------------------------------------------------------------


def test_mongo_redaction_keeps_the_command_and_sizes_and_fails_closed() -> None:
    message = encode_op_msg(
        {"insert": "users", "documents": [{"name": "alice", "age": 42, "tags": ["a", "b"]}], "$db": "app"},
        request_id=7,
    ).raw
    redactor = MongoRedactor()
    out = redactor.feed(message[:10]) + redactor.feed(message[10:])
    assert len(out) == len(message)
    assert b"alice" not in out
    assert b"xxxxx" in out
    assert b"users" in out
    assert b"app" in out
    assert b"name" in out
    half = MongoRedactor()
    assert half.feed(message[:30]) == b""  # held until whole
    assert half.skip() == bytes(30)  # lost with the stream: zeros, so the byte count stays right
    assert half.feed(message[30:]) == bytes(len(message) - 30)
    broken = MongoRedactor()
    garbage = b"\x20\x00\x00\x00" + b"\xff" * 28
    assert broken.feed(garbage) == bytes(len(garbage))
    assert broken.feed(b"more") == bytes(4)


def test_dynamodb_redaction_blanks_values_and_signatures_keeping_lengths() -> None:
    body = b'{"TableName": "t", "Item": {"pk": {"S": "k\\"1"}, "n": {"N": "12"}, "s": {"SS": ["a", "bc"]}}}'
    out = redact_json(body)
    assert len(out) == len(body)
    assert json.loads(out)["Item"]["pk"]["S"] == "xxxx"
    assert json.loads(out)["Item"]["n"] == {"N": "00"}
    assert json.loads(out)["TableName"] == "t"
    head = (
        b"POST / HTTP/1.1\r\nAuthorization: AWS4-HMAC-SHA256 Credential=AKID/x, Signature=abc\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    redactor = HttpRedactor()
    redacted = redactor.feed(head + body[:5]) + redactor.feed(body[5:])
    assert len(redacted) == len(head) + len(body)
    assert b"AKID" not in redacted
    assert b"k\\\"1" not in redacted


# -- the writer and the memory bound, without a proxy -------------------------------------------------------


class _Listener:
    """What a ``Tap`` reads of its listener."""

    name = "unit"
    tap = None
    sessions: set[Any] = set()
    address = ("127.0.0.1", 27017)


def _reassembled(data: bytes) -> list[Any]:
    from meshproxy.capture import reassemble

    return list(reassemble(read_packets(data)))


def test_bytes_over_the_memory_bound_are_dropped_counted_and_left_as_a_hole_of_their_size() -> None:
    import io

    from meshproxy.capture import Closed, Data, Gap
    from meshproxy.capture.tap import ConnectionTap, Tap, TapStats
    from meshproxy.capture.writer import PcapngWriter
    from meshproxy.stats import StatsStore

    file = io.BytesIO()
    file.close = lambda: None  # type: ignore[method-assign]  # keep the bytes readable
    stats = StatsStore()
    tap = Tap(_Listener(), Path("unit.pcapng"), file, TapStats.create(stats, "unit"), max_buffered=1000)  # type: ignore[arg-type]
    conn = ConnectionTap(tap, ("127.0.0.1", 50123), ("127.0.0.1", 27017), "tcp")
    writer = PcapngWriter()
    tap._write(writer.header())
    tap.enqueue(0, conn, False)  # open, with a handshake
    conn.client(b"a" * 500)
    conn.client(b"b" * 600)  # 500 + 600 waiting > 1000: dropped
    conn.server(b"c" * 100)
    assert tap.dropped_bytes == 600
    assert tap._drain(writer) == ""
    conn.client(b"d" * 300)  # the writer caught up: recorded again
    conn.closed(local=False, abort=False)
    assert tap._drain(writer) == ""
    events = _reassembled(file.getvalue())
    c2s = [(type(e).__name__, e.offset, len(e.data) if isinstance(e, Data) else e.length)
           for e in events if isinstance(e, Data | Gap) and e.direction.value == "c2s"]  # fmt: skip
    assert c2s == [("Data", 0, 500), ("Gap", 500, 600), ("Data", 1100, 300)]
    assert [e.data for e in events if isinstance(e, Data) and e.direction.value == "s2c"] == [b"c" * 100]
    assert sum(1 for e in events if isinstance(e, Closed)) == 2
    assert "tap.unit.dropped_bytes: 600" in stats.text(None, used_only=True)


def test_the_writer_frames_ipv6_and_ipv4_mapped_peers_and_large_writes_as_whole_segments() -> None:
    from meshproxy.capture import Closed, Data, Opened
    from meshproxy.capture.writer import MAX_SEGMENT, PcapngWriter, TcpConversation

    writer = PcapngWriter()
    out = writer.header()
    six = TcpConversation(("::1", 40000), ("::1", 50051), client_seq=0xFFFFFFF0)  # wraps around 2**32
    mapped = TcpConversation(("::ffff:127.0.0.1", 40001), ("127.0.0.1", 27017))
    big = bytes(range(256)) * 700  # 179,200 bytes: three segments
    frames = six.open(1) + six.client_data(2, big) + six.server_data(3, b"ok") + six.close(4, by_server=True)
    frames += mapped.open(5) + mapped.client_data(6, b"hi") + mapped.close(7, by_server=False, reset=True)
    out += b"".join(writer.packet(ts, frame) for ts, frame in frames)
    assert len(six.client_data(0, b"x" * (MAX_SEGMENT + 1))) == 2
    events = _reassembled(out)
    opened = [e.conn for e in events if isinstance(e, Opened)]
    assert [(c.client, c.server, c.roles) for c in opened] == [
        (("::1", 40000), ("::1", 50051), "syn"), (("127.0.0.1", 40001), ("127.0.0.1", 27017), "syn"),
    ]  # fmt: skip
    data = [e for e in events if isinstance(e, Data)]
    assert b"".join(e.data for e in data if e.conn.id == opened[0].id and e.direction.value == "c2s") == big
    assert [e.ts_ns for e in data if e.conn.id == opened[1].id] == [6]
    assert {(e.conn.id, e.how) for e in events if isinstance(e, Closed)} >= {(opened[1].id, "rst")}


def test_with_redaction_a_connection_caught_mid_way_and_a_headless_http_stream_are_written_as_zeros() -> None:
    import io

    from meshproxy.capture import Data
    from meshproxy.capture.tap import ConnectionTap, Tap, TapStats
    from meshproxy.capture.writer import PcapngWriter
    from meshproxy.stats import StatsStore

    file = io.BytesIO()
    tap = Tap(_Listener(), Path("unit.pcapng"), file, TapStats.create(StatsStore(), "unit"), redact=True)  # type: ignore[arg-type]
    midway = ConnectionTap(tap, ("127.0.0.1", 50124), ("127.0.0.1", 27017), "mongo")
    fresh = ConnectionTap(tap, ("127.0.0.1", 50125), ("127.0.0.1", 27017), "mongo")
    writer = PcapngWriter()
    tap._write(writer.header())
    tap.enqueue(0, midway, True)
    tap.enqueue(0, fresh, False)
    message = encode_op_msg({"insert": "users", "documents": [{"name": "alice"}], "$db": "app"}, request_id=1).raw
    midway.client(message)
    fresh.client(message)
    tap._drain(writer)
    data = {e.conn.client[1]: e.data for e in _reassembled(file.getvalue()) if isinstance(e, Data)}
    assert data[50124] == bytes(len(message))
    assert len(data[50125]) == len(message)
    assert b"alice" not in data[50125]
    assert b"users" in data[50125]
    body_first = HttpRedactor()
    fragment = b'"S": "secret"}}}\r\n\r\nPOST / HTTP/1.1\r\n'
    assert body_first.feed(fragment) == bytes(len(fragment))
