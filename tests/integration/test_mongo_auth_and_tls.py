"""MongoDB authentication and TLS through the proxy, with real SecantusDB servers and real pymongo.

- SCRAM-SHA-256 and SCRAM-SHA-1 pass through untouched: the proxy never holds a password. With several
  hosts and per-operation balancing, a connection that authenticates keeps its home host for everything
  (authentication belongs to one server connection), so authenticated clients are balanced by connection.
- TLS origination: plaintext pymongo -> meshproxy -> SecantusDB serving TLS itself, with the proxy
  verifying the server's certificate against a CA and its name: CRUD, cursors and exact stats.
- TLS both ways: pymongo ``tls=true`` -> meshproxy (termination) -> SecantusDB over TLS (origination).

Test certificates come from trustme; no key is committed.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import trustme
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from meshproxy.config import config_from_dict
from meshproxy.proxy import ProxyThread

pytestmark = pytest.mark.integration

USER, PASSWORD = "app", "s3cret-pw"


def start_secantus(storage: Path, **options: Any) -> Any:
    from secantus import SecantusDBServer

    server = SecantusDBServer(port=0, storage_path=str(storage), **options)
    server.start()
    return server


@pytest.fixture(scope="module")
def auth_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, int]]]:
    """Three servers requiring authentication, each with user ``app`` (both SCRAM mechanisms) and the same
    ``shop.items``: users are created on a first start without authentication, then each server is started
    again on the same storage with ``require_auth``."""
    with ExitStack() as stack:
        addresses = []
        for index in range(3):
            storage = tmp_path_factory.mktemp(f"auth{index}")
            setup = start_secantus(storage)
            with MongoClient(*setup.address, directConnection=True) as client:
                client.shop.command(
                    "createUser", USER, pwd=PASSWORD, roles=["readWrite"], mechanisms=["SCRAM-SHA-256", "SCRAM-SHA-1"]
                )
                client.shop.items.insert_many([{"_id": i} for i in range(100)])
            setup.stop()
            server = start_secantus(storage, require_auth=True)
            stack.callback(server.stop)
            addresses.append((str(server.address[0]), int(server.address[1])))
        yield addresses


def proxy_for(hosts: list[tuple[str, int]], cluster: dict[str, Any] | None = None, **listener: Any) -> ProxyThread:
    return ProxyThread(
        config_from_dict(
            {
                "admin": None,
                "listeners": [
                    {"name": "db", "address": "127.0.0.1:0", "protocol": "mongo", "cluster": "up", **listener}
                ],
                "clusters": [{"name": "up", "hosts": [f"{h}:{p}" for h, p in hosts], **(cluster or {})}],
            }
        )
    )


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_passes_through_and_an_authenticated_connection_keeps_its_host(
    auth_backends: list[tuple[str, int]], mechanism: str
) -> None:
    with proxy_for(auth_backends) as proxy:
        host, port = proxy.listener_address("db")
        uri = f"mongodb://{USER}:{PASSWORD}@{host}:{port}/shop?authMechanism={mechanism}"
        with MongoClient(uri, serverSelectionTimeoutMS=5000, maxPoolSize=3) as client:
            errors: list[BaseException] = []

            def work(worker: int) -> None:
                try:
                    items = client.shop.items
                    assert len(list(items.find({}, batch_size=7))) == 100  # 14 getMores on one host
                    items.update_one({"_id": worker}, {"$set": {"seen": True}})
                except BaseException as error:  # reported below, in the test's thread
                    errors.append(error)

            threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
        values = proxy.stats.values()
        # Every operation of an authenticated connection went to its home host: none was balanced on its own.
        assert values.get("mongo.db.route_balanced", 0) == 0
        assert values["mongo.db.cmd.saslContinue.total"] >= 1
        assert values["mongo.db.cmd.getMore.total"] >= 3 * 14
    with proxy_for(auth_backends) as proxy, MongoClient(
        f"mongodb://{proxy.listener_address('db')[0]}:{proxy.listener_address('db')[1]}/",
        serverSelectionTimeoutMS=5000,
    ) as anonymous:
        with pytest.raises(OperationFailure) as refused:
            anonymous.shop.items.find_one()
        assert refused.value.code == 13  # Unauthorized: the proxy grants nothing of its own


def test_a_wrong_password_is_refused_by_the_server_not_the_proxy(auth_backends: list[tuple[str, int]]) -> None:
    with proxy_for(auth_backends) as proxy:
        host, port = proxy.listener_address("db")
        with MongoClient(f"mongodb://{USER}:wrong@{host}:{port}/shop", serverSelectionTimeoutMS=5000) as client:
            with pytest.raises(OperationFailure) as refused:
                client.shop.items.find_one()
            assert refused.value.code == 18  # AuthenticationFailed, from SecantusDB
        assert proxy.stats.values()["mongo.db.decoding_error"] == 0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("mongo-pki")
    server = ca.issue_cert("127.0.0.1", "localhost", "db.internal")
    files = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(files["cert"]), append=True)
    return {name: str(path) for name, path in files.items()}


@pytest.fixture(scope="module")
def tls_secantus(tls_files: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    server = start_secantus(
        tmp_path_factory.mktemp("tls-secantus"), tls_cert_file=tls_files["cert"], tls_key_file=tls_files["key"]
    )
    try:
        yield (str(server.address[0]), int(server.address[1]))
    finally:
        server.stop()


def test_plaintext_client_to_a_tls_server_through_the_proxy(
    tls_secantus: tuple[str, int], tls_files: dict[str, str]
) -> None:
    """The proxy originates TLS, verifying the server's certificate by CA and by the name ``db.internal``
    (``sni``): CRUD and a cursor over many getMores work and the stats count exactly what pymongo did."""
    with proxy_for([tls_secantus], cluster={"tls": {"ca_file": tls_files["ca"], "sni": "db.internal"}}) as proxy:
        host, port = proxy.listener_address("db")
        with MongoClient(f"mongodb://{host}:{port}/", serverSelectionTimeoutMS=5000) as client:
            orders = client.shop.tls_orders
            orders.insert_many([{"_id": i} for i in range(50)])
            assert [d["_id"] for d in orders.find({}, batch_size=4).sort("_id", 1)] == list(range(50))
            orders.delete_many({"_id": {"$gte": 25}})
            assert orders.count_documents({}) == 25
        values = proxy.stats.values()
        assert values["mongo.db.cmd.insert.total"] == 1
        assert values["mongo.db.cmd.find.total"] == 1
        assert values["mongo.db.cmd.getMore.total"] == 12  # 50 documents, 4 a batch: 13 batches
        assert values["mongo.db.cmd.delete.total"] == 1
        assert values["cluster.up.upstream_cx_connect_fail"] == 0


def test_a_server_certificate_for_another_name_is_refused(
    tls_secantus: tuple[str, int], tls_files: dict[str, str]
) -> None:
    with proxy_for([tls_secantus], cluster={"tls": {"ca_file": tls_files["ca"], "sni": "other.internal"}}) as proxy:
        host, port = proxy.listener_address("db")
        with (
            MongoClient(f"mongodb://{host}:{port}/", serverSelectionTimeoutMS=1500) as client,
            pytest.raises(Exception),  # noqa: B017,PT011 - pymongo sees only a closed connection
        ):
            client.shop.tls_orders.find_one()
        assert proxy.stats.values()["cluster.up.upstream_cx_connect_fail"] >= 1


def test_tls_on_both_sides(tls_secantus: tuple[str, int], tls_files: dict[str, str]) -> None:
    with proxy_for(
        [tls_secantus],
        cluster={"tls": {"ca_file": tls_files["ca"]}},
        tls={"cert_file": tls_files["cert"], "key_file": tls_files["key"]},
    ) as proxy:
        host, port = proxy.listener_address("db")
        with MongoClient(
            f"mongodb://{host}:{port}/", tls=True, tlsCAFile=tls_files["ca"], serverSelectionTimeoutMS=5000
        ) as client:
            client.shop.both.insert_one({"_id": 1})
            assert client.shop.both.find_one({"_id": 1}) == {"_id": 1}


def test_x509_authentication_passes_through_a_tls_passthrough_listener(tmp_path: Path) -> None:
    """MONGODB-X509 proves the client by the certificate it shows in the TLS handshake, so it works through
    the proxy only when the proxy does not terminate TLS: a ``tcp`` listener relays the TLS bytes, and
    SecantusDB authenticates the client's own certificate. (A terminating Mongo listener shows the server its
    own client certificate, if any: docs/tls.md.)"""
    from cryptography import x509

    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("app-client", common_name="app-client")
    files = {name: str(tmp_path / name) for name in ("ca.pem", "server.crt", "server.key", "client.pem")}
    ca.cert_pem.write_to_path(files["ca.pem"])
    server_cert.cert_chain_pems[0].write_to_path(files["server.crt"])
    server_cert.private_key_pem.write_to_path(files["server.key"])
    client_cert.private_key_and_cert_chain_pem.write_to_path(files["client.pem"])
    subject = x509.load_pem_x509_certificate(client_cert.cert_chain_pems[0].bytes()).subject.rfc4514_string()
    server = start_secantus(
        tmp_path / "db",
        tls_cert_file=files["server.crt"],
        tls_key_file=files["server.key"],
        tls_ca_file=files["ca.pem"],
    )
    tls = {"tls": True, "tlsCAFile": files["ca.pem"], "tlsCertificateKeyFile": files["client.pem"]}
    try:
        with MongoClient(*server.address, directConnection=True, **tls) as admin:
            # SecantusDB names the user as it renders the subject, escaping every '#'.
            admin["$external"].command(
                "createUser", subject.replace("#", "\\#"), roles=[{"role": "readWrite", "db": "shop"}],
                mechanisms=["MONGODB-X509"],
            )  # fmt: skip
        address = (str(server.address[0]), int(server.address[1]))
        with proxy_for([address], protocol="tcp") as proxy:
            host, port = proxy.listener_address("db")
            with MongoClient(
                host, port, directConnection=True, authMechanism="MONGODB-X509", serverSelectionTimeoutMS=5000, **tls
            ) as client:
                client.shop.certified.insert_one({"_id": 1})
                assert client.shop.certified.find_one() == {"_id": 1}
                assert client.shop.command("connectionStatus")["authInfo"]["authenticatedUsers"][0]["db"] == "$external"
            assert proxy.stats.values()["listener.db.downstream_cx_total"] >= 1
    finally:
        server.stop()


def test_upstream_tls_sessions_are_resumed_by_the_next_connection(
    tls_secantus: tuple[str, int], tls_files: dict[str, str]
) -> None:
    """Each client connection makes its own upstream connection; from the second on, the proxy offers the
    server the previous session and the handshake is abbreviated (``cluster.<name>.ssl.session_reused``)."""
    from filters.wire import op_msg

    with proxy_for([tls_secantus], cluster={"tls": {"ca_file": tls_files["ca"], "sni": "db.internal"}}) as proxy:
        address = proxy.listener_address("db")
        for _ in range(3):
            with socket.create_connection(address, timeout=5) as client:
                client.sendall(op_msg({"ping": 1}, "admin"))
                assert b"\x01ok\x00" in client.recv(65536)
        values = proxy.stats.values()
        assert values["cluster.up.ssl.handshake"] == 3
        assert values["cluster.up.ssl.session_reused"] == 2
