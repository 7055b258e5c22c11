"""TLS termination under stress: bad certificates are refused one connection at a time, each with a clear error
for the client, a log line and its ``listener.<name>.ssl.*`` stat, while a good client on the same listener
carries on; certificate files replaced under a running client are picked up by new connections only.

Real peers throughout: Python's ``ssl`` clients (the standard library's OpenSSL, as every Python driver
uses), pymongo with ``tls=true`` in front of SecantusDB, and a threaded TCP echo server behind ``tcp``
listeners. Certificates come from trustme and live in the test's temporary directory.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from pymongo import MongoClient

from meshproxy.config import config_from_dict
from meshproxy.proxy import ProxyThread

pytestmark = pytest.mark.integration

DEADLINE = 15.0
"""How long a poll waits for the proxy to reach a state before the test fails (never a pass condition)."""


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- a real backend -------------------------------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[str, int]]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ("127.0.0.1", server.server_address[1])
    server.shutdown()
    server.server_close()


# -- certificates ---------------------------------------------------------------------------------------


def write_atomically(path: Path, data: bytes) -> None:
    """As a deployment tool (or Kubernetes' secret volume) does: write beside, then rename over."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def chain(leaf: trustme.LeafCert) -> bytes:
    return b"".join(blob.bytes() for blob in leaf.cert_chain_pems)


def fingerprint(leaf: trustme.LeafCert) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())).hexdigest()


def install(directory: Path, leaf: trustme.LeafCert) -> dict[str, str]:
    cert, key = directory / "server.pem", directory / "server.key"
    write_atomically(key, leaf.private_key_pem.bytes())
    write_atomically(cert, chain(leaf))
    return {"cert_file": str(cert), "key_file": str(key)}


def client_context(ca: trustme.CA, leaf: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if leaf is not None:
        leaf.configure_cert(context)
    return context


def presented(address: tuple[str, int], context: ssl.SSLContext) -> str:
    """The SHA-256 fingerprint of the certificate a new connection to ``address`` is shown."""
    with (
        socket.create_connection(address, timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()


def echo_once(address: tuple[str, int], context: ssl.SSLContext, server_hostname: str = "127.0.0.1") -> bytes:
    """Connect, send, read the echo: the whole of what a client does. Raises what the client sees."""
    with (
        socket.create_connection(address, timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(b"ping")
        return tls.recv(100)


def mesh(listeners: list[dict[str, Any]], upstream: tuple[str, int]) -> Any:
    return config_from_dict(
        {
            "admin": None,
            "listeners": [{"address": "127.0.0.1:0", "cluster": "up", **listener} for listener in listeners],
            "clusters": [{"name": "up", "hosts": [list(upstream)]}],
        }
    )


# -- bad certificates -----------------------------------------------------------------------------------


def ssl_stats(proxy: ProxyThread, listener: str) -> dict[str, int]:
    prefix = f"listener.{listener}.ssl."
    return {name.removeprefix(prefix): int(v) for name, v in proxy.stats.values().items() if name.startswith(prefix)}


def test_bad_certificates_are_refused_each_with_its_stat_and_a_good_client_carries_on(
    tmp_path: Path, echo: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    ca, stranger = trustme.CA(), trustme.CA()  # the stranger CA is nobody's trust anchor here
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    server_files = install(tmp_path, ca.issue_cert("127.0.0.1", "localhost"))
    expired_dir = tmp_path / "expired"
    expired_dir.mkdir()
    expired_files = install(
        expired_dir, ca.issue_cert("127.0.0.1", not_before=past - datetime.timedelta(days=30), not_after=past)
    )
    client_ca = tmp_path / "client-ca.pem"
    ca.cert_pem.write_to_path(str(client_ca))
    good_client = ca.issue_cert("client.meshproxy.test")
    expired_client = ca.issue_cert(
        "client.meshproxy.test", not_before=past - datetime.timedelta(days=30), not_after=past
    )
    unknown_client = stranger.issue_cert("client.meshproxy.test")

    config = mesh(
        [
            {"name": "mtls", "protocol": "tcp", "tls": {**server_files, "client_ca_file": str(client_ca)}},
            {"name": "stale", "protocol": "tcp", "tls": expired_files},
        ],
        echo,
    )
    caplog.set_level(logging.WARNING, logger="meshproxy.tls")
    with ProxyThread(config) as proxy:
        mtls, stale = proxy.listener_address("mtls"), proxy.listener_address("stale")
        good = client_context(ca, good_client)
        # A good client connects first and stays connected through everything below.
        with (
            socket.create_connection(mtls, timeout=10) as raw,
            good.wrap_socket(raw, server_hostname="127.0.0.1") as kept,
        ):
            kept.sendall(b"before")
            assert kept.recv(100) == b"before"

            refused: dict[str, str] = {}
            # The listener requires a client certificate; this client has none.
            with pytest.raises(ssl.SSLError) as no_cert:
                echo_once(mtls, client_context(ca))
            refused["no client certificate"] = str(no_cert.value)
            # The client's certificate has expired.
            with pytest.raises(ssl.SSLError) as expired:
                echo_once(mtls, client_context(ca, expired_client))
            refused["expired client certificate"] = str(expired.value)
            # The client's certificate was signed by a CA the listener does not trust.
            with pytest.raises(ssl.SSLError) as unknown:
                echo_once(mtls, client_context(ca, unknown_client))
            refused["client certificate from an unknown CA"] = str(unknown.value)
            # The client dials a name the server certificate is not for.
            with pytest.raises(ssl.SSLCertVerificationError) as wrong_host:
                echo_once(mtls, good, server_hostname="db.meshproxy.test")
            refused["server certificate for another host"] = str(wrong_host.value)
            # The client does not trust the CA that signed the server certificate.
            with pytest.raises(ssl.SSLCertVerificationError) as unknown_ca:
                echo_once(mtls, client_context(stranger, good_client))
            refused["server certificate from an unknown CA"] = str(unknown_ca.value)
            # The server certificate has expired.
            with pytest.raises(ssl.SSLCertVerificationError) as stale_server:
                echo_once(stale, client_context(ca))
            refused["expired server certificate"] = str(stale_server.value)

            # Meanwhile: the connection that was open still works, and a new good one is served.
            kept.sendall(b"after")
            assert kept.recv(100) == b"after"
            assert echo_once(mtls, good) == b"ping"

        # Clear errors on the client's side (OpenSSL's words, as every Python driver reports them).
        assert "certificate required" in refused["no client certificate"]
        assert "certificate expired" in refused["expired client certificate"]
        assert "unknown ca" in refused["client certificate from an unknown CA"]
        assert "Hostname mismatch" in refused["server certificate for another host"]
        # (trustme's chain ends with its root, which the client does not trust)
        assert "self-signed certificate in certificate chain" in refused["server certificate from an unknown CA"]
        assert "certificate has expired" in refused["expired server certificate"]

        # Each refusal counted once, under its reason, on its listener.
        expected_mtls = {
            "handshake": 2, "handshake_error": 5, "fail_verify_no_cert": 1, "fail_verify_error": 2,
            "connection_error": 2, "context_update": 0, "context_update_error": 0,
        }
        wait_for(lambda: ssl_stats(proxy, "mtls") == expected_mtls, f"mtls stats {expected_mtls}")
        expected_stale = {**dict.fromkeys(expected_mtls, 0), "handshake_error": 1, "connection_error": 1}
        wait_for(lambda: ssl_stats(proxy, "stale") == expected_stale, f"stale stats {expected_stale}")
        # Failed handshakes never became sessions; the two good connections did.
        assert proxy.stats.values()["listener.mtls.downstream_cx_total"] == 2

    # One log line per refusal, naming the listener, the client and the reason.
    lines = [r.getMessage() for r in caplog.records if "TLS handshake with 127.0.0.1:" in r.getMessage()]
    assert len(lines) == 6, lines
    assert sum("listener mtls" in line and "(fail_verify_no_cert)" in line for line in lines) == 1
    verify_failed = "(fail_verify_error): certificate verify failed: "
    assert sum(verify_failed + "certificate has expired" in line for line in lines) == 1
    assert sum(verify_failed + "unable to get local issuer certificate" in line for line in lines) == 1
    assert sum("listener stale" in line and "(connection_error)" in line for line in lines) == 1


# -- rotation -------------------------------------------------------------------------------------------


def test_rotation_under_a_running_client_new_connections_get_the_new_certificate(
    tmp_path: Path, echo: tuple[str, int], secantus: tuple[str, int]
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    first, second, third = (ca.issue_cert("127.0.0.1", "localhost") for _ in range(3))
    files = install(tmp_path, first)
    tls = {**files, "reload_interval": "50ms"}
    config = config_from_dict(
        {
            "admin": None,
            "listeners": [
                {"name": "db", "address": "127.0.0.1:0", "cluster": "db", "protocol": "mongo", "tls": tls},
                {"name": "echo", "address": "127.0.0.1:0", "cluster": "echo", "protocol": "tcp", "tls": tls},
            ],
            "clusters": [{"name": "db", "hosts": [list(secantus)]}, {"name": "echo", "hosts": [list(echo)]}],
        }
    )
    trust = client_context(ca)
    with ProxyThread(config) as proxy:
        db, echo_address = proxy.listener_address("db"), proxy.listener_address("echo")
        assert presented(db, trust) == presented(echo_address, trust) == fingerprint(first)

        # A connection opened before the rotation, to see that it outlives it.
        raw = socket.create_connection(echo_address, timeout=10)
        old = trust.wrap_socket(raw, server_hostname="127.0.0.1")

        # pymongo with tls=true runs calls in a loop; retries off, so any failure would show.
        client: MongoClient[dict[str, Any]] = MongoClient(
            f"mongodb://127.0.0.1:{db[1]}/", tls=True, tlsCAFile=str(ca_file), serverSelectionTimeoutMS=5000,
            retryWrites=False, retryReads=False,
        )
        calls, failures = [0], []
        stop = threading.Event()

        def loop() -> None:
            collection = client["shop"]["rotation"]
            while not stop.is_set():
                try:
                    collection.insert_one({"n": calls[0]})
                    assert collection.find_one({"n": calls[0]}) is not None
                    calls[0] += 1
                except Exception as exc:  # counted, and the test fails below with it
                    failures.append(repr(exc))

        worker = threading.Thread(target=loop, daemon=True)
        worker.start()
        try:
            wait_for(lambda: calls[0] >= 20, "the client's first calls")

            # Rotation: a new key and certificate, each written to a temporary file and renamed over.
            install(tmp_path, second)
            wait_for(lambda: presented(db, trust) == fingerprint(second), "the db listener's new certificate")
            wait_for(lambda: presented(echo_address, trust) == fingerprint(second), "the echo listener too")
            # New pymongo connections work with it (a second client, same CA).
            with MongoClient(
                f"mongodb://127.0.0.1:{db[1]}/", tls=True, tlsCAFile=str(ca_file), serverSelectionTimeoutMS=5000
            ) as fresh:
                assert fresh["shop"]["rotation"].find_one({"n": 0}) is not None
            at_rotation = calls[0]
            wait_for(lambda: calls[0] >= at_rotation + 20, "more calls after the rotation")

            # A rotation caught halfway: the new certificate is in place before its key. (The rotation
            # above renamed two files one after the other too: a poll between them may have seen, and
            # refused, the new key with the old certificate, so count from here.)
            def refusals(name: str) -> int:
                return int(proxy.stats.values()[f"listener.{name}.ssl.context_update_error"])

            before = {name: refusals(name) for name in ("db", "echo")}
            write_atomically(Path(files["cert_file"]), chain(third))
            for name in ("db", "echo"):
                wait_for(lambda name=name: refusals(name) == before[name] + 1, f"the mismatched pair refused by {name}")
            assert presented(db, trust) == fingerprint(second)  # the previous pair is still served
            assert echo_once(echo_address, trust) == b"ping"
            # The key arrives: the pair loads.
            write_atomically(Path(files["key_file"]), third.private_key_pem.bytes())
            wait_for(lambda: presented(db, trust) == fingerprint(third), "the third certificate")
            at_third = calls[0]
            wait_for(lambda: calls[0] >= at_third + 20, "more calls after the second rotation")
        finally:
            stop.set()
            worker.join(timeout=30)
            client.close()

        # The connection from before the rotations still has the first certificate and still works.
        der = old.getpeercert(binary_form=True)
        assert der is not None
        assert hashlib.sha256(der).hexdigest() == fingerprint(first)
        old.sendall(b"still here")
        assert old.recv(100) == b"still here"
        old.close()

        assert failures == []
        values = proxy.stats.values()
        for name in ("db", "echo"):
            # Two rotations; a poll that reads the files while a rename is under way may load once more.
            assert values[f"listener.{name}.ssl.context_update"] >= 2
            assert values[f"listener.{name}.ssl.handshake_error"] == 0
    print(f"rotation: {calls[0]} calls through two rotations and a refused half-rotation, 0 failed")


# -- upstream -------------------------------------------------------------------------------------------


def test_upstream_certificates_that_do_not_verify_are_counted_on_the_cluster(
    tmp_path: Path, echo: tuple[str, int]
) -> None:
    """plaintext client -> tcp listener -> cluster with TLS -> a TLS-terminating listener of the same proxy
    (a real TLS server) -> echo: a cluster that trusts another CA, and one that expects another name, fail
    their handshakes, counted under ``cluster.<name>.ssl.*``; a cluster that verifies carries bytes."""
    ca, stranger = trustme.CA(), trustme.CA()
    server_files = install(tmp_path, ca.issue_cert("127.0.0.1"))
    ca_file, stranger_file = tmp_path / "ca.pem", tmp_path / "stranger.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    stranger.cert_pem.write_to_path(str(stranger_file))

    with ProxyThread(mesh([{"name": "tls_in", "protocol": "tcp", "tls": server_files}], echo)) as backend:
        terminating = list(backend.listener_address("tls_in"))
        clusters = {
            "verified": {"ca_file": str(ca_file)},
            "unknown_ca": {"ca_file": str(stranger_file)},
            "wrong_name": {"ca_file": str(ca_file), "sni": "db.meshproxy.test"},
        }
        front = config_from_dict(
            {
                "admin": None,
                "listeners": [
                    {"name": name, "address": "127.0.0.1:0", "cluster": name, "protocol": "tcp"} for name in clusters
                ],
                "clusters": [{"name": name, "hosts": [terminating], "tls": tls} for name, tls in clusters.items()],
            }
        )
        with ProxyThread(front) as proxy:
            received = {}
            for name in clusters:
                with socket.create_connection(proxy.listener_address(name), timeout=10) as client:
                    client.sendall(b"ping")
                    received[name] = client.recv(100)
            assert received == {"verified": b"ping", "unknown_ca": b"", "wrong_name": b""}

            values = proxy.stats.values()
            for name in ("unknown_ca", "wrong_name"):
                assert values[f"cluster.{name}.ssl.handshake_error"] == 1
                assert values[f"cluster.{name}.ssl.fail_verify_error"] == 1
                assert values[f"cluster.{name}.upstream_cx_connect_fail"] == 1
            assert values.get("cluster.verified.ssl.handshake_error", 0) == 0
            assert values["cluster.verified.ssl.handshake"] >= 1
        # The terminating side saw the two refusals as the client's alerts.
        wait_for(lambda: backend.stats.values()["listener.tls_in.ssl.connection_error"] == 2, "the backend's count")


def test_plaintext_and_silent_clients_on_a_tls_listener_and_a_drain_with_a_handshake_pending(
    tmp_path: Path, echo: tuple[str, int]
) -> None:
    """A client speaking plaintext to a TLS listener is refused (``connection_error``, OpenSSL's reason in the
    log); a client that connects and says nothing holds no session, and a drain ends its handshake at once
    instead of waiting for the handshake timeout."""
    ca = trustme.CA()
    config = mesh([{"name": "edge", "protocol": "tcp", "tls": install(tmp_path, ca.issue_cert("127.0.0.1"))}], echo)
    proxy = ProxyThread(config)
    proxy.start()
    try:
        edge = proxy.listener_address("edge")
        with socket.create_connection(edge, timeout=10) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert plain.recv(100) == b""  # closed: what it sent is not TLS
        wait_for(lambda: ssl_stats(proxy, "edge")["connection_error"] == 1, "the plaintext client counted")

        silent = socket.create_connection(edge, timeout=10)
        assert echo_once(edge, client_context(ca)) == b"ping"  # others are served meanwhile
        wait_for(lambda: proxy.stats.values()["listener.edge.downstream_cx_active"] == 0, "the good client gone")
    finally:
        proxy.stop()  # drains: the silent client's handshake is aborted
    assert silent.recv(100) == b""
    silent.close()
