"""The ``meshproxy`` command.

    meshproxy sidecar mongo --listen HOST:PORT --upstream HOST:PORT [--admin HOST:PORT|off] [...]
    meshproxy sidecar dynamo --listen HOST:PORT --upstream HOST:PORT [--admin HOST:PORT|off] [...]
    meshproxy sidecar grpc --listen HOST:PORT --upstream HOST:PORT [--admin HOST:PORT|off] [...]
    meshproxy run -c FILE.yaml
    meshproxy check -c FILE.yaml

Configuration errors are printed with the file, path and field they concern, and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from meshproxy import __version__
from meshproxy.config import (
    AccessLogFilterConfig,
    ConfigError,
    DynamoStatsFilterConfig,
    GrpcStatsFilterConfig,
    MeshConfig,
    StatsFilterConfig,
    TopologyRewriteFilterConfig,
    load_config,
    parse_address,
    parse_duration,
    parse_size,
    sidecar_config,
)
from meshproxy.transport.tls import check_tls

log = logging.getLogger("meshproxy")

EXIT_CONFIG = 2
"""A configuration or usage error: a bad file, a bad flag, or flags that contradict each other."""
EXIT_START = 1
"""The configuration is valid but the proxy could not start (e.g. an address is already in use)."""


def _typed(parse: Any, what: str) -> Any:
    """An argparse type from a config parser, so flags and YAML accept exactly the same spellings."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = what
    return convert


_address = _typed(parse_address, "address")


def _parse_message_size(value: str) -> int:
    size = parse_size(value)
    if size < 16:
        raise ValueError(f"{value!r}: a message size must be at least 16 bytes (one message header)")
    return size


def _admin_address(text: str) -> tuple[str, int] | None:
    return None if text == "off" else _address(text)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshproxy",
        description="An L7 proxy and sidecar for MongoDB traffic with per-operation stats and control.",
        epilog=(
            "exit status: 0 after a clean shutdown (SIGTERM/SIGINT) or a valid 'check'; 1 when the proxy "
            "cannot start (e.g. an address in use); 2 for a configuration or usage error."
        ),
    )
    parser.add_argument("--version", action="version", version=f"meshproxy {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="least severe log messages written to stderr (default info)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sidecar = commands.add_parser(
        "sidecar", help="run a sidecar for one protocol in front of one upstream",
        description="Run a sidecar for one protocol in front of one upstream server.",
    )
    protocols = sidecar.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    mongo = protocols.add_parser(
        "mongo",
        help="MongoDB: per-operation stats, hello rewriting, optional access log",
        description=(
            "Proxy MongoDB clients to one upstream server, counting every operation per database, "
            "collection and command. Stats are served on the admin endpoint (/stats, /stats/prometheus)."
        ),
    )
    _add_common_sidecar_arguments(mongo, server="the MongoDB server", default_prefix="mongo")
    mongo.add_argument(
        "--topology", choices=["rewrite", "standalone", "off"], default="rewrite",
        help="hello/isMaster rewriting so drivers stay on the sidecar (default rewrite)",
    )
    mongo.add_argument(
        "--max-message-size", type=_typed(_parse_message_size, "size"), metavar="SIZE",
        help="largest message accepted, e.g. 48MB (default: MongoDB's 48000000 bytes)",
    )

    dynamo = protocols.add_parser(
        "dynamo",
        help="DynamoDB: per-operation and per-table stats, consumed capacity, hot keys, optional access log",
        description=(
            "Proxy DynamoDB clients (HTTP/1.1) to one endpoint, counting every request per operation, table "
            "and error type. Stats are served on the admin endpoint (/stats, /stats/prometheus, "
            "/dynamodb/hot_keys)."
        ),
    )
    _add_common_sidecar_arguments(dynamo, server="the DynamoDB endpoint (plain HTTP)", default_prefix="dynamodb")
    dynamo.add_argument(
        "--invalid-requests", choices=["forward", "reject"], default="forward",
        help="requests with no usable X-Amz-Target or a non-JSON body: forward them (default) or answer "
        "DynamoDB's own 400 error here",
    )
    dynamo.add_argument(
        "--upstream-timeout", type=_typed(parse_duration, "duration"), metavar="DURATION",
        help="answer 504 when the upstream has not responded in this long (default 60s; 0 disables)",
    )
    dynamo.add_argument(
        "--max-body-size", type=_typed(parse_size, "size"), metavar="SIZE",
        help="largest request or response body accepted, e.g. 16MiB (the default); larger requests get a 413",
    )
    dynamo.add_argument(
        "--aws-region", metavar="REGION",
        help="re-sign every request with SigV4 for this region and the upstream host (clients may then use "
        "dummy credentials); off by default",
    )
    dynamo.add_argument(
        "--aws-credentials", default="default-chain", metavar="default-chain|profile:NAME",
        help="with --aws-region: botocore's default credential chain (environment, shared files, SSO, "
        "instance or container role; the default) or a named profile",
    )
    dynamo.add_argument(
        "--aws-host", metavar="HOST",
        help="with --aws-region: the Host to send and sign for (default: the upstream's address)",
    )

    grpc = protocols.add_parser(
        "grpc",
        help="gRPC: per-method stats, deadlines, HTTP/2 abuse limits, optional access log",
        description=(
            "Proxy gRPC clients (HTTP/2 with prior knowledge) to one server, counting every call per service, "
            "method and status. Stats are served on the admin endpoint (/stats, /stats/prometheus)."
        ),
    )
    _add_common_sidecar_arguments(grpc, server="the gRPC server (h2c)", default_prefix="grpc", decode_policy=False)
    grpc.add_argument(
        "--max-concurrent-streams", type=int, metavar="N",
        help="streams one client connection may have open (default 100); more are refused",
    )

    decode = commands.add_parser(
        "decode", help="list the operations of a pcap/pcapng capture (MongoDB, DynamoDB, gRPC)",
        description="List every MongoDB command, DynamoDB request and gRPC call in a pcap or pcapng capture, "
        "with its answer, sizes and latency; damage and gaps go to stderr.",
    )  # fmt: skip
    decode.add_argument("file", metavar="FILE", help="a pcap or pcapng file (tcpdump, tshark, dumpcap)")
    decode.add_argument("--json", action="store_true", help="one JSON object per operation (or the summary)")
    decode.add_argument("--summary", action="store_true", help="per-operation totals instead of one line each")
    decode.add_argument(
        "--server-port", type=int, action="append", default=[], metavar="PORT",
        help="a server's port, to tell client from server in connections the capture caught mid-way (repeatable)",
    )  # fmt: skip

    replay = commands.add_parser(
        "replay", help="replay a capture's operations against a target and report what answered differently",
        description="Replay the MongoDB, DynamoDB and gRPC operations of a pcap/pcapng capture against a "
        "target, on the recorded schedule (scaled by --speed) or at --rate, and compare every answer with the "
        "recorded one. Exit status 0: no differences; 3: differences; 1: the capture could not be used.",
    )  # fmt: skip
    replay.add_argument("file", metavar="FILE", help="a pcap or pcapng file")
    replay.add_argument("--target", required=True, type=_address, metavar="HOST:PORT", help="where to send them")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, metavar="X", help="recorded timing divided by X (default 1)")
    pace.add_argument("--rate", type=float, metavar="N", help="N operations a second, ignoring recorded times")
    replay.add_argument("--connections", type=int, metavar="N", help="replay connections (default: as recorded)")
    replay.add_argument("--protocol", action="append", choices=["mongodb", "dynamodb", "grpc", "http"],
                        help="only this protocol (repeatable)")  # fmt: skip
    replay.add_argument("--operation", action="append", metavar="NAME", help="only this operation (repeatable)")
    replay.add_argument(
        "--namespace", action="append", metavar="NS", help="only this db[.collection] / table / service"
    )
    replay.add_argument("--writes", action="store_true", help="replay writes too (they are skipped by default)")
    replay.add_argument(
        "--compare-bodies", action="store_true", help="compare reply documents, not only status and counts"
    )
    replay.add_argument("--ignore-field", action="append", default=[], metavar="FIELD",
                        help="a field left out of body comparisons (repeatable)")  # fmt: skip
    replay.add_argument("--aws-region", default="us-east-1", help="region DynamoDB requests are signed for")
    replay.add_argument("--report", metavar="OUT.html", help="also write an HTML report with latency distributions")

    for name, text in (
        ("run", "run the proxy described by a YAML file"),
        ("check", "validate a YAML file and print a one-line summary; start nothing"),
    ):
        command = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        command.add_argument("-c", "--config", required=True, metavar="FILE.yaml", help="configuration file")
    return parser


def _add_common_sidecar_arguments(
    command: argparse.ArgumentParser, *, server: str, default_prefix: str, decode_policy: bool = True
) -> None:
    """The flags every ``sidecar`` protocol takes, spelled and defaulted the same way."""
    command.add_argument("--listen", required=True, type=_address, metavar="HOST:PORT", help="where clients connect")
    command.add_argument(
        "--upstream", required=True, type=_address, action="append", metavar="HOST:PORT",
        help=f"{server} to forward to; give it several times for a cluster of hosts",
    )
    command.add_argument(
        "--lb", choices=["round_robin", "least_request", "random", "ring_hash", "maglev"], default="round_robin",
        help="how a host of several --upstream is picked for each operation, request or call (default round_robin)",
    )
    command.add_argument(
        "--admin", type=_admin_address, default=("127.0.0.1", 9901), metavar="HOST:PORT|off",
        help="admin endpoint address (default 127.0.0.1:9901); 'off' disables it",
    )
    command.add_argument(
        "--stat-prefix", default=default_prefix, metavar="NAME",
        help=f"stats scope {default_prefix.split('.')[0]}.NAME.* (default {default_prefix})",
    )
    command.add_argument(
        "--access-log", metavar="PATH|stdout|stderr", help="write one JSON line per operation to this file or stream"
    )
    if decode_policy:
        command.add_argument(
            "--on-decode-error", choices=["close", "passthrough"], default="close",
            help="what to do with a connection that sends undecodable bytes (default close)",
        )
    command.add_argument(
        "--idle-timeout", type=_typed(parse_duration, "duration"), metavar="DURATION",
        help="close connections idle this long, e.g. 1h (default 1h; 0 disables)",
    )
    command.add_argument(
        "--drain-timeout", type=_typed(parse_duration, "duration"), metavar="DURATION",
        help="on SIGTERM/SIGINT, how long in-flight operations may finish (default 10s)",
    )
    command.add_argument("--no-filters", action="store_true", help="decode and forward only: no L7 filters at all")
    tls = command.add_argument_group("TLS (docs/tls.md)")
    tls.add_argument("--tls-cert", metavar="FILE", help="terminate TLS for clients with this certificate chain (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="... and this private key (with --tls-cert)")
    tls.add_argument("--tls-client-ca", metavar="FILE", help="require client certificates signed by these CAs (mTLS)")
    tls.add_argument(
        "--upstream-tls", action="store_true",
        help="connect to the upstream over TLS, verifying it by the system CAs and certifi (implied by the "
        "--upstream-ca/-sni/-cert options)",
    )  # fmt: skip
    tls.add_argument("--upstream-ca", metavar="FILE", help="verify the upstream by these CAs instead")
    tls.add_argument("--upstream-sni", metavar="NAME", help="the name to send and verify (default: the host part)")
    tls.add_argument("--upstream-cert", metavar="FILE", help="present this client certificate upstream (mTLS)")
    tls.add_argument("--upstream-key", metavar="FILE", help="... with this key (with --upstream-cert)")


def _sidecar_config(args: argparse.Namespace) -> MeshConfig:
    if args.listen in args.upstream:
        raise ConfigError("--listen and --upstream are the same address: the sidecar would connect to itself")
    if args.admin is not None and args.admin == args.listen and args.listen[1] != 0:
        raise ConfigError("--listen and --admin are the same address: each needs its own port")
    options: dict[str, Any] = {}
    if args.protocol != "grpc":
        options["on_decode_error"] = args.on_decode_error
    if args.idle_timeout is not None:
        options["idle_timeout"] = args.idle_timeout
    access_log = [AccessLogFilterConfig(path=args.access_log)] if args.access_log else []
    filters: list[Any]
    if args.protocol == "grpc":
        if args.max_concurrent_streams is not None:
            options["max_concurrent_streams"] = args.max_concurrent_streams
        filters = [GrpcStatsFilterConfig(), *access_log]
    elif args.protocol == "dynamo":
        options["invalid_requests"] = args.invalid_requests
        if args.upstream_timeout is not None:
            options["upstream_timeout"] = args.upstream_timeout
        if args.max_body_size is not None:
            options["max_body_size"] = args.max_body_size
        aws = _aws_signing(args)
        if aws is not None:
            options["aws"] = aws
        filters = [DynamoStatsFilterConfig(), *access_log]
    else:
        if args.max_message_size is not None:
            options["max_message_size"] = args.max_message_size
        filters = [StatsFilterConfig(), *access_log, TopologyRewriteFilterConfig(mode=args.topology)]
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together (the certificate and its private key)")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key (client certificates are checked under TLS)")
    if args.tls_cert is not None:
        options["tls"] = {"cert_file": args.tls_cert, "key_file": args.tls_key, "client_ca_file": args.tls_client_ca}
    upstream_tls: dict[str, Any] | None = None
    if args.upstream_tls or any((args.upstream_ca, args.upstream_sni, args.upstream_cert, args.upstream_key)):
        upstream_tls = {
            "ca_file": args.upstream_ca, "sni": args.upstream_sni,
            "cert_file": args.upstream_cert, "key_file": args.upstream_key,
        }  # fmt: skip
    config = sidecar_config(
        args.protocol,
        listen=args.listen,
        upstream=args.upstream,
        admin=args.admin,
        stat_prefix=args.stat_prefix,
        filters=[] if args.no_filters else filters,
        lb_policy=args.lb,
        upstream_tls=upstream_tls,
        **options,
    )
    if args.drain_timeout is not None:
        config = config.model_copy(update={"drain_timeout": args.drain_timeout})
    return config


def _aws_signing(args: argparse.Namespace) -> dict[str, Any] | None:
    """The listener's ``aws`` block from ``--aws-*`` (static keys have no flag: a command line is visible to
    every user of the machine; the environment, read by the default chain, is the place for them)."""
    if args.aws_region is None:
        if args.aws_host is not None or args.aws_credentials != "default-chain":
            raise ConfigError("--aws-credentials and --aws-host need --aws-region (re-signing is off without it)")
        return None
    aws: dict[str, Any] = {"region": args.aws_region}
    source = args.aws_credentials
    if source.startswith("profile:") and source[len("profile:"):]:
        aws.update(credentials="profile", profile=source[len("profile:"):])
    elif source != "default-chain":
        raise ConfigError(f"--aws-credentials: {source!r}: expected default-chain or profile:NAME")
    if args.aws_host is not None:
        aws["host"] = args.aws_host
    return aws


def _describe(config: MeshConfig) -> str:
    listeners = ", ".join(f"{x.name} ({x.protocol}) on {x.address[0]}:{x.address[1]}" for x in config.listeners)
    admin = f"{config.admin.address[0]}:{config.admin.address[1]}" if config.admin else "off"
    return f"{len(config.listeners)} listener(s): {listeners}; {len(config.clusters)} cluster(s); admin {admin}"


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.command == "decode":
        from meshproxy.replay.decode import run_decode

        return run_decode(args.file, as_json=args.json, summary=args.summary, server_ports=args.server_port)
    if args.command == "replay":
        from meshproxy.replay.command import run_replay
        from meshproxy.replay.replayer import ReplayOptions

        options = ReplayOptions(
            target=args.target, speed=args.speed, rate=args.rate, connections=args.connections,
            protocols=frozenset(args.protocol) if args.protocol else None,
            operations=frozenset(args.operation) if args.operation else None,
            namespaces=frozenset(args.namespace) if args.namespace else None,
            writes=args.writes, compare_bodies=args.compare_bodies, ignore_fields=frozenset(args.ignore_field),
            aws_region=args.aws_region,
        )  # fmt: skip
        return run_replay(args.file, options, report_path=args.report)
    try:
        config = _sidecar_config(args) if args.command == "sidecar" else load_config(args.config)
    except ConfigError as exc:
        print(f"meshproxy: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        check_tls(config)
    except ConfigError as exc:
        print(f"meshproxy: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(f"{args.config}: OK: {_describe(config)}")
        return 0
    from meshproxy.proxy import run

    try:
        return run(config)
    except OSError as exc:  # e.g. the listen address is taken
        return _cannot_start(exc, config)
    except BaseExceptionGroup as group:  # the same, raised inside a task group
        matched, _ = group.split(OSError)
        if matched is None:
            raise
        return _cannot_start(_first_leaf(matched), config)


def _first_leaf(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def _cannot_start(exc: BaseException, config: MeshConfig) -> int:
    """One line instead of a traceback: the OS's reason, and every address this process tried to bind
    (the admin endpoint's error does not name its address)."""
    binds = [f"listener {x.name} on {x.address[0]}:{x.address[1]}" for x in config.listeners]
    if config.admin is not None:
        binds.append(f"admin on {config.admin.address[0]}:{config.admin.address[1]}")
    print(f"meshproxy: cannot start: {exc}\n  (binding {'; '.join(binds)})", file=sys.stderr)
    return EXIT_START


if __name__ == "__main__":
    raise SystemExit(main())
