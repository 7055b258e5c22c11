"""Server names (SNI) at work.

An ``auto`` listener without ``tls`` recognises a TLS ClientHello and passes the connection through, still
encrypted, to the cluster its server name (SNI) maps to in ``sni_clusters``: exact names, then
``*.suffix`` wildcards, then the listener's default. Three real SecantusDB servers serving TLS, each with a
certificate for its own name (trustme), and the standard library's TLS client sending a real ping that
pymongo's encoder wrote: the certificate that comes back says which server answered."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import trustme
from filters.wire import op_msg

from meshproxy.config import config_from_dict
from meshproxy.proxy import ProxyThread

pytestmark = pytest.mark.integration

NAMES = {"orders": "orders.db.test", "billing": "billing.db.test", "fallback": "fallback.db.test"}


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from secantus import SecantusDBServer

    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("sni")
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with ExitStack() as stack:
        addresses = {}
        for key, name in NAMES.items():
            cert = ca.issue_cert(name)
            cert.cert_chain_pems[0].write_to_path(str(directory / f"{key}.crt"))
            cert.private_key_pem.write_to_path(str(directory / f"{key}.key"))
            server = stack.enter_context(
                SecantusDBServer(
                    port=0, storage_path=str(directory / key),
                    tls_cert_file=str(directory / f"{key}.crt"), tls_key_file=str(directory / f"{key}.key"),
                )
            )  # fmt: skip
            addresses[key] = f"{server.address[0]}:{server.address[1]}"
        yield {"ca": str(ca_file), "addresses": addresses}


def ping_through(address: tuple[str, int], ca: str, server_name: str | None) -> tuple[list[str], bytes]:
    """TLS to the proxy with ``server_name`` as SNI; returns the names on the certificate that answered and
    the ping's reply."""
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False  # the test reads the names itself; connecting by IP sends no SNI
    with (
        socket.create_connection(address, timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        cert = tls.getpeercert()
        names = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
        tls.sendall(op_msg({"ping": 1}, "admin"))
        header = tls.recv(16)
        length = struct.unpack_from("<i", header)[0]
        reply = header
        while len(reply) < length:
            reply += tls.recv(length - len(reply))
    return names, reply


def test_tls_connections_are_passed_through_to_the_cluster_their_server_name_picks(tls_servers: dict[str, Any]) -> None:
    addresses = tls_servers["addresses"]
    config = config_from_dict(
        {
            "admin": None,
            "listeners": [
                {
                    "name": "edge", "address": "127.0.0.1:0", "protocol": "auto", "cluster": "fallback",
                    "sni_clusters": {"orders.db.test": "orders", "*.db.test": "billing"},
                }
            ],
            "clusters": [{"name": key, "hosts": [address]} for key, address in addresses.items()],
        }
    )  # fmt: skip
    with ProxyThread(config) as proxy:
        edge = proxy.listener_address("edge")
        for server_name, expected in (
            ("orders.db.test", "orders.db.test"),  # exact
            ("ORDERS.db.test", "orders.db.test"),  # names are case-insensitive
            ("billing.db.test", "billing.db.test"),  # the wildcard
            ("any.thing.db.test", "billing.db.test"),  # a wildcard covers several labels, as Envoy's
            ("other.example", "fallback.db.test"),  # unmatched: the listener's cluster
            (None, "fallback.db.test"),  # no SNI at all
        ):
            names, reply = ping_through(edge, tls_servers["ca"], server_name)
            assert names == [expected], server_name
            assert b"\x01ok\x00" in reply
        values = proxy.stats.values()
        assert values["listener.edge.protocol.tls"] == 6
        assert values["cluster.orders.upstream_cx_total"] == 2
        assert values["cluster.billing.upstream_cx_total"] == 2
        assert values["cluster.fallback.upstream_cx_total"] == 2


def test_an_unknown_cluster_in_sni_clusters_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    from meshproxy.config import ConfigError, load_config

    path = tmp_path / "mesh.yaml"
    path.write_text(
        "listeners: [{name: edge, address: '127.0.0.1:0', protocol: auto, cluster: c,"
        " sni_clusters: {a.test: nope}}]\nclusters: [{name: c, hosts: ['127.0.0.1:1']}]\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "mesh.yaml" in str(error.value)
    assert "listeners[0].sni_clusters.a.test: unknown cluster 'nope'" in str(error.value)


def test_a_terminating_listener_presents_the_certificate_for_the_name_asked(tmp_path: Path) -> None:
    """``tls.certificates`` on a terminating listener: the certificate is chosen by SNI (exact name, then the
    longest wildcard); other names, and clients that send none, get ``cert_file``."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    files: dict[str, tuple[str, str]] = {}
    certified = {"default": ["default.test"], "orders": ["orders.db.test"], "billing": ["*.billing.test"]}
    for key, names in certified.items():
        cert = ca.issue_cert(*names)
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{key}.crt"))
        cert.private_key_pem.write_to_path(str(tmp_path / f"{key}.key"))
        files[key] = (str(tmp_path / f"{key}.crt"), str(tmp_path / f"{key}.key"))
    from secantus import SecantusDBServer

    with SecantusDBServer(port=0, storage_path=str(tmp_path / "db")) as backend:
        config = config_from_dict(
            {
                "admin": None,
                "listeners": [
                    {
                        "name": "edge", "address": "127.0.0.1:0", "protocol": "mongo", "cluster": "db",
                        "tls": {
                            "cert_file": files["default"][0], "key_file": files["default"][1],
                            "certificates": [
                                {"server_names": ["orders.db.test"], "cert_file": files["orders"][0],
                                 "key_file": files["orders"][1]},
                                {"server_names": ["*.billing.test"], "cert_file": files["billing"][0],
                                 "key_file": files["billing"][1]},
                            ],
                        },
                    }
                ],
                "clusters": [{"name": "db", "hosts": [f"{backend.address[0]}:{backend.address[1]}"]}],
            }
        )  # fmt: skip
        with ProxyThread(config) as proxy:
            edge = proxy.listener_address("edge")
            for server_name, expected in (
                ("orders.db.test", "orders.db.test"),
                ("eu.billing.test", "*.billing.test"),
                ("elsewhere.test", "default.test"),
                (None, "default.test"),
            ):
                names, reply = ping_through(edge, str(ca_file), server_name)
                assert names == [expected], server_name
                assert b"\x01ok\x00" in reply  # terminated, decoded and answered by the server behind
            assert proxy.stats.values()["mongo.edge.cmd.ping.total"] == 4


def test_a_terminating_listener_routes_each_connection_by_the_name_asked(tmp_path: Path) -> None:
    """``sni_clusters`` on a listener with ``tls``: after the handshake, the connection's operations go to the
    cluster its server name maps to (here two SecantusDB servers behind one Mongo listener)."""
    from secantus import SecantusDBServer

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert = ca.issue_cert("*.db.test", "db.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "edge.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "edge.key"))
    with (
        SecantusDBServer(port=0, storage_path=str(tmp_path / "orders")) as orders,
        SecantusDBServer(port=0, storage_path=str(tmp_path / "other")) as other,
    ):
        config = config_from_dict(
            {
                "admin": None,
                "listeners": [
                    {
                        "name": "edge", "address": "127.0.0.1:0", "protocol": "mongo", "cluster": "other",
                        "tls": {"cert_file": str(tmp_path / "edge.crt"), "key_file": str(tmp_path / "edge.key")},
                        "sni_clusters": {"orders.db.test": "orders"},
                    }
                ],
                "clusters": [
                    {"name": "orders", "hosts": [f"{orders.address[0]}:{orders.address[1]}"]},
                    {"name": "other", "hosts": [f"{other.address[0]}:{other.address[1]}"]},
                ],
            }
        )  # fmt: skip
        with ProxyThread(config) as proxy:
            edge = proxy.listener_address("edge")
            for server_name in ("orders.db.test", "orders.db.test", "billing.db.test", None):
                _, reply = ping_through(edge, str(ca_file), server_name)
                assert b"\x01ok\x00" in reply
            values = proxy.stats.values()
            assert values["cluster.orders.upstream_rq_total"] == 2
            assert values["cluster.other.upstream_rq_total"] == 2


def test_grpc_calls_are_routed_by_the_name_the_channel_asked(tmp_path: Path) -> None:
    """The same on a gRPC listener: a grpcio channel whose TLS server name is ``orders.grpc.test`` reaches the
    orders server's pool, any other name the listener's cluster."""
    import grpc

    from testbeds.grpc.service import SERVICE, EchoServer

    ca = trustme.CA()
    cert = ca.issue_cert("*.grpc.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "edge.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "edge.key"))
    with EchoServer() as orders, EchoServer() as other:
        config = config_from_dict(
            {
                "admin": None,
                "listeners": [
                    {
                        "name": "edge", "address": "127.0.0.1:0", "protocol": "grpc", "cluster": "other",
                        "tls": {"cert_file": str(tmp_path / "edge.crt"), "key_file": str(tmp_path / "edge.key")},
                        "sni_clusters": {"orders.grpc.test": "orders"},
                    }
                ],
                "clusters": [
                    {"name": "orders", "hosts": [f"127.0.0.1:{orders.port}"]},
                    {"name": "other", "hosts": [f"127.0.0.1:{other.port}"]},
                ],
            }
        )  # fmt: skip
        with ProxyThread(config) as proxy:
            host, port = proxy.listener_address("edge")
            credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
            for name, calls in (("orders.grpc.test", 3), ("billing.grpc.test", 2)):
                options = [("grpc.ssl_target_name_override", name)]
                with grpc.secure_channel(f"{host}:{port}", credentials, options=options) as channel:
                    unary = channel.unary_unary(f"/{SERVICE}/Unary")
                    for _ in range(calls):
                        assert unary(b"hello", timeout=5) == b"echo:hello"
            values = proxy.stats.values()
            assert values["cluster.orders.upstream_rq_total"] == 3
            assert values["cluster.other.upstream_rq_total"] == 2
