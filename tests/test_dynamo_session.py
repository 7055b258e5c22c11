"""The DynamoDB session on the wire: HTTP/1.1 keep-alive and pipelining, 100-continue, bad input, upstream
failures, body rewrites and drain.

Requests are the bytes boto3 sent (``tests/fixtures/dynamo``, recorded against moto); the upstream is a real
moto server, except where a test needs a server that misbehaves on purpose (closing before it answers,
never answering, recording what it got), which is then a few lines of asyncio written here.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from support.moto import moto_server

from meshproxy.codecs.dynamo import crc32_of, parse_request
from meshproxy.codecs.http1 import Http1RequestDecoder, Http1ResponseDecoder, HttpResponse
from meshproxy.config import config_from_dict, dynamo_sidecar_config
from meshproxy.filters.dynamo.api import DynamoFilter, DynamoOperation
from meshproxy.proxy import Proxy
from meshproxy.transport.dynamo_session import CONNECT_ATTEMPTS, _hash_key

FIXTURES = Path(__file__).parent / "fixtures" / "dynamo"


def recorded_request(name: str) -> bytes:
    """The first request boto3 sent in a recorded step (one request per file)."""
    return (FIXTURES / f"{name}.req.http").read_bytes()


def with_header(request: bytes, header: bytes) -> bytes:
    head, _, body = request.partition(b"\r\n\r\n")
    return head + b"\r\n" + header + b"\r\n\r\n" + body


def without_header(request: bytes, name: bytes) -> bytes:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(name.lower() + b":")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def with_body(request: bytes, body: bytes) -> bytes:
    head, _, _ = without_header(request, b"content-length").partition(b"\r\n\r\n")
    return head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body


GET_ITEM = recorded_request("04_get_item")
PUT_ITEM = recorded_request("03_put_item")
MISSING_TABLE = recorded_request("15_resource_not_found")


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, int]]:
    """A moto server holding the recorded scenario's ``orders`` table with the item the GetItem asks for."""
    with moto_server(empty=True) as (host, port):
        client = boto3.client(
            "dynamodb", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
            aws_access_key_id="x", aws_secret_access_key="x",
        )
        for step in ("00_create_orders", "03_put_item"):
            request = recorded_request(step)
            operation = request.split(b"X-Amz-Target: DynamoDB_20120810.")[1].split(b"\r\n")[0].decode()
            body = json.loads(request.partition(b"\r\n\r\n")[2])
            getattr(client, _snake(operation))(**body)
        yield host, port


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _config(port: int, **listener: Any) -> Any:
    return dynamo_sidecar_config(
        listen=("127.0.0.1", 0), upstream=("127.0.0.1", port), admin=None, stat_prefix="ddb", **listener
    )


class Client:
    """One client connection, reading responses with the proxy's own decoder (interim ones included)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = Http1ResponseDecoder()
        self.ready: list[HttpResponse] = []

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> Client:
        return cls(*await asyncio.open_connection(*address))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self) -> HttpResponse:
        while not self.ready:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                self.ready.extend(self.decoder.end_of_stream())
                if not self.ready:
                    raise EOFError("the proxy closed the connection")
                break
            self.ready.extend(self.decoder.feed(data))
        return self.ready.pop(0)

    async def closed_by_peer(self) -> bool:
        return await asyncio.wait_for(self.reader.read(65536), 10) == b""

    def close(self) -> None:
        self.writer.close()


def stat(proxy: Proxy, name: str) -> int | float:
    return proxy.stats.values().get(name, 0)


# -- keep-alive, pipelining, 100-continue -----------------------------------------------------------------


async def test_the_client_keeps_its_connection_although_moto_closes_after_every_response(moto: tuple[str, int]) -> None:
    """moto answers ``Connection: close`` every time: the proxy re-dials for each request and takes the header
    off, so the client's one connection carries all of them."""
    async with Proxy(_config(moto[1])) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        for _ in range(3):
            client.send(GET_ITEM)
            response = await client.response()
            assert response.status == 200
            assert response.keep_alive
            assert response.header(b"connection") is None
            assert json.loads(response.body)["Item"]["pk"] == {"S": "c1"}
            assert response.header(b"x-amz-crc32") == str(crc32_of(response.body)).encode()
        client.close()
        assert stat(proxy, "listener.ddb.downstream_cx_total") == 1
        assert stat(proxy, "cluster.upstream.upstream_cx_total") == 3
        assert stat(proxy, "dynamodb.ddb.operation.GetItem.upstream_rq_total_200") == 3


async def test_pipelined_requests_are_answered_in_the_order_they_were_sent(moto: tuple[str, int]) -> None:
    async with Proxy(_config(moto[1])) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        client.send(PUT_ITEM + MISSING_TABLE + GET_ITEM)
        statuses = [(await client.response()).status for _ in range(3)]
        assert statuses == [200, 400, 200]
        client.close()
        assert stat(proxy, "dynamodb.ddb.operation.PutItem.upstream_rq_total") == 1
        assert stat(proxy, "dynamodb.ddb.operation.GetItem.upstream_rq_total_400") == 1
        assert stat(proxy, "dynamodb.ddb.operation.GetItem.upstream_rq_total_200") == 1


async def test_expect_100_continue_is_answered_by_the_proxy_once(moto: tuple[str, int]) -> None:
    """The proxy forwards whole requests only, so it tells the client to send the body; the server's own
    interim 100 is not passed on (the client has had one)."""
    async with Proxy(_config(moto[1])) as proxy:
        request = with_header(GET_ITEM, b"Expect: 100-continue")
        head, _, body = request.partition(b"\r\n\r\n")
        client = await Client.connect(proxy.listener_address("ddb"))
        client.send(head + b"\r\n\r\n")
        interim = await client.response()
        assert interim.status == 100
        client.send(body)
        final = await client.response()
        assert final.status == 200
        assert json.loads(final.body)["Item"]["pk"] == {"S": "c1"}
        client.send(GET_ITEM)
        assert (await client.response()).status == 200  # no stray interim response before it
        client.close()


async def test_a_client_asking_to_close_gets_its_response_then_the_close(moto: tuple[str, int]) -> None:
    async with Proxy(_config(moto[1])) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        client.send(with_header(GET_ITEM, b"Connection: close"))
        response = await client.response()
        assert response.status == 200
        assert response.header(b"connection") == b"close"
        assert await client.closed_by_peer()


# -- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "data", "status"),
    [
        ("not HTTP at all", b"\x00\x01garbage that is not a request line\r\n\r\n", 400),
        ("a head past the 64 KiB limit", b"POST / HTTP/1.1\r\nX-Pad: " + b"a" * 70_000, 431),
        ("a declared body past the limit", b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413),
        (
            "Content-Length and Transfer-Encoding together (smuggling)",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
    ],
)
async def test_unframeable_input_gets_a_clear_status_and_only_that_connection_is_closed(
    moto: tuple[str, int], case: str, data: bytes, status: int
) -> None:
    async with Proxy(_config(moto[1])) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        client.send(data)
        response = await client.response()
        assert response.status == status, case
        assert response.header(b"connection") == b"close"
        assert response.body.startswith(b"meshproxy: ")
        assert await client.closed_by_peer()
        assert stat(proxy, "dynamodb.ddb.decoding_error") == 1
        assert stat(proxy, "cluster.upstream.upstream_cx_total") == 0  # nothing reached the server
        other = await Client.connect(proxy.listener_address("ddb"))  # the process is unharmed
        other.send(GET_ITEM)
        assert (await other.response()).status == 200
        other.close()


async def test_requests_before_a_bad_one_in_the_same_read_are_answered_first(moto: tuple[str, int]) -> None:
    async with Proxy(_config(moto[1])) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        client.send(GET_ITEM + b"BROKEN\r\n\r\n")
        assert (await client.response()).status == 200
        client.send(b"more bytes after the bad request are not read")
        assert (await client.response()).status == 400
        assert await client.closed_by_peer()
        assert stat(proxy, "dynamodb.ddb.decoding_error") == 1


async def test_requests_that_are_not_dynamodb_requests_are_forwarded_and_counted(moto: tuple[str, int]) -> None:
    """Framed but meaningless to DynamoDB: forwarded by default (the server answers), counted by kind."""
    async with Proxy(_config(moto[1])) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        requests = [
            with_body(GET_ITEM, b"{not json"),
            without_header(GET_ITEM, b"x-amz-target"),
            GET_ITEM.replace(b"DynamoDB_20120810.GetItem", b"DynamoDB_20120810.NoSuchOperation"),
        ]
        for request in requests:
            client.send(request)
            assert (await client.response()).status >= 400  # moto's own answer
        client.close()
        assert stat(proxy, "dynamodb.ddb.invalid_req_body") == 1
        assert stat(proxy, "dynamodb.ddb.operation_missing") == 1
        assert stat(proxy, "dynamodb.ddb.operation_unknown") == 1
        assert stat(proxy, "cluster.upstream.upstream_rq_total") == 3


async def test_reject_policy_answers_dynamodbs_own_errors_without_asking_the_server(moto: tuple[str, int]) -> None:
    async with Proxy(_config(moto[1], invalid_requests="reject")) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        client.send(without_header(GET_ITEM, b"x-amz-target"))
        missing = await client.response()
        client.send(with_body(GET_ITEM, b"[1, 2]"))
        not_an_object = await client.response()
        client.close()
        assert (missing.status, json.loads(missing.body)["__type"].rpartition("#")[2]) == (
            400, "UnknownOperationException"
        )
        assert (not_an_object.status, json.loads(not_an_object.body)["__type"].rpartition("#")[2]) == (
            400, "SerializationException"
        )
        assert not_an_object.header(b"x-amz-crc32") == str(crc32_of(not_an_object.body)).encode()
        assert stat(proxy, "dynamodb.ddb.rejected") == 2
        assert stat(proxy, "cluster.upstream.upstream_cx_total") == 0


async def _recording_server(received: list[bytes]) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append(data)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_passthrough_policy_relays_unframeable_bytes_untouched() -> None:
    received: list[bytes] = []
    server, port = await _recording_server(received)
    async with server, Proxy(_config(port, on_decode_error="passthrough")) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        junk = b"\x16\x03\x01 not http at all\r\n\r\nmore"
        client.send(junk)
        for _ in range(100):
            if b"".join(received) == junk:
                break
            await asyncio.sleep(0.02)
        client.close()
        assert b"".join(received) == junk
        assert stat(proxy, "dynamodb.ddb.decoding_error") == 1


async def test_passthrough_passes_the_servers_answer_and_its_half_close_on() -> None:
    """Once relaying, the session is a byte relay: the server's bytes and its EOF reach the client, and the
    client can still send after that EOF (TCP half-close), which the server then receives."""
    received: list[bytes] = []

    async def answer_then_half_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))
        writer.write(b"not http either")
        writer.write_eof()
        received.append(await reader.read(65536))
        writer.close()

    server = await asyncio.start_server(answer_then_half_close, "127.0.0.1", 0)
    async with server, Proxy(_config(server.sockets[0].getsockname()[1], on_decode_error="passthrough")) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.listener_address("ddb"))
        writer.write(b"\x16\x03\x01 not http\r\n\r\n")
        answer = b""
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            answer += chunk
        assert answer == b"not http either"  # then EOF
        writer.write(b"after the server's EOF")
        writer.write_eof()
        async with asyncio.timeout(10):
            while len(received) < 2:  # noqa: ASYNC110 - the server's handler fills it
                await asyncio.sleep(0.01)
        writer.close()
        assert received == [b"\x16\x03\x01 not http\r\n\r\n", b"after the server's EOF"]
# -- upstream failures ------------------------------------------------------------------------------------


async def test_a_server_that_resets_before_answering_costs_one_503_not_the_connection(moto: tuple[str, int]) -> None:
    """The first upstream connection is dropped unanswered; the client gets a 503 for that request, and its
    next request on the same connection reaches a good server."""
    first = True

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal first
        await reader.read(65536)
        if first:
            first = False
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", moto[1])
        up_writer.write(GET_ITEM)
        writer.write(await up_reader.read())  # moto closes after its response
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(flaky, "127.0.0.1", 0)
    async with server, Proxy(_config(server.sockets[0].getsockname()[1])) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        client.send(GET_ITEM)
        assert (await client.response()).status == 503
        client.send(GET_ITEM)
        assert (await client.response()).status == 200
        client.close()
        assert stat(proxy, "dynamodb.ddb.upstream_reset") == 1
        assert stat(proxy, "dynamodb.ddb.operation.GetItem.upstream_rq_total_503") == 1


async def test_a_silent_server_gets_the_client_a_504_after_the_upstream_timeout() -> None:
    received: list[bytes] = []
    server, port = await _recording_server(received)
    async with server, Proxy(_config(port, upstream_timeout="200ms")) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        client.send(GET_ITEM)
        response = await client.response()
        assert response.status == 504
        assert response.keep_alive
        client.close()
        assert stat(proxy, "dynamodb.ddb.upstream_rq_timeout") == 1
        assert stat(proxy, "cluster.upstream.upstream_rq_active") == 0


async def test_an_unreachable_server_answers_503_and_keeps_the_client_connection() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    async with Proxy(_config(dead_port)) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        for _ in range(2):
            client.send(GET_ITEM)
            assert (await client.response()).status == 503
        client.close()
        assert stat(proxy, "cluster.upstream.upstream_cx_connect_fail") == 2
        assert stat(proxy, "dynamodb.ddb.upstream_connect_error") == 2


# -- per-request balancing ---------------------------------------------------------------------------------


class KeepAliveServer:
    """A DynamoDB stand-in that keeps its connections alive (moto closes after every response, so it cannot
    show keep-alive): answers every request ``200 {}`` and counts requests and connections."""

    def __init__(self, *, reset: bool = False) -> None:
        self.reset = reset
        """Close every connection as soon as a request arrives, unanswered."""
        self.requests = 0
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> KeepAliveServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        decoder = Http1RequestDecoder()
        while data := await reader.read(65536):
            for _ in decoder.feed(data):
                if self.reset:
                    writer.close()
                    return
                self.requests += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: 2\r\n\r\n{}"
                )
        writer.close()


def _cluster_config(hosts: list[str], lb_policy: str = "round_robin", **cluster: Any) -> Any:
    """One DynamoDB listener (``ddb``) over a cluster ``upstream`` of several hosts, no health checks."""
    return config_from_dict({
        "admin": None,
        "listeners": [{"name": "ddb", "address": "127.0.0.1:0", "protocol": "dynamo", "cluster": "upstream"}],
        "clusters": [{"name": "upstream", "hosts": hosts, "lb_policy": lb_policy, **cluster}],
    })


def _dead_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def test_each_request_is_balanced_over_one_kept_alive_connection_per_host() -> None:
    async with (
        KeepAliveServer() as one,
        KeepAliveServer() as two,
        Proxy(_cluster_config([one.address, two.address])) as proxy,
    ):
        client = await Client.connect(proxy.listener_address("ddb"))
        for _ in range(10):
            client.send(GET_ITEM)
            assert (await client.response()).status == 200
        client.close()
        assert (one.requests, two.requests) == (5, 5)
        assert (one.connections, two.connections) == (1, 1)
        assert stat(proxy, "cluster.upstream.upstream_cx_total") == 2
        assert stat(proxy, "cluster.upstream.upstream_rq_total") == 10
        assert stat(proxy, f"cluster.upstream.host.{one.address}.rq_total") == 5
        assert stat(proxy, f"cluster.upstream.host.{one.address}.rq_active") == 0
        assert stat(proxy, "cluster.upstream.upstream_rq_active") == 0


async def test_a_request_whose_host_cannot_be_reached_goes_to_another_host() -> None:
    """Nothing was sent to the unreachable host, so the request is not lost: the client sees only 200s."""
    async with KeepAliveServer() as good, Proxy(_cluster_config([_dead_address(), good.address])) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        for _ in range(4):
            client.send(PUT_ITEM)  # a write too: it never left the proxy
            assert (await client.response()).status == 200
        client.close()
        assert good.requests == 4
        assert stat(proxy, "cluster.upstream.upstream_cx_connect_fail") >= 1
        assert stat(proxy, "cluster.upstream.upstream_rq_retry") == stat(
            proxy, "cluster.upstream.upstream_cx_connect_fail"
        )
        assert stat(proxy, "dynamodb.ddb.upstream_connect_error") == 0


async def test_when_no_host_can_be_reached_the_request_gets_a_503_after_a_few_hosts() -> None:
    hosts = [_dead_address() for _ in range(5)]
    async with Proxy(_cluster_config(hosts)) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        client.send(GET_ITEM)
        assert (await client.response()).status == 503
        client.close()
        assert stat(proxy, "cluster.upstream.upstream_cx_connect_fail") == CONNECT_ATTEMPTS
        assert stat(proxy, "dynamodb.ddb.upstream_connect_error") == 1
        assert stat(proxy, "cluster.upstream.upstream_rq_active") == 0


async def test_a_read_cut_off_before_its_response_goes_to_another_host_a_write_does_not() -> None:
    """A host that closes as soon as a request arrives: a GetItem is sent again elsewhere (reading twice
    is harmless), a PutItem gets the 503 (the host may have written it before it went away)."""
    async with (
        KeepAliveServer(reset=True) as bad,
        KeepAliveServer() as good,
        Proxy(_cluster_config([bad.address, good.address])) as proxy,
    ):
        client = await Client.connect(proxy.listener_address("ddb"))
        puts = []
        for _ in range(2):  # round robin: one of the two goes to the bad host
            client.send(PUT_ITEM)
            puts.append((await client.response()).status)
        for _ in range(2):  # at least one of these meets the bad host
            client.send(GET_ITEM)
            assert (await client.response()).status == 200
        client.close()
        assert sorted(puts) == [200, 503]
        assert stat(proxy, "dynamodb.ddb.upstream_reset") == 1
        assert stat(proxy, "cluster.upstream.upstream_rq_retry") >= 1


async def test_max_connections_holds_with_a_connection_per_host() -> None:
    """At ``max_connections: 1`` a session switching hosts closes its idle connection to open the next."""
    async with KeepAliveServer() as one, KeepAliveServer() as two:
        config = _cluster_config([one.address, two.address], circuit_breakers={"max_connections": 1})
        async with Proxy(config) as proxy:
            client = await Client.connect(proxy.listener_address("ddb"))
            for _ in range(4):
                client.send(GET_ITEM)
                assert (await client.response()).status == 200
                assert stat(proxy, "cluster.upstream.upstream_cx_active") == 1
            client.close()
            assert stat(proxy, "cluster.upstream.upstream_cx_total") == 4
            assert stat(proxy, "cluster.upstream.upstream_cx_overflow") == 0


async def test_a_host_that_leaves_the_cluster_loses_its_idle_connection(tmp_path: Path) -> None:
    """Host discovery takes a host out: it is no longer picked, and the session closes its idle connection
    to it at the next request instead of holding it for the client connection's life."""
    async with KeepAliveServer() as one, KeepAliveServer() as two:
        hosts = tmp_path / "hosts.json"
        hosts.write_text(json.dumps([one.address, two.address]))
        config = config_from_dict({
            "admin": None,
            "listeners": [{"name": "ddb", "address": "127.0.0.1:0", "protocol": "dynamo", "cluster": "upstream"}],
            "clusters": [{"name": "upstream", "hosts_file": {"path": str(hosts), "refresh_interval": "20ms"}}],
        })
        async with Proxy(config) as proxy:
            client = await Client.connect(proxy.listener_address("ddb"))
            for _ in range(2):
                client.send(GET_ITEM)
                assert (await client.response()).status == 200
            assert stat(proxy, "cluster.upstream.upstream_cx_active") == 2
            scratch = tmp_path / "hosts.tmp"
            scratch.write_text(json.dumps([one.address]))
            scratch.replace(hosts)
            async with asyncio.timeout(10):
                while stat(proxy, "cluster.upstream.membership_total") != 1:  # noqa: ASYNC110 - polled discovery
                    await asyncio.sleep(0.01)
            for _ in range(3):
                client.send(GET_ITEM)
                assert (await client.response()).status == 200
            client.close()
            assert (one.requests, two.requests) == (4, 1)
            assert stat(proxy, "cluster.upstream.upstream_cx_active") == 1
            assert stat(proxy, f"cluster.upstream.host.{two.address}.cx_active") == 0


def test_the_hash_key_is_the_table_and_the_partition_key_value_of_listed_tables() -> None:
    def request(operation: str, body: dict[str, Any]) -> Any:
        return parse_request([(b"x-amz-target", f"DynamoDB_20120810.{operation}".encode())], json.dumps(body).encode())

    keys = {"orders": "customer"}
    item = {"customer": {"S": "c#42"}, "order": {"N": "7"}}
    key = {"customer": {"S": "c#42"}, "order": {"N": "7"}}
    by_item = _hash_key(request("PutItem", {"TableName": "orders", "Item": item}), keys)
    assert by_item == b"orders\x00S\x00c#42"
    for operation in ("GetItem", "UpdateItem", "DeleteItem"):
        assert _hash_key(request(operation, {"TableName": "orders", "Key": key}), keys) == by_item
    other = {"customer": {"S": "c#7"}, "order": {"N": "7"}}
    assert _hash_key(request("GetItem", {"TableName": "orders", "Key": other}), keys) != by_item
    assert _hash_key(request("Query", {"TableName": "orders"}), keys) == b"orders"
    assert _hash_key(request("GetItem", {"TableName": "users", "Key": key}), keys) == b"users"
    assert _hash_key(request("ListTables", {}), keys) is None


# -- filters that answer or rewrite -----------------------------------------------------------------------


async def test_an_injected_throttle_is_answered_without_the_server(moto: tuple[str, int]) -> None:
    fault = {"type": "fault", "abort": {"error_type": "ThrottlingException"}, "match": {"operations": ["GetItem"]}}
    async with Proxy(_config(moto[1], filters=[{"type": "stats"}, fault])) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        client.send(GET_ITEM)
        response = await client.response()
        client.close()
        assert response.status == 400
        assert json.loads(response.body)["__type"].endswith("#ThrottlingException")
        assert response.header(b"x-amz-crc32") == str(crc32_of(response.body)).encode()
        assert stat(proxy, "cluster.upstream.upstream_cx_total") == 0
        assert stat(proxy, "dynamodb.ddb.local_response") == 1
        assert stat(proxy, "dynamodb.ddb.error.orders.ThrottlingException") == 1


class _RenameItem(DynamoFilter):
    """Rewrites GetItem responses: the kind of filter whose body change must carry a fixed x-amz-crc32."""

    def on_response(self, op: DynamoOperation) -> None:
        response = op.response
        if op.operation == "GetItem" and response is not None and response.document is not None:
            document = dict(response.document)
            document["Item"] = {**document["Item"], "note": {"S": "rewritten by meshproxy"}}
            op.response = replace(response, body=json.dumps(document).encode(), document=document)


async def test_a_filter_that_changes_a_body_gets_x_amz_crc32_fixed_so_boto3_accepts_it(
    moto: tuple[str, int],
) -> None:
    async with Proxy(_config(moto[1])) as proxy:
        proxy.listeners["ddb"].dynamo_filters.append(_RenameItem())
        host, port = proxy.listener_address("ddb")
        client = boto3.client(
            "dynamodb", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
            aws_access_key_id="x", aws_secret_access_key="x", config=Config(retries={"total_max_attempts": 1}),
        )
        key = json.loads(GET_ITEM.partition(b"\r\n\r\n")[2])["Key"]
        answer = await asyncio.to_thread(client.get_item, TableName="orders", Key=key)
        assert answer["Item"]["note"] == {"S": "rewritten by meshproxy"}
        assert answer["ResponseMetadata"]["RetryAttempts"] == 0


# -- drain ------------------------------------------------------------------------------------------------


async def test_drain_lets_the_request_in_flight_finish_and_tells_the_client_to_go(moto: tuple[str, int]) -> None:
    delay = {"type": "fault", "delay": {"duration": "300ms"}}
    async with Proxy(_config(moto[1], filters=[{"type": "stats"}, delay])) as proxy:
        client = await Client.connect(proxy.listener_address("ddb"))
        client.send(GET_ITEM)
        async with asyncio.timeout(10):  # until the request is held by the delay
            while not any(session.busy for session in proxy.listeners["ddb"].sessions):  # noqa: ASYNC110 - no event to await: the proxy's state is polled
                await asyncio.sleep(0.01)
        drain = asyncio.create_task(proxy.drain(timeout=5))
        response = await client.response()
        await drain
        assert response.status == 200
        assert response.header(b"connection") == b"close"
        assert await client.closed_by_peer()
        assert stat(proxy, "dynamodb.ddb.cx_drain_close") == 1
