"""One validated configuration model, loaded from YAML.

Every component is configured from these models, whether the proxy runs from ``meshproxy run -c``,
from ``meshproxy sidecar``, or is built in service code. Durations accept ``"250ms"``, ``"5s"``,
``"2m"``, ``"1h"`` or a number of seconds; sizes accept ``"48MB"``, ``"16KiB"`` or a number of bytes.
Load errors name the file, the path inside it and the field (``ConfigError``).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    model_validator,
)

# -- scalar types ---------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration such as '250ms', '5s', '2m' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration such as '250ms', '5s', '2m' or a number of seconds")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a size such as '48MB', '16KiB' or a number of bytes")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        unit = (match.group(2) or "b").lower()
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    else:
        raise ValueError(f"{value!r} is not a size such as '48MB', '16KiB' or a number of bytes")
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


def parse_address(value: Any) -> tuple[str, int]:
    if isinstance(value, tuple | list) and len(value) == 2:
        host, port = str(value[0]), value[1]
    elif isinstance(value, str) and ":" in value:
        host, _, port_text = value.rpartition(":")
        host = host.strip("[]")
        if not port_text.isdigit():
            raise ValueError(f"{value!r}: the port must be a number")
        port = int(port_text)
    else:
        raise ValueError(f"{value!r} is not an address of the form HOST:PORT")
    if not host:
        raise ValueError(f"{value!r} has no host")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: the port must be between 0 and 65535")
    return host, port


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
Address = Annotated[tuple[str, int], BeforeValidator(parse_address)]

DEFAULT_MAX_MESSAGE_SIZE = 48_000_000
"""MongoDB's own ``maxMessageSizeBytes`` (48 MB): no legitimate message is larger."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- filters --------------------------------------------------------------------------------------------


class MongoMatch(_Model):
    """Which operations a filter applies to; an unset field matches everything."""

    command: list[str] | None = None
    database: list[str] | None = None
    collection: list[str] | None = None


class StatsFilterConfig(_Model):
    type: Literal["stats"] = "stats"
    per_collection: bool = True
    """Keep per database/collection/command stats (cardinality grows with collections)."""
    callsite_field: str = "$comment"
    """Callsite stats come from this top-level field of the command when it is a string."""


class FixedDelay(_Model):
    duration: Duration
    percentage: float = Field(100.0, ge=0, le=100)


class MongoAbort(_Model):
    code: int = 2
    code_name: str = "BadValue"
    message: str = "fault injected by meshproxy"
    percentage: float = Field(100.0, ge=0, le=100)


class FaultFilterConfig(_Model):
    type: Literal["fault"] = "fault"
    delay: FixedDelay | None = None
    abort: MongoAbort | None = None
    match: MongoMatch = MongoMatch()

    @model_validator(mode="after")
    def _needs_a_fault(self) -> FaultFilterConfig:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault filter needs 'delay', 'abort' or both")
        return self


class AccessLogFilterConfig(_Model):
    type: Literal["access_log"] = "access_log"
    path: str = "stdout"
    """A file path (appended to), or ``stdout`` / ``stderr``."""


class TopologyRewriteFilterConfig(_Model):
    type: Literal["topology_rewrite"] = "topology_rewrite"
    mode: Literal["rewrite", "standalone", "off"] = "rewrite"
    advertise: Address | None = None
    """The address drivers should use; defaults to the listener's own address."""


MongoFilterConfig = Annotated[
    StatsFilterConfig | FaultFilterConfig | AccessLogFilterConfig | TopologyRewriteFilterConfig,
    Field(discriminator="type"),
]


def _default_mongo_filters() -> list[MongoFilterConfig]:
    return [StatsFilterConfig(), TopologyRewriteFilterConfig()]


class DynamoStatsFilterConfig(_Model):
    type: Literal["stats"] = "stats"
    max_keys: Annotated[int, Field(ge=1)] = 10_000
    """Distinct tables (and operation x table pairs) with stats of their own; more share ``_overflow``."""
    hot_keys: Annotated[int, Field(ge=0)] = 100
    """Partition keys kept per table in the hot-key sketch (``/dynamodb/hot_keys``); 0 turns it off."""


class DynamoMatchConfig(_Model):
    """Which requests a fault applies to; an unset field matches everything."""

    operations: list[str] | None = None
    tables: list[str] | None = None

    @model_validator(mode="after")
    def _known_operations(self) -> DynamoMatchConfig:
        if self.operations:
            from meshproxy.codecs.dynamo import operation_names

            known = set(operation_names("dynamodb")) | set(operation_names("dynamodbstreams"))
            for index, name in enumerate(self.operations):
                if name not in known:
                    close = difflib.get_close_matches(name, sorted(known), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise _LocatedError(
                        [(("operations", index), f"{name!r} is not a DynamoDB operation in botocore's model{hint}")]
                    )
        return self


class DynamoAbortConfig(_Model):
    error_type: str = "ThrottlingException"
    """Any DynamoDB error ``__type``; the HTTP status follows from it (400 for throttling, 500 for
    ``InternalServerError``)."""
    message: str = "Rate of requests exceeds the allowed throughput (injected by meshproxy)"
    percentage: float = Field(100.0, ge=0, le=100)


class DynamoFaultFilterConfig(_Model):
    type: Literal["fault"] = "fault"
    delay: FixedDelay | None = None
    abort: DynamoAbortConfig | None = None
    match: DynamoMatchConfig = DynamoMatchConfig()

    @model_validator(mode="after")
    def _needs_a_fault(self) -> DynamoFaultFilterConfig:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault filter needs 'delay', 'abort' or both")
        return self


DynamoFilterConfig = Annotated[
    DynamoStatsFilterConfig | DynamoFaultFilterConfig | AccessLogFilterConfig,
    Field(discriminator="type"),
]


def _default_dynamo_filters() -> list[DynamoFilterConfig]:
    return [DynamoStatsFilterConfig()]


GRPC_STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
"""gRPC status names in code order (``UNAVAILABLE`` is 14)."""


def parse_grpc_status(value: Any) -> int:
    """A gRPC status by code (``14``) or name (``UNAVAILABLE``, any case)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a gRPC status")
    if isinstance(value, int) and 0 <= value < len(GRPC_STATUS_NAMES):
        return value
    if isinstance(value, str) and value.upper() in GRPC_STATUS_NAMES:
        return GRPC_STATUS_NAMES.index(value.upper())
    raise ValueError(f"{value!r} is not a gRPC status: a code 0-16 or a name such as UNAVAILABLE")


GrpcStatusCode = Annotated[int, BeforeValidator(parse_grpc_status)]


class GrpcStatsFilterConfig(_Model):
    type: Literal["stats"] = "stats"
    max_methods: Annotated[int, Field(ge=1)] = 1000
    """Distinct service/method pairs with stats of their own; beyond it they share ``_overflow``."""


class GrpcMatchConfig(_Model):
    """Which calls a fault applies to; an unset field matches everything."""

    services: list[str] | None = None
    """``package.Service`` names."""
    methods: list[str] | None = None
    """``package.Service/Method`` (one method of one service) or a bare ``Method`` (that name in any service)."""


class GrpcAbortConfig(_Model):
    status: GrpcStatusCode = 14
    message: str = "fault injected by meshproxy"
    percentage: float = Field(100.0, ge=0, le=100)


class GrpcFaultFilterConfig(_Model):
    type: Literal["fault"] = "fault"
    delay: FixedDelay | None = None
    abort: GrpcAbortConfig | None = None
    match: GrpcMatchConfig = GrpcMatchConfig()

    @model_validator(mode="after")
    def _needs_a_fault(self) -> GrpcFaultFilterConfig:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault filter needs 'delay', 'abort' or both")
        return self


GrpcFilterConfig = Annotated[
    GrpcStatsFilterConfig | GrpcFaultFilterConfig | AccessLogFilterConfig,
    Field(discriminator="type"),
]


def _default_grpc_filters() -> list[GrpcFilterConfig]:
    return [GrpcStatsFilterConfig()]


# -- listeners, clusters, admin -------------------------------------------------------------------------


def _readable_file(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a file path, got {_kind(value)}")
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{value!r}: no such file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{value!r}: cannot read: {exc.strerror or exc}") from None
    return value


ReadableFile = Annotated[str, BeforeValidator(_readable_file)]


class SniCertificateConfig(_Model):
    """A certificate a listener presents to clients that ask for one of ``server_names`` (SNI)."""

    server_names: Annotated[list[str], Field(min_length=1)]
    """Exact names (``orders.example.com``) or ``*.`` wildcards (``*.example.com``); matched case-insensitively,
    exact names first, then the longest wildcard."""
    cert_file: ReadableFile
    key_file: ReadableFile


class TlsServerConfig(_Model):
    """TLS termination on a listener: the proxy presents ``cert_file`` to its clients (or, by the name they ask
    for, one of ``certificates``)."""

    cert_file: ReadableFile
    """PEM certificate chain (leaf first)."""
    key_file: ReadableFile
    client_ca_file: ReadableFile | None = None
    """Verify client certificates against these CAs (mutual TLS); a client without a valid one is refused."""
    alpn: list[str] | None = None
    """ALPN protocols offered; default by listener protocol: ``grpc`` h2, ``dynamo`` http/1.1, ``auto`` both,
    none for ``mongo`` and ``tcp``."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    reload_interval: Duration = 1.0
    """How often the certificate, key and CA files are checked for changes; changed files are loaded for
    new connections (open ones keep theirs). ``0`` turns the check off."""
    certificates: list[SniCertificateConfig] = []
    """More certificates, chosen by the server name a client asks for (SNI); ``cert_file`` / ``key_file``
    answer every other name, and clients that send none."""


class TlsClientConfig(_Model):
    """TLS origination towards a cluster's hosts."""

    sni: str | None = None
    """Server name sent and verified; default: the host part of each host's address."""
    ca_file: ReadableFile | None = None
    """CAs that sign the servers' certificates; default: the system's."""
    verify: bool = True
    """Verify the server certificate and its name (turning it off is for tests only)."""
    cert_file: ReadableFile | None = None
    """Client certificate for mutual TLS (with ``key_file``)."""
    key_file: ReadableFile | None = None
    alpn: list[str] | None = None
    """ALPN protocols offered; gRPC clusters always offer h2."""
    min_version: Literal["1.2", "1.3"] = "1.2"

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsClientConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("'cert_file' and 'key_file' go together (mutual TLS needs both)")
        return self


class ListenerTapConfig(_Model):
    """Record the listener from startup, as ``POST /tap/start`` would (``meshproxy.capture.tap``)."""

    path: str | None = None
    """The pcapng file: absolute, or relative to ``admin.tap_directory``; default ``<listener>-<time>-<pid>``."""
    max_bytes: Annotated[ByteSize, Field(ge=1024)] = 100 * 1024 * 1024
    duration: Annotated[Duration, Field(gt=0)] = 300.0
    redact: bool = False


class _ListenerBase(_Model):
    name: str
    address: Address
    cluster: str
    tls: TlsServerConfig | None = None
    """Terminate TLS on this listener."""
    tap: ListenerTapConfig | None = None
    """Record this listener's connections to pcapng from startup, until ``max_bytes`` or ``duration``."""
    stat_prefix: str | None = None
    """Stats scope (``mongo.<stat_prefix>.*``, ``dynamodb.<stat_prefix>.*``); defaults to the listener's name."""
    on_decode_error: Literal["close", "passthrough"] = "close"
    """``close`` the one connection that sent bad bytes, or ``passthrough``: stop decoding it and
    forward its remaining bytes untouched."""
    idle_timeout: Duration = 3600.0
    """Close a connection with no traffic either way for this long; 0 disables."""
    reuse_port: bool = False
    sni_clusters: dict[str, str] | None = None
    """The cluster a TLS connection goes to by the server name (SNI) its client asked for (``db.example.com``,
    ``*.example.com``, ``*`` for any name or none): on a listener with ``tls``, after termination; on an
    ``auto`` listener without it, passed through still encrypted. Unmatched names go to the listener's
    cluster for that protocol."""

    @property
    def prefix(self) -> str:
        return self.stat_prefix or self.name


class MongoRetryConfig(_Model):
    """Send an operation again, on another host, when its host went away before answering. Off by default:
    drivers already retry reads and retryable writes once. Only what a driver would retry is retried here:
    reads (``find``, ``aggregate`` without ``$out``/``$merge``, ``count``, ``distinct``, ``list*``) and
    writes the driver marked retryable (a ``txnNumber`` outside a transaction); never another write, never
    an operation of a transaction or cursor (its state was on the lost host)."""

    max_retries: Annotated[int, Field(ge=1, le=5)] = 1
    budget_percent: float = Field(20.0, ge=0, le=100)
    """Retries in flight at most this share of the cluster's requests in flight ..."""
    min_retry_concurrency: Annotated[int, Field(ge=0)] = 3
    """... or this many, whichever is more (and never more than the cluster's ``max_retries`` breaker)."""
    backoff: Duration = 0.025
    """Base of the exponential back-off with full jitter (25 ms, as Envoy's)."""


class ListenerConfig(_ListenerBase):
    """A MongoDB listener (``protocol: mongo``), or a plain (``tcp``) or sniffing (``auto``) one."""

    protocol: Literal["mongo", "tcp", "auto"] = "mongo"
    """``auto`` sniffs the first bytes of each connection; bytes no codec claims are passed through."""
    filters: list[MongoFilterConfig] = Field(default_factory=_default_mongo_filters)
    max_message_size: Annotated[ByteSize, Field(ge=16)] = DEFAULT_MAX_MESSAGE_SIZE
    """At least 16 bytes (one message header): the decoder cannot frame anything smaller."""
    protocol_clusters: dict[Literal["mongo", "dynamo", "grpc", "tcp"], str] | None = None
    """``auto`` listeners: the cluster each sniffed protocol goes to (others go to ``cluster``), so one port
    can front a MongoDB server, a DynamoDB endpoint and a gRPC service at once."""
    balance: Literal["operation", "connection"] = "operation"
    """``operation``: each command is sent to a host the cluster picks (cursors, transactions and
    authenticated connections keep their host; docs/clusters.md#mongodb); ``connection``: a client
    connection's commands all go to the host picked when it connected."""
    hash_key: Literal["collection", "database"] = "collection"
    """What ``ring_hash`` and ``maglev`` clusters hash for a command: its ``db.collection`` or its database."""
    retry: MongoRetryConfig | None = None
    """Retries by the proxy when a host is lost mid-operation (``balance: operation`` only); none by default."""


DEFAULT_MAX_HEADER_SIZE = 64 * 1024
"""Largest HTTP head accepted (64 KiB, as AWS's load balancers allow): a larger one is answered 431."""
DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024
"""Largest HTTP body accepted (16 MiB, DynamoDB's own request limit for BatchWriteItem): larger is 413."""


class AwsSigningConfig(_Model):
    """Re-sign each request with SigV4 for the upstream host it goes to (Envoy's ``aws_request_signing``):
    the client's signature is replaced, so the application may use dummy credentials. Credentials come from
    botocore: its default chain (environment, shared files, SSO, ``credential_process``, container and
    instance metadata), a ``profile`` of the shared files, or ``static`` keys written here (the environment
    or a credentials file is the better place for a secret than this file)."""

    region: Annotated[str, Field(min_length=1, pattern=r"^[a-z0-9-]+$")]
    """The endpoint's region, e.g. ``eu-west-1`` (part of the signature's scope)."""
    credentials: Literal["default-chain", "profile", "static"] = "default-chain"
    profile: str | None = None
    """With ``credentials: profile``: the profile's name in ``~/.aws/config`` / ``~/.aws/credentials``."""
    access_key_id: str | None = None
    """With ``credentials: static`` (with ``secret_access_key``, optionally ``session_token``)."""
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    host: str | None = None
    """The ``Host`` to send and sign for, e.g. ``dynamodb.eu-west-1.amazonaws.com``; default: the cluster's
    TLS ``sni`` when set, else the host's address (``host:port``, the scheme's default port left out)."""
    service: str = "dynamodb"
    """The signing name: ``dynamodb`` (DynamoDB Streams signs as ``dynamodb`` too)."""

    @model_validator(mode="after")
    def _credentials_complete(self) -> AwsSigningConfig:
        problems: list[tuple[Location, str]] = []
        if self.credentials == "profile" and not self.profile:
            problems.append((("profile",), "required with credentials: profile"))
        if self.credentials != "profile" and self.profile is not None:
            problems.append((("profile",), f"only with credentials: profile (this block has {self.credentials})"))
        static = {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}
        for name, value in static.items():
            if self.credentials == "static" and not value:
                problems.append(((name,), "required with credentials: static"))
        for name in ("access_key_id", "secret_access_key", "session_token"):
            if self.credentials != "static" and getattr(self, name) is not None:
                problems.append(((name,), f"only with credentials: static (this block has {self.credentials})"))
        if problems:
            raise _LocatedError(problems)
        return self


class DynamoListenerConfig(_ListenerBase):
    """A DynamoDB listener: HTTP/1.1 requests carrying DynamoDB's JSON protocol."""

    protocol: Literal["dynamo"]
    filters: list[DynamoFilterConfig] = Field(default_factory=_default_dynamo_filters)
    max_header_size: Annotated[ByteSize, Field(ge=16)] = DEFAULT_MAX_HEADER_SIZE
    max_body_size: ByteSize = DEFAULT_MAX_BODY_SIZE
    invalid_requests: Literal["forward", "reject"] = "forward"
    """A well-framed request with no usable ``X-Amz-Target`` or a body that is not JSON: ``forward`` it
    (DynamoDB answers it; stats count it) or ``reject`` it here with DynamoDB's own error
    (``UnknownOperationException`` / ``SerializationException``, status 400)."""
    upstream_timeout: Duration = 60.0
    """Longest wait for an upstream response; past it the client gets a 504 and the upstream connection is
    closed (Envoy's route timeout is 15 s; DynamoDB's SDKs wait 60 s by default). 0 disables."""
    partition_keys: dict[str, str] = {}
    """Table name -> its partition key attribute, so ``ring_hash`` and ``maglev`` clusters hash a request's
    table and partition key value; tables not listed hash by table name alone."""
    aws: AwsSigningConfig | None = None
    """Re-sign requests with SigV4 for the upstream host (``docs/dynamo.md``); off by default: the client's
    signature is forwarded as it is."""


class GrpcRetryConfig(_Model):
    """Retry calls that failed before anything reached the client, within a budget."""

    on: Annotated[list[GrpcStatusCode], Field(min_length=1)] = [14]
    """Statuses that start another attempt (by code or name); a status in trailers counts as much as one in
    a trailers-only response (Envoy retries only the latter)."""
    max_retries: Annotated[int, Field(ge=1, le=10)] = 2
    budget_percent: float = Field(20.0, ge=0, le=100)
    """Retries in flight at most this share of the calls in progress ..."""
    min_retry_concurrency: Annotated[int, Field(ge=0)] = 3
    """... or this many, whichever is more."""
    max_request_bytes: ByteSize = 64 * 1024
    """Request bytes kept to send again; a call whose request is larger is not retried."""
    backoff: Duration = 0.025
    """Base of the exponential back-off with full jitter (25 ms, as Envoy's)."""


class GrpcListenerConfig(_ListenerBase):
    """A gRPC listener: HTTP/2 with prior knowledge (h2c), calls carried on a pool of upstream connections."""

    protocol: Literal["grpc"]
    filters: list[GrpcFilterConfig] = Field(default_factory=_default_grpc_filters)
    max_concurrent_streams: Annotated[int, Field(ge=1)] = 100
    """Streams one client connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS; more are refused)."""
    max_header_list_size: Annotated[ByteSize, Field(ge=1024)] = 64 * 1024
    """Largest decoded header list a client may send (SETTINGS_MAX_HEADER_LIST_SIZE); more ends the
    connection."""
    max_resets_per_second: Annotated[int, Field(ge=1)] = 200
    """Streams a client may reset per second before the connection gets GOAWAY (rapid reset)."""
    max_pings_per_second: Annotated[int, Field(ge=1)] = 100
    max_settings_per_second: Annotated[int, Field(ge=1)] = 100
    retry: GrpcRetryConfig | None = None
    """Retries for calls that fail before any response message reached the client; none by default."""
    grpc_timeout_offset: Duration = 0.01
    """The proxy ends a call this much before its ``grpc-timeout`` (Envoy's ``grpc_timeout_header_offset``),
    so its DEADLINE_EXCEEDED, with the upstream stream cancelled, reaches the client before the client's own
    timer fires."""
    hash_key_header: str | None = None
    """Request metadata whose value ``ring_hash`` and ``maglev`` clusters hash for a call (e.g. ``x-user-id``);
    without it, or when a call lacks it, the call's ``:path`` is hashed."""


LISTENER_PROTOCOLS = ("mongo", "dynamo", "grpc", "tcp", "auto")


def _listener_kind(value: Any) -> str:
    protocol = value.get("protocol") if isinstance(value, dict) else getattr(value, "protocol", None)
    return protocol if protocol in ("dynamo", "grpc") else "mongo"


AnyListenerConfig = Annotated[
    Annotated[ListenerConfig, Tag("mongo")]
    | Annotated[DynamoListenerConfig, Tag("dynamo")]
    | Annotated[GrpcListenerConfig, Tag("grpc")],
    Discriminator(_listener_kind),
]
"""A listener of any protocol; ``protocol`` decides which model (and so which filters) applies."""


class ClusterHealthCheckConfig(_Model):
    """Active health checking of every host of a cluster (``meshproxy.cluster.health``; Envoy's knobs)."""

    type: Literal["tcp", "http", "grpc", "mongo", "dynamodb"]
    """``tcp`` connects (and optionally sends ``send`` and expects ``expect``); ``http`` GETs ``path``;
    ``grpc`` calls ``grpc.health.v1.Health/Check`` for ``service``; ``mongo`` runs ``hello``; ``dynamodb``
    sends an unsigned ``ListTables``."""
    interval: Duration = 5.0
    timeout: Duration = 1.0
    jitter: Duration = 0.0
    unhealthy_threshold: Annotated[int, Field(ge=1)] = 3
    healthy_threshold: Annotated[int, Field(ge=1)] = 2
    unhealthy_interval: Duration | None = None
    path: str = "/"
    expected_statuses: list[int] = [200]
    service: str = ""
    send: str = ""
    expect: str = ""
    event_log_path: str | None = None


class OutlierDetectionConfig(_Model):
    """Passive ejection of hosts whose requests fail (``meshproxy.cluster.outlier``); Envoy's knobs and
    defaults (docs/clusters.md#outlier-detection)."""

    consecutive_5xx: Annotated[int, Field(ge=1)] = 5
    consecutive_gateway_failure: Annotated[int, Field(ge=1)] = 5
    consecutive_local_origin_failure: Annotated[int, Field(ge=1)] = 5
    interval: Duration = 10.0
    base_ejection_time: Duration = 30.0
    max_ejection_time: Duration = 300.0
    max_ejection_percent: Annotated[int, Field(ge=0, le=100)] = 10
    split_external_local_origin_errors: bool = False
    enforcing_consecutive_5xx: Annotated[int, Field(ge=0, le=100)] = 100
    enforcing_consecutive_gateway_failure: Annotated[int, Field(ge=0, le=100)] = 0
    enforcing_consecutive_local_origin_failure: Annotated[int, Field(ge=0, le=100)] = 100
    enforcing_success_rate: Annotated[int, Field(ge=0, le=100)] = 100
    success_rate_minimum_hosts: Annotated[int, Field(ge=1)] = 5
    success_rate_request_volume: Annotated[int, Field(ge=1)] = 100
    success_rate_stdev_factor: float = Field(1.9, gt=0)
    enforcing_failure_percentage: Annotated[int, Field(ge=0, le=100)] = 0
    failure_percentage_threshold: Annotated[int, Field(ge=0, le=100)] = 85
    failure_percentage_minimum_hosts: Annotated[int, Field(ge=1)] = 5
    failure_percentage_request_volume: Annotated[int, Field(ge=1)] = 50


class CircuitBreakersConfig(_Model):
    """Bounds on what one cluster may have in flight (Envoy's defaults); beyond them requests are answered by
    the proxy with the protocol's own overload error and counted, instead of queueing without limit."""

    max_connections: Annotated[int, Field(ge=0)] = 1024
    """Upstream connections open at once (``cluster.<name>.upstream_cx_overflow``)."""
    max_pending_requests: Annotated[int, Field(ge=0)] = 1024
    """Requests waiting for a connection (gRPC: for a pooled stream) (``upstream_rq_pending_overflow``)."""
    max_requests: Annotated[int, Field(ge=0)] = 1024
    """Requests in flight to the cluster (``upstream_rq_overflow``)."""
    max_retries: Annotated[int, Field(ge=0)] = 3
    """Retries in flight at once (``upstream_rq_retry_overflow``)."""


class DnsDiscoveryConfig(_Model):
    """Hosts from a DNS name, re-resolved every ``refresh_interval`` (Envoy's ``STRICT_DNS``): every A/AAAA
    record becomes a host on ``port``; a failed lookup keeps the hosts of the last good one."""

    name: str = Field(min_length=1)
    """The name to resolve, e.g. ``db.internal``."""
    port: Annotated[int, Field(ge=1, le=65535)]
    refresh_interval: Annotated[Duration, Field(gt=0)] = 5.0
    lookup_family: Literal["all", "v4_only", "v6_only"] = "all"
    """Which records become hosts: both A and AAAA (``all``), A only, or AAAA only."""


class HostsFileConfig(_Model):
    """Hosts from a YAML or JSON file (a list of ``"host:port"`` or ``{address, weight}`` entries), read
    again whenever it changes; a broken file keeps the last good hosts. A plain string is the ``path``."""

    path: str = Field(min_length=1)
    """Relative paths are relative to the proxy's working directory."""
    refresh_interval: Annotated[Duration, Field(gt=0)] = 1.0
    """How often the file is polled (its size, modification time and, when in doubt, its content)."""


def _path_mapping(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


HOST_SOURCES = ("hosts", "dns", "hosts_file")
"""Where a cluster's hosts come from; a cluster names exactly one."""


class ClusterConfig(_Model):
    name: str
    hosts: list[Address] = Field(default_factory=list)
    """Static hosts. Exactly one of ``hosts``, ``dns`` and ``hosts_file`` gives a cluster its hosts."""
    dns: DnsDiscoveryConfig | None = None
    """Hosts from DNS, re-resolved on an interval (docs/clusters.md#host-discovery)."""
    hosts_file: Annotated[HostsFileConfig | None, BeforeValidator(_path_mapping)] = None
    """Hosts from a file watched for changes (docs/clusters.md#host-discovery)."""
    connect_timeout: Duration = 5.0
    tls: TlsClientConfig | None = None
    """Connect to the hosts over TLS."""
    lb_policy: Literal["round_robin", "least_request", "random", "ring_hash", "maglev"] = "round_robin"
    """How a host is picked for each request: a Mongo operation, a DynamoDB request, a gRPC call (a ``tcp``
    listener's connection) (``meshproxy.lb``; see docs/clusters.md)."""
    panic_threshold: float = Field(50.0, ge=0, le=100)
    """Below this share of healthy hosts (percent), balance over all hosts, as Envoy does."""
    health_check: ClusterHealthCheckConfig | None = None
    """Check every host actively; unhealthy hosts get no new connections (until the panic threshold)."""
    outlier_detection: OutlierDetectionConfig | None = None
    """Eject hosts whose requests fail; ``{}`` turns it on with Envoy's defaults."""
    circuit_breakers: CircuitBreakersConfig = CircuitBreakersConfig()

    @model_validator(mode="after")
    def _one_source_of_hosts(self) -> ClusterConfig:
        """Exactly one source of hosts, so that it is never a question which one wins at runtime."""
        present = {
            "hosts": bool(self.hosts) or "hosts" in self.model_fields_set,
            "dns": self.dns is not None,
            "hosts_file": self.hosts_file is not None,
        }
        given = [source for source in HOST_SOURCES if present[source]]
        if not given:
            raise _LocatedError([(("hosts",), "required: give the cluster hosts, dns or hosts_file")])
        if len(given) > 1:
            raise _LocatedError(
                [((given[1],), f"give only one of hosts, dns and hosts_file (this cluster has {' and '.join(given)})")]
            )
        if given == ["hosts"] and not self.hosts:
            raise _LocatedError([(("hosts",), "expected at least 1 item(s), got none")])
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminConfig(_Model):
    address: Address = ("127.0.0.1", 9901)
    tls: TlsServerConfig | None = None
    """Serve the admin over HTTPS; with ``client_ca_file``, only clients with a certificate it signed."""
    token_file: ReadableFile | None = None
    """A file holding a bearer token: every request but ``/ready`` must send ``Authorization: Bearer <token>``."""
    tap_directory: str | None = None
    """Where ``POST /tap/start`` writes its captures (default: ``meshproxy-taps`` in the system's temporary
    directory); a path outside it is refused, so the admin cannot be used to write files elsewhere."""

    @model_validator(mode="after")
    def _secured_off_loopback(self) -> AdminConfig:
        host = self.address[0]
        if _is_loopback(host):
            return self
        if self.tls is None:
            raise _LocatedError(
                [(("tls",), f"the admin is bound to {host}, not a loopback address: it needs 'tls' and a "
                            "'token_file' (or 'tls.client_ca_file' for mutual TLS)")]
            )
        if self.token_file is None and self.tls.client_ca_file is None:
            raise _LocatedError(
                [(("token_file",), f"the admin is bound to {host}, not a loopback address: it needs a "
                                   "'token_file' (or 'tls.client_ca_file' for mutual TLS)")]
            )
        return self


class MeshConfig(_Model):
    admin: AdminConfig | None = AdminConfig()
    listeners: list[AnyListenerConfig] = Field(min_length=1)
    clusters: list[ClusterConfig] = Field(min_length=1)
    drain_timeout: Duration = 10.0
    """On SIGTERM/SIGINT: stop accepting, let in-flight operations finish for this long, then close."""

    @model_validator(mode="after")
    def _references_resolve(self) -> MeshConfig:
        problems = _reference_problems([(x.name, x.cluster) for x in self.listeners], [c.name for c in self.clusters])
        names = {c.name for c in self.clusters}
        for index, listener in enumerate(self.listeners):
            for field_name in ("protocol_clusters", "sni_clusters"):
                for kind, name in (getattr(listener, field_name, None) or {}).items():
                    if name not in names:
                        problems.append(
                            (
                                ("listeners", index, field_name, kind),
                                f"unknown cluster {name!r} (defined clusters: {', '.join(sorted(names))})",
                            )
                        )
        if problems:
            raise _LocatedError(problems)
        return self

    def cluster(self, name: str) -> ClusterConfig:
        return next(c for c in self.clusters if c.name == name)


# -- loading --------------------------------------------------------------------------------------------


class ConfigError(Exception):
    """A configuration that cannot be used; the message names file, path and field."""


Location = tuple[str | int, ...]


class _LocatedError(ValueError):
    """Raised by cross-field validators so that each problem keeps its own path (pydantic would
    otherwise report all of them at the level of the model that checked them)."""

    def __init__(self, problems: list[tuple[Location, str]]) -> None:
        super().__init__("; ".join(f"{_format_location(loc)}: {text}" for loc, text in problems))
        self.problems = problems


def _format_location(location: Location) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _bare(annotation: Any) -> Any:
    """The type under ``Annotated[...]`` and ``X | None``; a union of several models stays a union."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _tagged_members(annotation: Any) -> dict[str, type[BaseModel]]:
    """``{"fault": FaultFilterConfig, ...}`` for a union of models tagged by their ``type`` field, or
    ``{"dynamo": DynamoListenerConfig, ...}`` for one whose members carry an explicit ``Tag``."""
    if get_origin(annotation) not in (Union, UnionType):
        return {}
    members: dict[str, type[BaseModel]] = {}
    for member in get_args(annotation):
        if get_origin(member) is Annotated:
            model, *metadata = get_args(member)
            for tag in metadata:
                if isinstance(tag, Tag):
                    members[tag.tag] = model
        elif isinstance(member, type) and issubclass(member, BaseModel) and "type" in member.model_fields:
            members[str(member.model_fields["type"].default)] = member
    return members


def _resolve(location: Location) -> tuple[Location, type[BaseModel] | None, Any]:
    """Follow a pydantic error location through the model.

    Returns the location as the user wrote it (without the union tag pydantic inserts after a filter's
    index, e.g. ``filters[0].fault.delay`` is ``filters[0].delay`` in the file), the model that owns the
    last field, and the annotation found at the end (``None`` when the path leaves the model).
    """
    annotation: Any = MeshConfig
    owner: type[BaseModel] | None = None
    clean: list[str | int] = []
    for part in location:
        annotation = _bare(annotation)
        members = _tagged_members(annotation)
        if members and isinstance(part, str) and part in members:
            annotation = members[part]
            continue
        clean.append(part)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            owner = annotation
            field = annotation.model_fields.get(str(part))
            annotation = None if field is None else field.annotation
        elif get_origin(annotation) is list and isinstance(part, int):
            annotation = get_args(annotation)[0]
        else:
            annotation = None
    return tuple(clean), owner, _bare(annotation)


def _kind(value: Any) -> str:
    """How a YAML user would name the type of ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, int):
        return f"a number ({value})"
    if isinstance(value, float):
        return f"a number ({value:g})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    return type(value).__name__


def _describe_error(error: Any) -> list[tuple[Location, str]]:
    """One pydantic error as (location in the file, message) pairs, in words a YAML author uses."""
    location, owner, annotation = _resolve(tuple(error["loc"]))
    kind = error["type"]
    ctx = error.get("ctx") or {}
    given = error.get("input")
    if kind == "value_error" and isinstance(ctx.get("error"), _LocatedError):
        return [(location + loc, text) for loc, text in ctx["error"].problems]
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return [(location, str(ctx["error"]))]
    if kind == "extra_forbidden":
        name = str(location[-1]) if location else "?"
        known = list(owner.model_fields) if owner is not None else []
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return [(location, f"unknown field {name!r} (known fields: {', '.join(known)}){hint}")]
    if kind == "missing":
        return [(location, f"required field {location[-1]!r} is missing" if location else "required")]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        members = _tagged_members(annotation)
        types = ", ".join(members) or str(ctx.get("expected_tags", "")).replace("'", "")
        what = "filter type" if "filters" in location else "type"
        if kind == "union_tag_invalid":
            return [((*location, "type"), f"unknown {what} {ctx.get('tag')!r} (known types: {types})")]
        if not isinstance(given, dict):
            return [(location, f"expected a mapping with a 'type' field, got {_kind(given)}")]
        return [((*location, "type"), f"required field 'type' is missing (one of: {types})")]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return [(location, f"expected a mapping, got {_kind(given)}")]
    if kind in ("list_type", "tuple_type"):
        return [(location, f"expected a list, got {_kind(given)}")]
    expected = _EXPECTED.get(kind)
    if kind == "literal_error" and location[:1] == ("listeners",) and location[2:] == ("protocol",):
        # Each protocol has its own listener model, so pydantic lists only the protocols of the one it tried.
        *first, last = (repr(p) for p in LISTENER_PROTOCOLS)
        expected = f"one of {', '.join(first)} or {last}"
    if expected is None and kind == "literal_error":
        expected = f"one of {ctx.get('expected')}"
    if expected is None and kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        limit = ctx.get(key)
        expected = f"{words} {limit:g}" if isinstance(limit, float) else f"{words} {limit}"
    if expected is None and kind == "too_short":
        expected = f"at least {ctx.get('min_length')} item(s)"
    if kind == "invalid_key":
        return [((*location[:-1], str(location[-1])), f"a field name must be a string, got {_kind(given)}")]
    if expected is not None:
        message = f"expected {expected}, got {_kind(given) if given or given == 0 else 'none'}"
    else:  # e.g. "Input should be less than or equal to 100"
        message = str(error["msg"]).replace("Input should be", "should be")
        if not isinstance(given, dict | list):
            message += f", got {_kind(given)}"
    return [(location, message)]


_EXPECTED = {
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "string_type": "a string",
}
"""What a YAML author should write, for the pydantic error types whose wording is about Python."""

_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "less_than_equal": ("le", "at most"),
    "greater_than": ("gt", "more than"),
    "less_than": ("lt", "less than"),
}
"""Numeric bound errors: the pydantic error type, the key of its limit in ``ctx``, and how to say it."""


def _reference_problems(listeners: list[tuple[Any, Any]], clusters: list[Any]) -> list[tuple[Location, str]]:
    """Unknown cluster references and duplicate names, each at its own path.

    Takes plain ``(name, cluster)`` pairs rather than models so that :func:`_validate` can run the same
    checks on the raw mapping when other fields fail: a file with a typo in a duration *and* a dangling
    cluster reference then gets both reported at once, not one per attempt. Values that are not strings
    are skipped (they already have a type error of their own).
    """
    problems: list[tuple[Location, str]] = []
    names = [name for name in clusters if isinstance(name, str)]
    if len(names) == len(clusters):  # with an unnamed cluster, any reference might have been meant for it
        for index, (_, cluster) in enumerate(listeners):
            if isinstance(cluster, str) and cluster not in names:
                problems.append(
                    (
                        ("listeners", index, "cluster"),
                        f"unknown cluster {cluster!r} (defined clusters: {', '.join(names)})",
                    )
                )
    for kind, items in (("listeners", [name for name, _ in listeners]), ("clusters", clusters)):
        first: dict[str, int] = {}
        for index, name in enumerate(items):
            if not isinstance(name, str):
                continue
            if name in first:
                problems.append(
                    (
                        (kind, index, "name"),
                        f"duplicate {kind[:-1]} name {name!r} (already used by {kind}[{first[name]}])",
                    )
                )
            else:
                first[name] = index
    return problems


def _raw_reference_problems(data: Any) -> list[tuple[Location, str]]:
    """:func:`_reference_problems` on a mapping that did not validate (best effort, never raises)."""
    if not isinstance(data, dict):
        return []
    listeners, clusters = data.get("listeners"), data.get("clusters")
    if not isinstance(listeners, list) or not isinstance(clusters, list) or not clusters:
        return []
    pairs = [(x.get("name"), x.get("cluster")) if isinstance(x, dict) else (None, None) for x in listeners]
    return _reference_problems(pairs, [c.get("name") if isinstance(c, dict) else None for c in clusters])


def _validate(data: Any, source: str, marks: dict[Location, tuple[int, int]] | None) -> MeshConfig:
    try:
        return MeshConfig.model_validate(data)
    except ValidationError as exc:
        problems = [problem for error in exc.errors() for problem in _describe_error(error)]
        # The cross-field checks run only once every field is valid; run them on the raw data too so
        # that one attempt reports everything. A problem already reported at a path is not repeated.
        reported = {location for location, _ in problems}
        problems += [p for p in _raw_reference_problems(data) if p[0] not in reported]
        lines: list[tuple[tuple[int, int], str]] = []
        for location, message in problems:
            where, position = source, (0, 0)
            if marks:
                # The nearest enclosing node that exists in the file (a missing field has no line).
                for end in range(len(location), -1, -1):
                    if location[:end] in marks:
                        position = marks[location[:end]]
                        where = f"{source}:{position[0]}:{position[1]}"
                        break
            lines.append((position, f"{where}: {_format_location(location)}: {message}"))
        # In file order, as an editor would walk them (stable: without a file, pydantic's order stays).
        lines.sort(key=lambda item: item[0])
        raise ConfigError("\n".join(text for _, text in lines)) from None


def config_from_dict(data: Any, *, source: str = "<config>") -> MeshConfig:
    """Validate a parsed mapping; errors name ``source`` and each failing path."""
    return _validate(data, source, None)


def _node_marks(
    node: yaml.Node, source: str, location: Location = (), marks: dict[Location, tuple[int, int]] | None = None
) -> dict[Location, tuple[int, int]]:
    """``{path: (line, column)}`` of every key and item in the file, 1-based, for error messages.

    Also refuses a key given twice in one mapping: YAML loaders silently keep the last one, which turns
    a copy-and-paste slip into a configuration nobody wrote.
    """
    marks = {} if marks is None else marks
    marks.setdefault(location, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{source}:{line}:{key_node.start_mark.column + 1}: "
                    f"{_format_location((*location, key))}: duplicate key {key!r} (first given on line "
                    f"{seen[key]})"
                )
            seen[key] = line
            marks[(*location, key)] = (line, key_node.start_mark.column + 1)
            _node_marks(value_node, source, (*location, key), marks)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _node_marks(item, source, (*location, index), marks)
    return marks


def load_config(path: str | Path) -> MeshConfig:
    """Read and validate a YAML file.

    Every error is a ``ConfigError`` whose lines read ``FILE:LINE:COLUMN: PATH: MESSAGE`` (``PATH`` as in
    ``listeners[0].filters[1].delay.duration``), so an editor can jump to it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (not UTF-8 at byte {exc.start})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
            raise ConfigError(f"{path}: the file is empty; expected a mapping with 'listeners' and 'clusters'")
        marks = _node_marks(node, str(path))
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise ConfigError(f"{path}{where}: not valid YAML: {detail}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}:1:1: (top level): expected a mapping with 'listeners' and 'clusters', got {_kind(data)}"
        )
    return _validate(data, str(path), marks)


Upstream = tuple[str, int] | list[tuple[str, int]]
"""One upstream address, or several (one cluster of those hosts)."""


def sidecar_config(
    protocol: Literal["mongo", "dynamo", "grpc"],
    *,
    listen: tuple[str, int],
    upstream: Upstream,
    admin: tuple[str, int] | None = ("127.0.0.1", 9901),
    stat_prefix: str | None = None,
    filters: list[Any] | None = None,
    lb_policy: str | None = None,
    upstream_tls: dict[str, Any] | None = None,
    **listener_options: Any,
) -> MeshConfig:
    """What ``meshproxy sidecar <protocol>`` runs: one listener in front of one cluster named ``upstream``.

    ``filters`` takes models or plain mappings (``{"type": "fault", "abort": {...}}``), as in a file;
    ``stat_prefix`` defaults to ``mongo``, ``dynamodb`` or ``grpc``; ``lb_policy`` picks the balancer when
    there are several upstream hosts.
    """
    prefix = stat_prefix or {"mongo": "mongo", "dynamo": "dynamodb", "grpc": "grpc"}[protocol]
    listener: dict[str, Any] = {
        "name": prefix,
        "address": listen,
        "protocol": protocol,
        "cluster": "upstream",
        "stat_prefix": prefix,
        **listener_options,
    }
    if filters is not None:
        listener["filters"] = [f.model_dump() if isinstance(f, BaseModel) else f for f in filters]
    hosts = upstream if isinstance(upstream, list) else [upstream]
    cluster: dict[str, Any] = {"name": "upstream", "hosts": hosts}
    if lb_policy is not None:
        cluster["lb_policy"] = lb_policy
    if upstream_tls is not None:
        cluster["tls"] = upstream_tls
    if len(hosts) > 1:
        # In front of several hosts the sidecar is a traffic manager: the protocol's own health check and
        # outlier detection are on, with Envoy's defaults (with one host there is nowhere else to go).
        cluster["health_check"] = {"type": {"mongo": "mongo", "dynamo": "dynamodb", "grpc": "grpc"}[protocol]}
        cluster["outlier_detection"] = {}
    return config_from_dict(
        {
            "admin": None if admin is None else {"address": admin},
            "listeners": [listener],
            "clusters": [cluster],
        },
        source="<sidecar>",
    )


def mongo_sidecar_config(*, stat_prefix: str = "mongo", **options: Any) -> MeshConfig:
    """The configuration ``meshproxy sidecar mongo`` runs (see ``sidecar_config``)."""
    return sidecar_config("mongo", stat_prefix=stat_prefix, **options)


def dynamo_sidecar_config(*, stat_prefix: str = "dynamodb", **options: Any) -> MeshConfig:
    """The configuration ``meshproxy sidecar dynamo`` runs (see ``sidecar_config``)."""
    return sidecar_config("dynamo", stat_prefix=stat_prefix, **options)


def grpc_sidecar_config(*, stat_prefix: str = "grpc", **options: Any) -> MeshConfig:
    """The configuration ``meshproxy sidecar grpc`` runs (see ``sidecar_config``)."""
    return sidecar_config("grpc", stat_prefix=stat_prefix, **options)
