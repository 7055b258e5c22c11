"""The admin endpoint off the loopback: the configuration refuses it without TLS and a bearer token (or TLS
with client certificates), naming the field; with them, requests without the right token are answered 401,
clients without a certificate are refused at the handshake (counted under ``http.admin.ssl.*``), and the
routes that change state refuse GET. The servers run on 127.0.0.1 (the checks do not depend on the address
once configured); certificates come from trustme and live in the test's temporary directory."""

from __future__ import annotations

import http.client
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from meshproxy.config import ConfigError, config_from_dict
from meshproxy.proxy import ProxyThread

TOKEN = "s3cret-token-for-tests"


def _config(admin: dict[str, Any]) -> Any:
    return config_from_dict(
        {
            "admin": admin,
            "listeners": [{"name": "app", "address": "127.0.0.1:0", "cluster": "up"}],
            "clusters": [{"name": "up", "hosts": ["127.0.0.1:1"]}],
        }
    )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    server = ca.issue_cert("127.0.0.1")
    paths = {name: tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem", "token")}
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    server.private_key_pem.write_to_path(str(paths["key.pem"]))
    paths["cert.pem"].write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    paths["token"].write_text(TOKEN + "\n")
    return {name: str(path) for name, path in paths.items()}


# -- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "admin.meshproxy.test"])
def test_an_admin_off_the_loopback_without_tls_is_refused_naming_the_field(host: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _config({"address": [host, 9901]})
    assert "admin.tls: the admin is bound to " + host in str(refused.value)


def test_an_admin_off_the_loopback_with_tls_but_no_token_is_refused_naming_the_field(files: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as refused:
        _config({"address": "0.0.0.0:9901", "tls": {"cert_file": files["cert.pem"], "key_file": files["key.pem"]}})
    assert "admin.token_file: the admin is bound to 0.0.0.0" in str(refused.value)


def test_an_admin_off_the_loopback_is_accepted_with_tls_and_a_token_or_with_mutual_tls(files: dict[str, str]) -> None:
    tls = {"cert_file": files["cert.pem"], "key_file": files["key.pem"]}
    with_token = _config({"address": "0.0.0.0:9901", "tls": tls, "token_file": files["token"]})
    assert with_token.admin.token_file == files["token"]
    mutual = _config({"address": "0.0.0.0:9901", "tls": {**tls, "client_ca_file": files["ca.pem"]}})
    assert mutual.admin.tls.client_ca_file == files["ca.pem"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.9", "::1", "localhost"])
def test_the_loopback_needs_neither(host: str) -> None:
    assert _config({"address": [host, 9901]}).admin.address == (host, 9901)


# -- a running admin --------------------------------------------------------------------------------------


def _https(files: dict[str, str], client: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files["ca.pem"])
    if client is not None:
        client.configure_cert(context)
    return context


def _call(
    address: tuple[str, int], context: ssl.SSLContext, method: str, path: str, token: str | None = None
) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPSConnection(*address, context=context, timeout=10)
    try:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        conn.close()


def _wait_for(proxy: ProxyThread, stat: str, value: int) -> None:
    deadline = time.monotonic() + 10
    while proxy.stats.values().get(stat) != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{stat} is {proxy.stats.values().get(stat)}, not {value}")
        time.sleep(0.02)


def test_with_a_token_requests_need_it_and_mutating_routes_refuse_get(files: dict[str, str]) -> None:
    tls = {"cert_file": files["cert.pem"], "key_file": files["key.pem"]}
    with ProxyThread(_config({"address": "127.0.0.1:0", "tls": tls, "token_file": files["token"]})) as proxy:
        address = proxy.admin_address
        assert address is not None
        https = _https(files)

        status, headers, body = _call(address, https, "GET", "/stats")
        assert (status, headers["www-authenticate"]) == (401, 'Bearer realm="meshproxy admin"')
        assert "Authorization: Bearer" in body
        assert _call(address, https, "GET", "/stats", token="wrong")[0] == 401
        assert _call(address, https, "GET", "/config_dump", token=TOKEN[:-1])[0] == 401
        assert _call(address, https, "POST", "/healthcheck/fail")[0] == 401  # no token, no switch
        assert proxy.proxy.state.health_check_failed is False

        status, _, body = _call(address, https, "GET", "/stats", token=TOKEN)
        assert status == 200
        assert "http.admin.downstream_rq_unauthorized: 4" in body
        # Readiness probes need no token.
        assert _call(address, https, "GET", "/ready")[:1] == (200,)

        # Mutating routes: GET is 405 with Allow: POST, even with the token; POST works.
        status, headers, _ = _call(address, https, "GET", "/healthcheck/fail", token=TOKEN)
        assert (status, headers["allow"]) == (405, "POST")
        assert proxy.proxy.state.health_check_failed is False
        assert _call(address, https, "POST", "/healthcheck/fail", token=TOKEN)[0] == 200
        assert _call(address, https, "GET", "/ready")[0] == 503
        assert _call(address, https, "POST", "/healthcheck/ok", token=TOKEN)[0] == 200

        # The token file is read per request: a new token works at once, the old one no longer does.
        Path(files["token"]).write_text("the-next-token\n")
        assert _call(address, https, "GET", "/server_info", token=TOKEN)[0] == 401
        assert _call(address, https, "GET", "/server_info", token="the-next-token")[0] == 200

        # Plain HTTP to the HTTPS admin is a failed handshake, counted; the admin carries on.
        plain = http.client.HTTPConnection(*address, timeout=10)
        try:
            plain.request("GET", "/ready")
            with pytest.raises((http.client.HTTPException, ConnectionError)):
                plain.getresponse()
        finally:
            plain.close()
        _wait_for(proxy, "http.admin.ssl.connection_error", 1)
        assert _call(address, https, "GET", "/ready")[0] == 200


def test_with_mutual_tls_a_client_without_a_certificate_is_refused(ca: trustme.CA, files: dict[str, str]) -> None:
    tls = {"cert_file": files["cert.pem"], "key_file": files["key.pem"], "client_ca_file": files["ca.pem"]}
    with ProxyThread(_config({"address": "127.0.0.1:0", "tls": tls})) as proxy:
        address = proxy.admin_address
        assert address is not None
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _call(address, _https(files), "GET", "/stats")
        _wait_for(proxy, "http.admin.ssl.fail_verify_no_cert", 1)
        operator = ca.issue_cert("operator.meshproxy.test")
        status, _, body = _call(address, _https(files, operator), "GET", "/stats?filter=^http.admin.ssl")
        assert status == 200
        assert "http.admin.ssl.fail_verify_no_cert: 1" in body
        assert "http.admin.ssl.handshake: 1" in body
