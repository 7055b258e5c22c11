"""TLS termination on listeners and origination towards clusters, with real clients and servers and test
certificates from trustme: grpcio with ALPN h2 both ways, boto3 over HTTPS, pymongo with ``tls=true``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
import trustme
from botocore.config import Config
from pymongo import MongoClient
from support.moto import moto_server

from meshproxy.cli import main
from meshproxy.config import config_from_dict
from meshproxy.proxy import ProxyThread
from testbeds.grpc.service import OPTIONS, SERVICE, EchoClient, EchoServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Files: the CA, and a server certificate for 127.0.0.1 / localhost with its key."""
    directory = tmp_path_factory.mktemp("pki")
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    with paths["cert"].open("wb") as out:
        for blob in server.cert_chain_pems:
            out.write(blob.bytes())
    return {name: str(path) for name, path in paths.items()}


def config(listener: dict[str, Any], cluster: dict[str, Any]) -> Any:
    return config_from_dict(
        {
            "admin": None,
            "listeners": [{"name": "edge", "address": "127.0.0.1:0", "cluster": "up", **listener}],
            "clusters": [{"name": "up", **cluster}],
        }
    )


def test_grpc_over_tls_to_the_proxy_with_alpn_h2(pki: dict[str, str]) -> None:
    with EchoServer() as server:
        mesh = config(
            {"protocol": "grpc", "tls": {"cert_file": pki["cert"], "key_file": pki["key"]}},
            {"hosts": [["127.0.0.1", server.port]]},
        )
        with ProxyThread(mesh) as proxy:
            _, port = proxy.listener_address("edge")
            credentials = grpc.ssl_channel_credentials(root_certificates=Path(pki["ca"]).read_bytes())
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=OPTIONS) as channel:
                unary = channel.unary_unary(f"/{SERVICE}/Unary", lambda b: b, lambda b: b)
                assert unary(b"over tls", timeout=10) == b"echo:over tls"
            assert proxy.stats.values()[f"cluster.up.grpc.{SERVICE}.Unary.success"] == 1


def test_grpc_from_the_proxy_to_a_tls_server_verified_by_ca_and_name(pki: dict[str, str]) -> None:
    server = EchoServer.__new__(EchoServer)  # an EchoServer listening with TLS instead of plaintext
    EchoServer.__init__(server)
    credentials = grpc.ssl_server_credentials([(Path(pki["key"]).read_bytes(), Path(pki["cert"]).read_bytes())])
    tls_port = server.server.add_secure_port("127.0.0.1:0", credentials)
    with server:
        mesh = config({"protocol": "grpc"}, {"hosts": [["127.0.0.1", tls_port]], "tls": {"ca_file": pki["ca"]}})
        with ProxyThread(mesh) as proxy, EchoClient(proxy.listener_address("edge")) as client:
            assert client.unary(b"to tls", timeout=10) == b"echo:to tls"


def test_a_server_certificate_that_does_not_verify_fails_the_call_unavailable(pki: dict[str, str]) -> None:
    other = trustme.CA()  # the proxy trusts a CA that did not sign the server's certificate
    wrong_ca = Path(pki["ca"]).with_name("other-ca.pem")
    other.cert_pem.write_to_path(str(wrong_ca))
    server = EchoServer.__new__(EchoServer)
    EchoServer.__init__(server)
    credentials = grpc.ssl_server_credentials([(Path(pki["key"]).read_bytes(), Path(pki["cert"]).read_bytes())])
    tls_port = server.server.add_secure_port("127.0.0.1:0", credentials)
    with server:
        mesh = config({"protocol": "grpc"}, {"hosts": [["127.0.0.1", tls_port]], "tls": {"ca_file": str(wrong_ca)}})
        with ProxyThread(mesh) as proxy, EchoClient(proxy.listener_address("edge")) as client:
            with pytest.raises(grpc.RpcError) as failure:
                client.unary(b"x", timeout=10)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            assert proxy.stats.values()["cluster.up.upstream_cx_connect_fail"] >= 1


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, int]]:
    with moto_server(empty=True) as address:
        yield address


def test_boto3_over_https_to_the_dynamo_listener(pki: dict[str, str], moto: tuple[str, int]) -> None:
    mesh = config(
        {"protocol": "dynamo", "tls": {"cert_file": pki["cert"], "key_file": pki["key"]}},
        {"hosts": [list(moto)]},
    )
    with ProxyThread(mesh) as proxy:
        _, port = proxy.listener_address("edge")
        client = boto3.client(
            "dynamodb", endpoint_url=f"https://127.0.0.1:{port}", region_name="us-east-1", verify=pki["ca"],
            aws_access_key_id="x", aws_secret_access_key="x", config=Config(retries={"total_max_attempts": 1}),
        )
        assert client.list_tables()["TableNames"] == []
        assert proxy.stats.values()["dynamodb.edge.operation.ListTables.upstream_rq_total_200"] == 1


def test_pymongo_with_tls_true_to_the_mongo_listener(pki: dict[str, str], secantus: tuple[str, int]) -> None:
    mesh = config(
        {"protocol": "mongo", "tls": {"cert_file": pki["cert"], "key_file": pki["key"]}},
        {"hosts": [list(secantus)]},
    )
    with ProxyThread(mesh) as proxy:
        _, port = proxy.listener_address("edge")
        client: MongoClient[dict[str, Any]] = MongoClient(
            f"mongodb://127.0.0.1:{port}/", tls=True, tlsCAFile=pki["ca"], serverSelectionTimeoutMS=5000
        )
        try:
            collection = client["shop"]["tls_orders"]
            collection.insert_many([{"n": n} for n in range(5)])
            assert sorted(d["n"] for d in collection.find({}, {"_id": 0})) == [0, 1, 2, 3, 4]
        finally:
            client.close()
        assert proxy.stats.values()["mongo.edge.cmd.insert.total"] == 1


def test_check_names_the_field_of_a_certificate_that_cannot_be_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_cert = tmp_path / "cert.pem"
    not_a_cert.write_text("not a certificate\n")
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "admin: null\nlisteners:\n  - name: edge\n    address: 127.0.0.1:0\n    cluster: up\n"
        f"    tls: {{cert_file: {not_a_cert}, key_file: {not_a_cert}}}\n"
        "clusters:\n  - name: up\n    hosts: ['127.0.0.1:1']\n"
    )
    assert main(["check", "-c", str(path)]) == 2
    assert "listeners[edge].tls.cert_file/key_file: cannot load" in capsys.readouterr().err


def test_a_missing_certificate_file_is_refused_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "admin: null\nlisteners:\n  - name: edge\n    address: 127.0.0.1:0\n    cluster: up\n"
        "    tls: {cert_file: /nonexistent/cert.pem, key_file: /nonexistent/key.pem}\n"
        "clusters:\n  - name: up\n    hosts: ['127.0.0.1:1']\n"
    )
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:6:" in err
    assert "listeners[0].tls.cert_file: '/nonexistent/cert.pem': no such file" in err
