"""SigV4 re-signing of DynamoDB requests for the host they are sent to (Envoy's ``aws_request_signing``).

botocore signs every request for the host it talks to, and with the sidecar in between that is the
sidecar: the real endpoint would reject the signature (and the application would need real keys). With a
listener's ``aws`` block the sidecar takes the client's ``Authorization``, ``X-Amz-Date``,
``X-Amz-Security-Token`` (and ``X-Amz-Content-SHA256``) off, sets ``Host`` to the upstream it picked, and
signs the request again with its own credentials, so the application may use any dummy keys.

Why this is not an ordinary filter: filters run before the balancer picks a host, and with per-request
balancing each request (and a request moved to another host after a failed connect) may go to a different
host; a signature covers the ``Host`` header, so it can only be made once the host is known. The session
calls ``DynamoRequestSigner.sign`` as it writes a request to its connection (``DynamoSession._send``).

The signature itself is botocore's (``SigV4Auth`` over an ``AWSRequest``), as are the credentials
(botocore's provider chain, a named profile, or static keys). Temporary credentials are refreshed by
botocore's ``RefreshableCredentials``; ``CredentialSource`` only keeps that refresh (an STS or instance
metadata call, or a ``credential_process``: milliseconds to seconds) off the event loop while the
credentials in hand are still good, and blocks, as botocore would, only when they are about to expire.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.session import Session

from meshproxy.codecs.http1 import HttpRequest, encode

if TYPE_CHECKING:
    from meshproxy.config import AwsSigningConfig

__all__ = ["CredentialSource", "DynamoRequestSigner", "authority", "credentials_from_config", "signer_for"]

log = logging.getLogger("meshproxy.dynamo.sigv4")

STRIPPED = frozenset({
    b"authorization", b"x-amz-date", b"x-amz-security-token", b"x-amz-content-sha256", b"date", b"host",
})
"""Headers of the client's signature that are replaced. ``X-Amz-Content-SHA256`` goes too: botocore's signer
would trust a client's value (even ``UNSIGNED-PAYLOAD``) instead of hashing the body it signs. ``Date``
goes because botocore would turn it into ``X-Amz-Date`` anyway; ``Host`` is set to the upstream's."""

BLOCKING_REFRESH_WITHIN = 60.0
"""Seconds before expiry from which a request waits for refreshed credentials (botocore's own mandatory
window, 10 minutes, is what the background refresh normally beats by minutes)."""

RETRY_REFRESH_AFTER = 5.0
"""Seconds between background refresh attempts while a refresh keeps failing (no thread per request)."""

CHECK_EVERY = 1.0
"""Seconds during which credentials found fresh are not looked at again: botocore's expiry check reads the
local time zone and costs ~25 us, a third of a signature; a window measured in minutes loses nothing to it."""


class CredentialSource:
    """Credentials for each request, as botocore keeps them, with their refresh off the event loop.

    Static credentials are handed out as they are. ``RefreshableCredentials`` (STS, SSO, instance or
    container metadata, ``credential_process``) are refreshed by botocore itself; once they enter botocore's
    advisory window (15 minutes before expiry) a daemon thread asks botocore to refresh while requests keep
    using the credentials in hand, which are still valid. Only within ``BLOCKING_REFRESH_WITHIN`` seconds
    of expiry does a request call botocore on the loop and wait, since the old credentials would be refused.
    """

    def __init__(self, credentials: Credentials, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.credentials = credentials
        self._refreshable = isinstance(credentials, RefreshableCredentials)
        self._frozen: ReadOnlyCredentials = credentials.get_frozen_credentials()
        self._refreshing: threading.Thread | None = None
        self._next_attempt = 0.0
        self._quiet_until = 0.0
        self._clock = clock

    def frozen(self) -> ReadOnlyCredentials:
        """The credentials to sign one request with (a few attribute reads when nothing is due)."""
        credentials = self.credentials
        if not self._refreshable:
            return credentials.get_frozen_credentials()
        assert isinstance(credentials, RefreshableCredentials)
        now = self._clock()
        if now < self._quiet_until:
            return self._frozen
        if not credentials.refresh_needed():
            frozen = self._frozen = credentials.get_frozen_credentials()  # no refresh: botocore returns at once
            self._quiet_until = now + CHECK_EVERY
            return frozen
        if credentials.refresh_needed(BLOCKING_REFRESH_WITHIN):
            frozen = self._frozen = credentials.get_frozen_credentials()  # too close to expiry: wait
            return frozen
        self._refresh_in_background()
        return self._frozen

    def _refresh_in_background(self) -> None:
        if self._refreshing is not None and self._refreshing.is_alive():
            return
        now = self._clock()
        if now < self._next_attempt:
            return
        self._next_attempt = now + RETRY_REFRESH_AFTER
        self._refreshing = threading.Thread(target=self._refresh, name="meshproxy-aws-credentials", daemon=True)
        self._refreshing.start()

    def _refresh(self) -> None:
        try:
            self._frozen = self.credentials.get_frozen_credentials()  # botocore refreshes under its own lock
        except Exception:  # botocore logged it; the credentials in hand stay in use and the next request retries
            log.warning("refreshing AWS credentials failed; signing with the current ones", exc_info=True)

    def wait_for_refresh(self, timeout: float | None = None) -> None:
        """Tests and shutdown: wait for a background refresh under way, if any."""
        thread = self._refreshing
        if thread is not None:
            thread.join(timeout)


def credentials_from_config(config: AwsSigningConfig) -> Credentials:
    """botocore's credentials for ``config.credentials``: its default provider chain (environment, shared
    files, SSO, ``credential_process``, container and instance metadata), a named profile of the shared
    files, or static keys. Raises ``ValueError`` when none are found, naming where it looked."""
    if config.credentials == "static":
        assert config.access_key_id is not None
        assert config.secret_access_key is not None
        token = config.session_token.get_secret_value() if config.session_token is not None else None
        return Credentials(config.access_key_id, config.secret_access_key.get_secret_value(), token, method="static")
    session = Session(profile=config.profile) if config.credentials == "profile" else Session()
    credentials = session.get_credentials()
    if credentials is None:
        where = f"profile {config.profile!r}" if config.credentials == "profile" else "the default chain"
        raise ValueError(f"aws.credentials: no AWS credentials found in {where}")
    return credentials


def authority(address: tuple[str, int], *, tls: bool, override: str | None = None, tls_name: str | None = None) -> str:
    """The ``Host`` a request to ``address`` carries and is signed for: ``override`` when configured (an
    endpoint reached through a tunnel or an IP), else the TLS name or the address, with the scheme's
    default port left out as HTTP clients leave it out (``dynamodb.eu-west-1.amazonaws.com``)."""
    if override:
        return override
    host, port = address
    name = tls_name or host
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"  # an IPv6 literal
    return name if port == (443 if tls else 80) else f"{name}:{port}"


class DynamoRequestSigner:
    """Re-sign DynamoDB requests with botocore's SigV4 signer for ``service`` in ``region``.

    ``sign(request, host)`` returns the request's bytes as they go to the upstream: the client's headers in
    their order minus ``STRIPPED``, ``Host`` first, ``Content-Length`` framing, then ``X-Amz-Date``,
    ``X-Amz-Security-Token`` (temporary credentials) and ``Authorization`` as botocore set them. Everything
    sent is signed except what SigV4 itself leaves out (``Expect``, ``Connection``, ``User-Agent`` ...).
    """

    def __init__(
        self, credentials: Credentials | CredentialSource, *, region: str, service: str = "dynamodb"
    ) -> None:
        self.source = credentials if isinstance(credentials, CredentialSource) else CredentialSource(credentials)
        self.region = region
        self.service = service

    def sign(self, request: HttpRequest, host: str, *, tls: bool = False) -> bytes:
        """``request`` signed for ``host`` (an authority: ``name`` or ``name:port``), as bytes to write."""
        headers: list[tuple[str, str]] = [("Host", host)]
        for name, value in request.headers:
            lower = name.lower()
            if lower in STRIPPED or lower == b"transfer-encoding":
                continue
            if lower == b"content-length":
                continue  # set below from the body: a chunked request is sent with Content-Length
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if request.body or request.method not in (b"GET", b"HEAD"):
            headers.append(("Content-Length", str(len(request.body))))
        url = f"{'https' if tls else 'http'}://{host}{request.target.decode('latin-1')}"
        aws_request = AWSRequest(method=request.method.decode("ascii"), url=url, data=request.body)
        for key, text in headers:  # one at a time: botocore's headers keep repeats (a dict would not)
            aws_request.headers[key] = text
        SigV4Auth(self.source.frozen(), self.service, self.region).add_auth(aws_request)
        signed = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        for added in ("X-Amz-Date", "X-Amz-Security-Token", "Authorization"):  # what botocore set
            text = aws_request.headers.get(added)
            if text is not None:
                signed.append((added.encode("latin-1"), text.encode("latin-1")))
        return encode(replace(request, headers=signed, raw=b"", chunked=False, trailers=[]))


_by_listener: weakref.WeakKeyDictionary[object, DynamoRequestSigner] = weakref.WeakKeyDictionary()


def signer_for(owner: object, config: AwsSigningConfig) -> DynamoRequestSigner:
    """The one signer of ``owner`` (a listener): its credentials are looked up once, at its first request,
    and shared by its connections (botocore's refresh is per credentials object, so sharing is what keeps
    one refresh per expiry instead of one per connection)."""
    signer = _by_listener.get(owner)
    if signer is None:
        signer = _by_listener[owner] = DynamoRequestSigner(credentials_from_config(config), region=config.region)
    return signer
