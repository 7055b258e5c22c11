"""The Mongo session forwards what it does not change byte for byte, and re-encodes what a filter changed.

Chain: raw client socket -> meshproxy (Mongo session) -> recording tap -> SecantusDB. The tap records
every byte each way, so the test compares what the client sent with what the server received, and what
the server sent with what the client received.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import bson
import pymongo
import pytest
from bson import CodecOptions
from pymongo import message as pymongo_message
from pymongo.read_preferences import ReadPreference
from secantus import SecantusDBServer

from meshproxy.codecs.mongo import MongoDecoder, OpMsg
from meshproxy.config import mongo_sidecar_config
from meshproxy.filters.mongo.api import MongoFilter, MongoOperation
from meshproxy.proxy import ProxyThread

pytestmark = pytest.mark.integration


class RecordingTap:
    """A TCP forwarder on 127.0.0.1 that keeps a copy of both directions of its one connection."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(self.upstream)
        threading.Thread(target=self._pump, args=(client, server, self.to_server), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, self.to_client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        while data := source.recv(65536):
            record += data
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


def _op_msg(command: dict[str, object], request_id: int) -> bytes:
    """The bytes pymongo's own encoder produces for ``command``, with a chosen requestID."""
    encoded = bytes(
        pymongo_message._op_msg(0, command, "t", ReadPreference.PRIMARY, CodecOptions())[1]
    )
    return encoded[:4] + struct.pack("<i", request_id) + encoded[8:]


def _read_replies(sock: socket.socket, count: int) -> bytes:
    decoder = MongoDecoder()
    received = bytearray()
    replies = 0
    while replies < count:
        data = sock.recv(65536)
        assert data, "the proxy closed the connection"
        received += data
        replies += len(decoder.feed(data))
    return bytes(received)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecantusDBServer]:
    with SecantusDBServer(port=0, storage_path=str(tmp_path_factory.mktemp("db"))) as db:
        yield db


def _through_proxy(
    server: SecantusDBServer, requests: list[bytes]
) -> tuple[bytes, bytes, RecordingTap, dict[str, int | float]]:
    tap = RecordingTap(server.address)
    config = mongo_sidecar_config(listen=("127.0.0.1", 0), upstream=tap.address, admin=None, stat_prefix="bytes")
    with ProxyThread(config) as proxy, socket.create_connection(proxy.listener_address("bytes")) as client:
        sent = b"".join(requests)
        client.sendall(sent)
        received = _read_replies(client, len(requests))
        stats = proxy.stats.values()
    return sent, received, tap, stats


def test_unchanged_requests_and_replies_cross_the_proxy_byte_for_byte(server: SecantusDBServer) -> None:
    requests = [
        _op_msg({"insert": "c", "documents": [{"_id": 1, "v": "x" * 100}], "$db": "t"}, 1),
        _op_msg({"find": "c", "filter": {"_id": 1}, "$db": "t"}, 2),
        _op_msg({"ping": 1, "$db": "admin"}, 3),
    ]
    sent, received, tap, stats = _through_proxy(server, requests)
    assert bytes(tap.to_server) == sent
    assert received == bytes(tap.to_client)
    replies = MongoDecoder().feed(received)
    assert [r.header.response_to for r in replies] == [1, 2, 3]
    host = f"cluster.upstream.host.{tap.address[0]}:{tap.address[1]}"
    assert stats["cluster.upstream.upstream_rq_total"] == 3
    assert stats["cluster.upstream.upstream_rq_active"] == 0
    assert stats[f"{host}.rq_total"] == 3
    assert stats[f"{host}.rq_active"] == 0


def test_a_hello_reply_changed_by_the_topology_filter_is_re_encoded_and_the_rest_untouched(
    server: SecantusDBServer,
) -> None:
    requests = [_op_msg({"hello": 1, "$db": "admin"}, 7), _op_msg({"ping": 1, "$db": "admin"}, 8)]
    sent, received, tap, _ = _through_proxy(server, requests)
    assert bytes(tap.to_server) == sent
    from_server = MongoDecoder().feed(bytes(tap.to_client))
    to_client = MongoDecoder().feed(received)
    assert isinstance(from_server[0], OpMsg)
    assert isinstance(to_client[0], OpMsg)
    server_hello = bson.decode(from_server[0].body)
    client_hello = bson.decode(to_client[0].body)
    assert server_hello["me"] == f"127.0.0.1:{server.address[1]}"
    assert client_hello["me"] != server_hello["me"]  # rewritten to the proxy's own address
    assert client_hello["hosts"] == [client_hello["me"]]
    assert to_client[0].header.response_to == 7
    assert to_client[1].raw == from_server[1].raw  # the ping reply is untouched



class _BrokenFilter(MongoFilter):
    """A filter with a bug: it raises on every reply."""

    def on_response(self, op: MongoOperation) -> None:
        raise RuntimeError("bug in a filter")


def test_a_filter_that_raises_costs_the_client_nothing_and_is_counted(server: SecantusDBServer) -> None:
    config = mongo_sidecar_config(listen=("127.0.0.1", 0), upstream=server.address, admin=None, stat_prefix="oops")
    with ProxyThread(config) as proxy:
        proxy.proxy.listeners["oops"].mongo_filters.append(_BrokenFilter())
        host, port = proxy.listener_address("oops")
        with pymongo.MongoClient(f"mongodb://{host}:{port}", serverSelectionTimeoutMS=3000) as client:
            client.t.broken.insert_one({"_id": "kept"})
            assert client.t.broken.find_one({"_id": "kept"}) == {"_id": "kept"}
        stats = proxy.stats.values()
    assert stats["mongo.oops.filter_error"] >= 2
    assert stats["mongo.oops.cmd.insert.total"] == 1
