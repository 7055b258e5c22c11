"""TLS contexts for listeners (termination) and clusters (origination), from their configuration.

The standard library's ``ssl`` does the work; asyncio hands sessions decrypted bytes, so every protocol
session (and ``protocol: auto`` sniffing) works the same over TLS. What is chosen here: TLS 1.2 at least,
certificate and host-name verification on by default towards upstreams, and ALPN by protocol — ``h2`` for
gRPC, ``http/1.1`` for DynamoDB, both for ``auto`` — so that a gRPC client that requires ``h2`` by ALPN
(grpcio does) gets it.
"""

from __future__ import annotations

import ssl

from meshproxy.config import ConfigError, MeshConfig, TlsClientConfig, TlsServerConfig

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

DEFAULT_ALPN = {"grpc": ["h2"], "dynamo": ["http/1.1"], "auto": ["h2", "http/1.1"]}
"""ALPN a listener offers when its ``tls.alpn`` is not set, by listener protocol."""


def server_context(config: TlsServerConfig, *, protocol: str, where: str) -> ssl.SSLContext:
    """The context a listener terminates TLS with; ``where`` names the config path for errors."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.min_version]
    try:
        context.load_cert_chain(config.cert_file, config.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{where}.cert_file/key_file: cannot load {config.cert_file} with {config.key_file}: {exc}"
        ) from None
    if config.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=config.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{where}.client_ca_file: cannot load {config.client_ca_file}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    alpn = config.alpn if config.alpn is not None else DEFAULT_ALPN.get(protocol)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def client_context(config: TlsClientConfig, *, alpn: list[str] | None, where: str) -> ssl.SSLContext:
    """The context a cluster originates TLS with; ``alpn`` is the protocol's (``["h2"]`` for gRPC)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = _VERSIONS[config.min_version]
    try:
        if config.ca_file is not None:
            context.load_verify_locations(cafile=config.ca_file)
        if config.cert_file is not None and config.key_file is not None:
            context.load_cert_chain(config.cert_file, config.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{where}: cannot load its certificates: {exc}") from None
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    offered = config.alpn if config.alpn is not None else alpn
    if offered:
        context.set_alpn_protocols(offered)
    return context


def check_tls(config: MeshConfig) -> None:
    """Load every certificate and key the configuration names, so that ``check`` and a start-up report a bad
    file as a configuration error (naming the field) rather than fail later."""
    for listener in config.listeners:
        if listener.tls is not None:
            server_context(listener.tls, protocol=listener.protocol, where=f"listeners[{listener.name}].tls")
    for cluster in config.clusters:
        if cluster.tls is not None:
            client_context(cluster.tls, alpn=None, where=f"clusters[{cluster.name}].tls")
