"""SigV4 re-signing (``meshproxy.filters.dynamo.sigv4``) on the recorded boto3 requests: the signature is the
one a server computes from what it receives, the client's is gone, and temporary credentials refresh
without blocking while they are still good."""

from __future__ import annotations

import datetime
import threading
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, RefreshableCredentials

from meshproxy.codecs.http1 import Http1RequestDecoder, HttpRequest
from meshproxy.config import AwsSigningConfig, ConfigError, config_from_dict
from meshproxy.filters.dynamo.sigv4 import (
    CredentialSource,
    DynamoRequestSigner,
    authority,
    credentials_from_config,
)

from .recorded import FIXTURES, STEPS

KEYS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", method="test")
TEMPORARY = Credentials("ASIAEXAMPLE", "secret", "session-token", method="test")


def recorded_requests() -> list[HttpRequest]:
    """Every request boto3 sent in the recorded workload, framed by the proxy's own decoder."""
    requests: list[HttpRequest] = []
    for step in STEPS:
        requests += Http1RequestDecoder().feed((FIXTURES / f"{step}.req.http").read_bytes())
    return requests


def decode(data: bytes) -> HttpRequest:
    (request,) = Http1RequestDecoder().feed(data)
    return request


def server_signature(request: HttpRequest, credentials: Credentials, region: str, *, tls: bool = False) -> str:
    """The signature a server computes from the request as received (as moto does): the signed headers
    named in ``Authorization``, the body, the date of ``X-Amz-Date``."""
    headers: dict[str, str] = {}
    for key, value in request.headers:  # a repeated header is one comma-separated list, as HTTP reads it
        name = key.decode().lower()
        headers[name] = f"{headers[name]},{value.decode()}" if name in headers else value.decode()
    signed = headers["authorization"].partition("SignedHeaders=")[2].partition(",")[0].split(";")
    host = headers["host"]
    aws = AWSRequest(
        method=request.method.decode(),
        url=f"{'https' if tls else 'http'}://{host}{request.target.decode()}",
        data=request.body,
        headers={name: headers[name] for name in signed},
    )
    aws.context["timestamp"] = headers["x-amz-date"]
    auth = SigV4Auth(credentials.get_frozen_credentials(), "dynamodb", region)
    return auth.signature(auth.string_to_sign(aws, auth.canonical_request(aws)), aws)


def test_every_recorded_request_is_signed_as_a_server_verifies_it() -> None:
    signer = DynamoRequestSigner(KEYS, region="eu-west-1")
    requests = recorded_requests()
    assert len(requests) == 19
    for original in requests:
        signed = decode(signer.sign(original, "dynamodb.eu-west-1.amazonaws.com", tls=True))
        names = [k.lower() for k, _ in signed.headers]
        assert signed.header(b"host") == b"dynamodb.eu-west-1.amazonaws.com"
        assert names.count(b"host") == 1
        assert names.count(b"authorization") == 1
        assert names.count(b"x-amz-date") == 1
        assert b"x-amz-security-token" not in names  # long-term keys have no token
        authorization = signed.header(b"authorization")
        assert authorization is not None
        assert b"Credential=AKIDEXAMPLE/" in authorization
        assert b"/eu-west-1/dynamodb/aws4_request" in authorization
        assert signed.body == original.body
        assert signed.header(b"x-amz-target") == original.header(b"x-amz-target")
        signature = authorization.partition(b"Signature=")[2].decode()
        assert signature == server_signature(signed, KEYS, "eu-west-1", tls=True)
        # everything sent is signed but what SigV4 leaves out
        signed_names = set(authorization.partition(b"SignedHeaders=")[2].partition(b",")[0].split(b";"))
        assert set(names) - signed_names <= {b"user-agent", b"authorization", b"expect"}


def test_the_clients_signature_is_replaced_not_kept() -> None:
    original = recorded_requests()[0]
    client_authorization = original.header(b"authorization")
    assert client_authorization is not None
    extra = [(b"X-Amz-Content-SHA256", b"UNSIGNED-PAYLOAD"), (b"X-Amz-Security-Token", b"client-token")]
    request = decode(
        original.raw.replace(b"\r\n\r\n", b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in extra) + b"\r\n", 1)
    )
    signed = decode(DynamoRequestSigner(TEMPORARY, region="us-east-1").sign(request, "127.0.0.1:8000"))
    assert signed.header(b"authorization") != client_authorization
    assert signed.header(b"x-amz-security-token") == b"session-token"  # ours, once
    assert signed.header(b"x-amz-content-sha256") is None  # the signer hashes the body itself
    assert [k.lower() for k, _ in signed.headers].count(b"x-amz-date") == 1
    assert signed.header(b"host") == b"127.0.0.1:8000"
    signature = signed.header(b"authorization")
    assert signature is not None
    assert signature.partition(b"Signature=")[2].decode() == server_signature(signed, TEMPORARY, "us-east-1")


def test_a_chunked_request_goes_with_content_length_and_repeated_headers_stay() -> None:
    body = b'{"TableName": "t"}'
    raw = (
        b"POST / HTTP/1.1\r\nHost: proxy:8001\r\nX-Amz-Target: DynamoDB_20120810.DescribeTable\r\n"
        b"X-Custom: a\r\nX-Custom: b\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    signed = decode(DynamoRequestSigner(KEYS, region="us-east-1").sign(decode(raw), "upstream:8000"))
    assert signed.header(b"transfer-encoding") is None
    assert signed.header(b"content-length") == str(len(body)).encode()
    assert signed.body == body
    assert signed.header(b"x-custom") == b"a, b"
    signature = signed.header(b"authorization")
    assert signature is not None
    assert signature.partition(b"Signature=")[2].decode() == server_signature(signed, KEYS, "us-east-1")


@pytest.mark.parametrize(
    ("address", "tls", "override", "tls_name", "expected"),
    [
        (("127.0.0.1", 8000), False, None, None, "127.0.0.1:8000"),
        (("10.0.0.5", 80), False, None, None, "10.0.0.5"),
        (("10.0.0.5", 443), True, None, "dynamodb.eu-west-1.amazonaws.com", "dynamodb.eu-west-1.amazonaws.com"),
        (("10.0.0.5", 8443), True, None, "ddb.internal", "ddb.internal:8443"),
        (("::1", 8000), False, None, None, "[::1]:8000"),
        (("127.0.0.1", 4433), True, "dynamodb.us-east-1.amazonaws.com", "127.0.0.1",
         "dynamodb.us-east-1.amazonaws.com"),
    ],
)
def test_authority(
    address: tuple[str, int], tls: bool, override: str | None, tls_name: str | None, expected: str
) -> None:
    assert authority(address, tls=tls, override=override, tls_name=tls_name) == expected


# -- temporary credentials ---------------------------------------------------------------------------------


class Clock:
    """botocore's ``time_fetcher``: a settable UTC now."""

    def __init__(self) -> None:
        self.now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now

    def after(self, seconds: float) -> str:
        return (self.now + datetime.timedelta(seconds=seconds)).isoformat()


class Issuer:
    """A refresh function (what STS, SSO or instance metadata would answer), counted; ``gate`` holds it."""

    def __init__(self, clock: Clock, valid_for: float) -> None:
        self.clock = clock
        self.valid_for = valid_for
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def __call__(self) -> dict[str, Any]:
        self.gate.wait(5)
        self.calls += 1
        if self.fail:
            raise RuntimeError("STS is down")
        return {
            "access_key": f"ASIA{self.calls}", "secret_key": f"secret{self.calls}", "token": f"token{self.calls}",
            "expiry_time": self.clock.after(self.valid_for),
        }


def refreshable(clock: Clock, issuer: Issuer) -> RefreshableCredentials:
    first = issuer()
    return RefreshableCredentials(
        first["access_key"], first["secret_key"], first["token"],
        datetime.datetime.fromisoformat(first["expiry_time"]),
        refresh_using=issuer, method="assume-role", time_fetcher=clock,
    )


def test_fresh_temporary_credentials_are_not_refreshed_and_carry_their_token() -> None:
    clock = Clock()
    issuer = Issuer(clock, valid_for=3600)
    signer = DynamoRequestSigner(refreshable(clock, issuer), region="us-east-1")
    request = recorded_requests()[0]
    for _ in range(5):
        signed = decode(signer.sign(request, "127.0.0.1:8000"))
        assert signed.header(b"x-amz-security-token") == b"token1"
        assert b"Credential=ASIA1/" in (signed.header(b"authorization") or b"")
    assert issuer.calls == 1


def test_credentials_near_expiry_refresh_in_the_background_while_the_old_ones_sign() -> None:
    clock = Clock()
    issuer = Issuer(clock, valid_for=3600)
    source = CredentialSource(refreshable(clock, issuer))
    clock.now += datetime.timedelta(seconds=3600 - 14 * 60)  # inside botocore's 15-minute advisory window
    issuer.gate.clear()  # the refresh call hangs (a slow STS)
    assert source.frozen().access_key == "ASIA1"  # not blocked: the current credentials are still good
    assert source.frozen().access_key == "ASIA1"  # and one refresh is under way, not one per request
    issuer.gate.set()
    source.wait_for_refresh(5)
    assert issuer.calls == 2
    assert source.frozen().access_key == "ASIA2"
    assert source.frozen().token == "token2"


def test_credentials_about_to_expire_are_refreshed_before_signing() -> None:
    clock = Clock()
    issuer = Issuer(clock, valid_for=3600)
    source = CredentialSource(refreshable(clock, issuer))
    clock.now += datetime.timedelta(seconds=3600 - 30)  # 30 s left: the old ones would be refused on arrival
    assert source.frozen().access_key == "ASIA2"
    assert issuer.calls == 2


def test_a_failing_background_refresh_keeps_the_current_credentials_and_is_retried_later() -> None:
    clock = Clock()
    issuer = Issuer(clock, valid_for=3600)
    monotonic = [100.0]
    source = CredentialSource(refreshable(clock, issuer), clock=lambda: monotonic[0])
    clock.now += datetime.timedelta(seconds=3600 - 14 * 60)
    issuer.fail = True
    assert source.frozen().access_key == "ASIA1"
    source.wait_for_refresh(5)
    assert issuer.calls == 2
    assert source.frozen().access_key == "ASIA1"  # within RETRY_REFRESH_AFTER: no new attempt
    source.wait_for_refresh(5)
    assert issuer.calls == 2
    monotonic[0] += 6
    issuer.fail = False
    source.frozen()
    source.wait_for_refresh(5)
    assert issuer.calls == 3
    assert source.frozen().access_key == "ASIA3"


# -- configuration ------------------------------------------------------------------------------------------


def _listener(aws: dict[str, Any]) -> dict[str, Any]:
    return {
        "listeners": [
            {"name": "d", "address": "127.0.0.1:0", "protocol": "dynamo", "cluster": "c", "aws": aws}
        ],
        "clusters": [{"name": "c", "hosts": ["127.0.0.1:8000"]}],
    }


@pytest.mark.parametrize(
    ("aws", "field"),
    [
        ({"credentials": "default-chain"}, "listeners[0].aws.region"),
        ({"region": "us-east-1", "credentials": "profile"}, "listeners[0].aws.profile"),
        ({"region": "us-east-1", "credentials": "static", "access_key_id": "AKIA"},
         "listeners[0].aws.secret_access_key"),
        ({"region": "us-east-1", "access_key_id": "AKIA"}, "listeners[0].aws.access_key_id"),
        ({"region": "us-east-1", "credentials": "vault"}, "listeners[0].aws.credentials"),
    ],
)
def test_config_errors_name_the_field(aws: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict(_listener(aws), source="<test>")
    assert field in str(error.value)


def test_static_secrets_are_not_dumped_and_build_botocore_credentials() -> None:
    aws = {"region": "us-east-1", "credentials": "static", "access_key_id": "AKIA1",
           "secret_access_key": "s3cret", "session_token": "tok"}
    config = config_from_dict(_listener(aws), source="<test>")
    dumped = str(config.model_dump(mode="json"))
    assert "s3cret" not in dumped
    assert "tok'" not in dumped
    listener_aws = config.listeners[0].aws  # type: ignore[union-attr]
    assert isinstance(listener_aws, AwsSigningConfig)
    frozen = credentials_from_config(listener_aws).get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == ("AKIA1", "s3cret", "tok")


def test_a_missing_profile_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    with pytest.raises(Exception, match="nowhere"):
        credentials_from_config(AwsSigningConfig(region="us-east-1", credentials="profile", profile="nowhere"))


# -- command line -------------------------------------------------------------------------------------------


def _cli_config(*flags: str) -> Any:
    from meshproxy.cli import _build_parser, _sidecar_config

    args = _build_parser().parse_args(
        ["sidecar", "dynamo", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:8000", *flags]
    )
    return _sidecar_config(args).listeners[0]


def test_sidecar_flags_build_the_aws_block() -> None:
    assert _cli_config().aws is None
    aws = _cli_config("--aws-region", "eu-west-1").aws
    assert (aws.region, aws.credentials, aws.profile, aws.host) == ("eu-west-1", "default-chain", None, None)
    aws = _cli_config(
        "--aws-region", "eu-west-1", "--aws-credentials", "profile:prod",
        "--aws-host", "dynamodb.eu-west-1.amazonaws.com",
    ).aws
    assert (aws.credentials, aws.profile, aws.host) == ("profile", "prod", "dynamodb.eu-west-1.amazonaws.com")
    with pytest.raises(ConfigError, match="--aws-credentials"):
        _cli_config("--aws-region", "eu-west-1", "--aws-credentials", "static")
    with pytest.raises(ConfigError, match="need --aws-region"):
        _cli_config("--aws-credentials", "profile:prod")
