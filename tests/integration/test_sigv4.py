"""SigV4 re-signing against a moto server that checks signatures (issue 7, item 4).

Chain: ``boto3 (dummy credentials) -> meshproxy sidecar (aws: re-signing) -> moto``, where moto runs with
IAM authentication on: ``INITIAL_NO_AUTH_ACTION_COUNT`` lets the first few requests through (the IAM setup
below) and from then on moto recomputes every request's signature from the credentials it issued and checks
the caller's policies. moto reads that variable when it is imported, and its auth state is process-wide, so
it runs in a subprocess of its own here: the other moto servers of the suite stay unauthenticated.

What the tests prove:

- a client with dummy keys gets ``InvalidClientTokenId`` from moto through a sidecar that forwards the
  client's signature, and ``SignatureDoesNotMatch`` when it knows the key id but not the secret; the same
  client through a re-signing sidecar creates a table, puts, gets and queries items;
- temporary credentials from botocore's provider chain (a profile whose ``credential_process`` calls moto's
  STS ``AssumeRole``) carry their session token, are refreshed by botocore in the background before they
  expire, and the refreshed ones are the ones used: once the first role loses its permissions, requests
  still succeed, signed with the second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from meshproxy.config import dynamo_sidecar_config
from meshproxy.filters.dynamo.sigv4 import signer_for
from meshproxy.proxy import ProxyThread

PREFIX = "it"
REGION = "us-east-1"
SETUP_ACTIONS = 8
"""Requests moto lets through unauthenticated: exactly the IAM calls of the ``moto_auth`` fixture."""

ALLOW_DYNAMODB = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"}]}
ALLOW_USER = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["dynamodb:*", "sts:AssumeRole", "iam:*"], "Resource": "*"}],
}
TRUST_ANYONE = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
}

MOTO_MAIN = textwrap.dedent(
    """
    import logging, sys
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()  # runs until the test closes our stdin
    server.stop()
    """
)


class MotoAuth:
    """A moto server with IAM authentication on, an IAM user with an access key, and two roles."""

    def __init__(self, address: tuple[str, int], key_id: str, secret: str) -> None:
        self.address = address
        self.key_id = key_id
        self.secret = secret

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    def client(self, service: str, **credentials: str) -> Any:
        """A boto3 client straight to moto, with the user's real keys unless others are given."""
        credentials.setdefault("aws_access_key_id", self.key_id)
        credentials.setdefault("aws_secret_access_key", self.secret)
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, **credentials)


def _error_code(error: ClientError) -> str:
    """moto's error code. moto answers authentication errors of every service in IAM's XML
    (``<ErrorResponse><Errors><Error><Code>InvalidClientTokenId</Code>``), which botocore's JSON parser for
    DynamoDB cannot read: it reports the status as the code and the XML as the message. (DynamoDB itself
    answers JSON: ``UnrecognizedClientException``, ``InvalidSignatureException``.)"""
    found = re.search(r"<Code>([^<]+)</Code>", error.response["Error"].get("Message", ""))
    return found.group(1) if found else str(error.response["Error"]["Code"])


def _urlopen(url: str, data: bytes | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as response:
        body: bytes = response.read()
        return body


@pytest.fixture(scope="module")
def moto_auth() -> Iterator[MotoAuth]:
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_ACTIONS)}
    process = subprocess.Popen(
        [sys.executable, "-c", MOTO_MAIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        address = ("127.0.0.1", port)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:  # the port is bound before it is printed; this only waits for the first answer
            try:
                _urlopen(f"{url}/moto-api/data.json")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # The unauthenticated setup: exactly SETUP_ACTIONS requests (any credentials pass until then).
        iam = boto3.client("iam", endpoint_url=url, region_name=REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="app")  # 1
        key = iam.create_access_key(UserName="app")["AccessKey"]  # 2
        iam.put_user_policy(UserName="app", PolicyName="all", PolicyDocument=json.dumps(ALLOW_USER))  # 3
        for role in ("first", "second"):  # 4-7
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(TRUST_ANYONE))
            iam.put_role_policy(RoleName=role, PolicyName="dynamodb", PolicyDocument=json.dumps(ALLOW_DYNAMODB))
        iam.list_users()  # 8: from the next request on, moto checks signatures
        auth = MotoAuth(address, key["AccessKeyId"], key["SecretAccessKey"])
        with pytest.raises(ClientError) as refused:  # authentication is on now
            auth.client("dynamodb", aws_access_key_id="dummy", aws_secret_access_key="dummy").list_tables()
        assert _error_code(refused.value) == "InvalidClientTokenId"
        auth.client("dynamodb").list_tables()  # and the real keys work
        yield auth
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _sidecar(upstream: tuple[str, int], aws: dict[str, Any] | None) -> ProxyThread:
    options: dict[str, Any] = {} if aws is None else {"aws": aws}
    config = dynamo_sidecar_config(
        listen=("127.0.0.1", 0), upstream=upstream, admin=None, stat_prefix=PREFIX, **options
    )
    proxy = ProxyThread(config)
    proxy.start()
    return proxy


def _dummy_client(proxy: ProxyThread) -> Any:
    """An application's client: the sidecar as endpoint, keys that mean nothing, boto3's retries off."""
    host, port = proxy.listener_address(PREFIX)
    return boto3.client(
        "dynamodb", endpoint_url=f"http://{host}:{port}", region_name=REGION,
        aws_access_key_id="dummy", aws_secret_access_key="dummy",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def _counter(proxy: ProxyThread, name: str) -> float:
    return proxy.stats.counter(f"dynamodb.{PREFIX}.aws_request_signing.{name}",
                               prom=f"meshproxy_dynamodb_aws_request_{name}", labels={"prefix": PREFIX}).value


def _crud(client: Any, table: str) -> None:
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "N"}
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    for n in range(3):
        client.put_item(TableName=table, Item={"pk": {"S": "a"}, "sk": {"N": str(n)}, "v": {"S": f"value {n}"}})
    item = client.get_item(TableName=table, Key={"pk": {"S": "a"}, "sk": {"N": "1"}})["Item"]
    assert item["v"] == {"S": "value 1"}
    found = client.query(
        TableName=table, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "a"}}
    )
    assert [i["sk"]["N"] for i in found["Items"]] == ["0", "1", "2"]


def test_without_re_signing_moto_refuses_the_client(moto_auth: MotoAuth) -> None:
    """The client's own signature goes through unchanged: dummy keys are unknown to moto, and a known key
    id with a wrong secret makes a signature moto does not match."""
    proxy = _sidecar(moto_auth.address, aws=None)
    try:
        with pytest.raises(ClientError) as unknown:
            _dummy_client(proxy).create_table(
                TableName="refused", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
            )
        assert _error_code(unknown.value) == "InvalidClientTokenId"
        assert unknown.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

        host, port = proxy.listener_address(PREFIX)
        wrong_secret = boto3.client(
            "dynamodb", endpoint_url=f"http://{host}:{port}", region_name=REGION,
            aws_access_key_id=moto_auth.key_id, aws_secret_access_key="not-the-secret",
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )
        with pytest.raises(ClientError) as mismatch:
            wrong_secret.list_tables()
        assert _error_code(mismatch.value) == "SignatureDoesNotMatch"
        assert _counter(proxy, "signing_added") == 0
    finally:
        proxy.stop()


def test_re_signing_with_the_real_keys_lets_dummy_credentials_through(moto_auth: MotoAuth) -> None:
    """The same client, through a sidecar that re-signs with the IAM user's key: every call succeeds."""
    aws = {
        "region": REGION, "credentials": "static",
        "access_key_id": moto_auth.key_id, "secret_access_key": moto_auth.secret,
    }
    proxy = _sidecar(moto_auth.address, aws=aws)
    try:
        client = _dummy_client(proxy)
        _crud(client, "resigned")
        assert client.describe_table(TableName="resigned")["Table"]["ItemCount"] >= 0
        # create + 3 puts + get + query + describe: each re-signed once, none failed
        assert _counter(proxy, "signing_added") == 7
        assert _counter(proxy, "signing_failed") == 0
        # moto saw the sidecar's signature, not the client's: the same calls straight from the client fail
        with pytest.raises(ClientError) as direct:
            moto_auth.client("dynamodb", aws_access_key_id="dummy", aws_secret_access_key="dummy").get_item(
                TableName="resigned", Key={"pk": {"S": "a"}, "sk": {"N": "1"}}
            )
        assert _error_code(direct.value) == "InvalidClientTokenId"
    finally:
        proxy.stop()


CREDENTIAL_PROCESS = textwrap.dedent(
    """
    import datetime, json, sys
    import boto3
    url, key_id, secret, count_file, valid_for = sys.argv[1:6]
    with open(count_file, "a+") as f:
        f.seek(0)
        calls = len(f.read().split())
        role = "first" if calls == 0 else "second"
        f.write(role + "\\n")
    sts = boto3.client("sts", endpoint_url=url, region_name="us-east-1",
                       aws_access_key_id=key_id, aws_secret_access_key=secret)
    c = sts.assume_role(RoleArn=f"arn:aws:iam::123456789012:role/{role}", RoleSessionName="meshproxy")["Credentials"]
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=float(valid_for))
    print(json.dumps({"Version": 1, "AccessKeyId": c["AccessKeyId"], "SecretAccessKey": c["SecretAccessKey"],
                      "SessionToken": c["SessionToken"], "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}))
    """
)

ADVISORY_WINDOW = 15 * 60
"""botocore refreshes temporary credentials (when asked for them) this long before they expire."""


def test_temporary_credentials_are_used_and_refreshed(
    moto_auth: MotoAuth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile whose ``credential_process`` assumes a role in moto: the first credentials (role
    ``first``) expire 15 minutes + 3 s after they are issued, so 3 s later botocore's advisory refresh is
    due: the sidecar refreshes in the background while requests keep going, and the new credentials (role
    ``second``) are used; taking ``first``'s permissions away then changes nothing for the client."""
    count_file = tmp_path / "calls"
    script = tmp_path / "credentials.py"
    script.write_text(CREDENTIAL_PROCESS)
    command = " ".join(
        [sys.executable, str(script), moto_auth.url, moto_auth.key_id, moto_auth.secret, str(count_file),
         str(ADVISORY_WINDOW + 3)]
    )
    aws_config = tmp_path / "config"
    aws_config.write_text(f"[profile meshproxy-sigv4]\ncredential_process = {command}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)

    aws = {"region": REGION, "credentials": "profile", "profile": "meshproxy-sigv4"}
    proxy = _sidecar(moto_auth.address, aws=aws)
    try:
        client = _dummy_client(proxy)
        started = time.monotonic()
        _crud(client, "temporary")  # signed with role "first"'s credentials and session token
        assert count_file.read_text().split() == ["first"]
        listener = proxy.proxy.listeners[PREFIX]
        signer = signer_for(listener, proxy.config.listeners[0].aws)  # type: ignore[union-attr,arg-type]
        first = signer.source.frozen()
        assert first.token  # temporary credentials: a session token is sent (moto checks it)

        time.sleep(max(0.0, started + 3.2 - time.monotonic()))
        deadline = time.monotonic() + 10
        gets = 0
        while count_file.read_text().split() != ["first", "second"]:  # each call may start the refresh
            client.get_item(TableName="temporary", Key={"pk": {"S": "a"}, "sk": {"N": "0"}})
            gets += 1
            assert time.monotonic() < deadline, "botocore never refreshed the credentials"
            time.sleep(0.05)
        signer.source.wait_for_refresh(timeout=5)
        second = signer.source.frozen()
        assert second.access_key != first.access_key
        assert second.token != first.token

        # Role "first" loses its permissions: its credentials are refused now, the sidecar's calls are not.
        iam = moto_auth.client("iam")
        iam.delete_role_policy(RoleName="first", PolicyName="dynamodb")
        stale = moto_auth.client(
            "dynamodb", aws_access_key_id=first.access_key, aws_secret_access_key=first.secret_key,
            aws_session_token=first.token,
        )
        with pytest.raises(ClientError) as denied:
            stale.get_item(TableName="temporary", Key={"pk": {"S": "a"}, "sk": {"N": "0"}})
        assert _error_code(denied.value) == "AccessDenied"
        item = client.get_item(TableName="temporary", Key={"pk": {"S": "a"}, "sk": {"N": "2"}})["Item"]
        assert item["v"] == {"S": "value 2"}
        assert count_file.read_text().split() == ["first", "second"]  # one refresh, not one per request
        assert _counter(proxy, "signing_failed") == 0
        assert _counter(proxy, "signing_added") == 6 + gets + 1
    finally:
        proxy.stop()


def test_a_request_that_cannot_be_signed_is_answered_500_and_the_connection_goes_on(
    moto_auth: MotoAuth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials (a profile that does not exist): each request gets a 500 naming the problem, counted
    in ``signing_failed``; nothing unsigned reaches the server, and the client's connection stays usable."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    proxy = _sidecar(moto_auth.address, aws={"region": REGION, "credentials": "profile", "profile": "nowhere"})
    try:
        client = _dummy_client(proxy)
        for _ in range(2):
            with pytest.raises(ClientError) as failed:
                client.list_tables()
            assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
            assert "cannot sign the request" in str(failed.value)
            assert "nowhere" in str(failed.value)
        assert _counter(proxy, "signing_failed") == 2
        assert _counter(proxy, "signing_added") == 0
    finally:
        proxy.stop()


def test_re_signing_over_tls_signs_for_the_tls_name(moto_auth: MotoAuth, tmp_path: Path) -> None:
    """Upstream TLS: the request is signed for the cluster's ``sni`` (the name a real endpoint has, here
    ``localhost`` on a TLS-terminating meshproxy in front of moto), over ``https``, and moto, which sees the
    ``Host`` the sidecar set, accepts the signature."""
    import trustme

    from meshproxy.config import config_from_dict

    ca = trustme.CA()
    server = ca.issue_cert("localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    server.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    edge = ProxyThread(config_from_dict({
        "admin": None,
        "listeners": [{"name": "edge", "address": "127.0.0.1:0", "protocol": "dynamo", "cluster": "moto",
                       "tls": {"cert_file": str(cert_file), "key_file": str(key_file)}}],
        "clusters": [{"name": "moto", "hosts": [list(moto_auth.address)]}],
    }))
    edge.start()
    try:
        edge_port = edge.listener_address("edge")[1]
        sidecar = ProxyThread(config_from_dict({
            "admin": None,
            "listeners": [{"name": PREFIX, "address": "127.0.0.1:0", "protocol": "dynamo", "cluster": "aws",
                           "aws": {"region": REGION, "credentials": "static", "access_key_id": moto_auth.key_id,
                                   "secret_access_key": moto_auth.secret}}],
            "clusters": [{"name": "aws", "hosts": [["127.0.0.1", edge_port]],
                          "tls": {"ca_file": str(ca_file), "sni": "localhost"}}],
        }))
        sidecar.start()
        try:
            client = _dummy_client(sidecar)
            _crud(client, "over_tls")
            assert _counter(sidecar, "signing_added") == 6
        finally:
            sidecar.stop()
    finally:
        edge.stop()
