"""TLS contexts for listeners (termination) and clusters (origination), from their configuration.

The standard library's ``ssl`` does the work; asyncio hands sessions decrypted bytes, so every protocol
session (and ``protocol: auto`` sniffing) works the same over TLS. What is chosen here: TLS 1.2 at least,
certificate and host-name verification on by default towards upstreams, and ALPN by protocol — ``h2`` for
gRPC, ``http/1.1`` for DynamoDB, both for ``auto`` — so that a gRPC client that requires ``h2`` by ALPN
(grpcio does) gets it.

Termination (``ServerTls``) does two things asyncio's ``create_server(ssl=...)`` cannot:

- **It knows how each handshake ended.** asyncio (and uvloop) fail a server-side handshake silently: the
  ``SSLError`` goes to a debug log and the session is never told. So a TLS listener accepts plain TCP and
  runs ``loop.start_tls`` on each connection itself; a failure raises right there, and is counted
  (``ssl.handshake_error`` and why: ``fail_verify_no_cert``, ``fail_verify_error``, ``connection_error``)
  and logged with the peer's address and OpenSSL's reason. Once the handshake is done the session gets the
  TLS transport, and the data path is the same ``SSLProtocol`` as before.
- **It rotates certificates.** ``watch`` polls the certificate, key and CA files (inode, size, mtime, ctime)
  every ``reload_interval``; on a change it builds a new context and each handshake from then on uses it,
  while connections already open keep theirs. A pair that does not load (a certificate written before its
  key, mid-rotation) is refused, counted (``ssl.context_update_error``) and logged naming the files; the
  previous context stays in use until the files change again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import anyio
import certifi

from meshproxy.codecs.tls_hello import match_server_name
from meshproxy.config import ConfigError, MeshConfig, TlsClientConfig, TlsServerConfig
from meshproxy.stats import Counter, StatsStore

if TYPE_CHECKING:
    from meshproxy.cluster import Cluster

log = logging.getLogger("meshproxy.tls")

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

DEFAULT_ALPN = {"grpc": ["h2"], "dynamo": ["http/1.1"], "auto": ["h2", "http/1.1"]}
"""ALPN a listener offers when its ``tls.alpn`` is not set, by listener protocol."""

HANDSHAKE_TIMEOUT = 10.0
"""A client that has not completed its TLS handshake this long after connecting is disconnected."""


class _ListenerContext(ssl.SSLContext):
    """A listener's context; ``handshakes`` lists the TCP transports of the handshakes started with it
    whose ``SSLObject`` is not made yet, in order."""

    handshakes: collections.deque[asyncio.BaseTransport]


class _AlertingSSLObject(ssl.SSLObject):
    """An ``SSLObject`` that sends the TLS alert of a failed server handshake before the connection closes.

    asyncio's and uvloop's SSL protocols close the connection as soon as ``do_handshake`` raises, without
    sending what OpenSSL wrote for the client: so a client refused for its certificate saw the connection
    closed instead of ``certificate required`` or ``unknown ca``. This class keeps the outgoing buffer and
    the TCP transport it was made for, and writes the alert itself.

    Which transport: ``start_tls`` makes the ``SSLObject`` in a callback it schedules (``connection_made``),
    and callbacks run in the order they were scheduled, so the objects a context makes come in the order
    its handshakes started (``_Handshake`` appends to ``handshakes``; nothing else starts a handshake with a
    listener's context)."""

    _alert_outgoing: ssl.MemoryBIO | None = None
    _alert_transport: asyncio.BaseTransport | None = None

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any, **kwargs: Any) -> Any:
        self = super()._create(incoming, outgoing, *args, **kwargs)  # type: ignore[misc]
        context = kwargs.get("context")
        if isinstance(context, _ListenerContext) and kwargs.get("server_side") and context.handshakes:
            self._alert_outgoing = outgoing
            self._alert_transport = context.handshakes.popleft()
        return self

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError:
            transport, outgoing = self._alert_transport, self._alert_outgoing
            if transport is not None and outgoing is not None and outgoing.pending and not transport.is_closing():
                cast(asyncio.WriteTransport, transport).write(outgoing.read())
            raise


def server_context(config: TlsServerConfig, *, protocol: str, where: str) -> ssl.SSLContext:
    """The context a listener terminates TLS with; ``where`` names the config path for errors.

    With ``certificates``, each is loaded into a context of its own, and the listener's context picks one per
    handshake from the client's server name (``sni_callback`` switching the connection's context, which
    OpenSSL allows until it sends its certificate)."""
    context = _terminating_context(config, config.cert_file, config.key_file, protocol=protocol, where=where)
    by_name: dict[str, ssl.SSLContext] = {}
    for index, entry in enumerate(config.certificates):
        chosen = _terminating_context(
            config, entry.cert_file, entry.key_file, protocol=protocol, where=f"{where}.certificates[{index}]"
        )
        for name in entry.server_names:
            by_name.setdefault(name.lower().rstrip("."), chosen)

    def server_name_seen(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        # Kept on the connection: a server-side SSLObject does not say which name its client asked for, and
        # sessions route by it (``sni_clusters``).
        name = server_name.lower().rstrip(".") if server_name else None
        ssl_object.sni = name  # type: ignore[attr-defined]
        chosen = match_server_name(name, by_name) if by_name else None
        if chosen is not None:
            ssl_object.context = chosen

    context.sni_callback = server_name_seen
    return context


def requested_server_name(transport: asyncio.BaseTransport) -> str | None:
    """The server name (SNI) the client of a TLS-terminated connection asked for, if any."""
    ssl_object = transport.get_extra_info("ssl_object")
    return getattr(ssl_object, "sni", None) if ssl_object is not None else None


def _terminating_context(
    config: TlsServerConfig, cert_file: str, key_file: str, *, protocol: str, where: str
) -> ssl.SSLContext:
    context = _ListenerContext(ssl.PROTOCOL_TLS_SERVER)
    context.handshakes = collections.deque()
    context.sslobject_class = _AlertingSSLObject
    context.minimum_version = _VERSIONS[config.min_version]
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{where}.cert_file/key_file: cannot load {cert_file} with {key_file}: {exc}") from None
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


MAX_REMEMBERED_SESSIONS = 1024


class _ResumingContext(ssl.SSLContext):
    """A client context that offers each server name the TLS session of its last connection (resumption:
    an abbreviated handshake, no certificate chain sent or verified again), as Envoy's upstream TLS does.

    asyncio (and uvloop) make every client ``SSLObject`` through ``wrap_bio``, which is where a session can be
    handed in. The last connection's ``SSLObject`` is kept rather than its session at connect time, because a
    TLS 1.3 server sends its session tickets after the handshake: read at the next connect, the session has
    them. A server that declines simply gets a full handshake."""

    last: dict[str, ssl.SSLObject]

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and not server_side and isinstance(server_hostname, str):
            previous = self.last.get(server_hostname)
            if previous is not None:
                session = previous.session
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def remember(self, server_hostname: str, ssl_object: ssl.SSLObject) -> None:
        last = self.last
        last.pop(server_hostname, None)
        last[server_hostname] = ssl_object
        if len(last) > MAX_REMEMBERED_SESSIONS:
            del last[next(iter(last))]


def tls_connected(cluster: Cluster, transport: asyncio.BaseTransport, server_hostname: str | None) -> None:
    """A connection to one of ``cluster``'s hosts is up: count its handshake (``cluster.<name>.ssl.handshake``,
    ``session_reused``) and keep its session for the next connection to that name."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return
    stats = upstream_tls_stats(cluster)
    stats.ssl.handshake.value += 1
    if ssl_object.session_reused:
        stats.session_reused.value += 1
    context = ssl_object.context
    if isinstance(context, _ResumingContext) and server_hostname is not None:
        context.remember(server_hostname, ssl_object)


def client_context(config: TlsClientConfig, *, alpn: list[str] | None, where: str) -> ssl.SSLContext:
    """The context a cluster originates TLS with; ``alpn`` is the protocol's (``["h2"]`` for gRPC).

    Without a ``ca_file`` the hosts are verified against the system's CAs and certifi's bundle (Mozilla's
    roots, as botocore and requests ship them), so a slim container without a CA store still verifies a
    managed database's certificate."""
    context = _ResumingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and names by default
    context.last = {}
    context.minimum_version = _VERSIONS[config.min_version]
    try:
        if config.ca_file is not None:
            context.load_verify_locations(cafile=config.ca_file)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            context.load_verify_locations(cafile=certifi.where())
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
    if config.admin is not None and config.admin.tls is not None:
        server_context(config.admin.tls, protocol="admin", where="admin.tls")
    for listener in config.listeners:
        if listener.tls is not None:
            server_context(listener.tls, protocol=listener.protocol, where=f"listeners[{listener.name}].tls")
    for cluster in config.clusters:
        if cluster.tls is not None:
            client_context(cluster.tls, alpn=None, where=f"clusters[{cluster.name}].tls")


# -- stats ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SslStats:
    """Envoy's ``ssl.*`` stats for one listener (``listener.<name>.ssl.*``), the admin (``http.admin.ssl.*``)
    or one cluster (``cluster.<name>.ssl.*``).

    ``handshake_error`` counts every failed handshake; each one is also counted under exactly one reason:
    ``fail_verify_no_cert`` + ``fail_verify_error`` + ``connection_error`` = ``handshake_error``."""

    handshake: Counter
    """Handshakes completed."""
    handshake_error: Counter
    """Handshakes that failed, whatever the reason."""
    fail_verify_no_cert: Counter
    """The peer sent no certificate where one is required (a listener with ``client_ca_file``)."""
    fail_verify_error: Counter
    """The peer's certificate did not verify: unknown CA, expired, wrong name (upstream)."""
    connection_error: Counter
    """Any other failed handshake: the peer refused ours (its alert is logged), spoke something that is not
    TLS, no shared version or cipher, a reset, or no handshake within the time allowed."""
    context_update: Counter
    """Certificate files changed and the new context is in use (Envoy's ``context_update_by_sds``)."""
    context_update_error: Counter
    """Certificate files changed but did not load; the previous context stays in use."""

    @classmethod
    def create(cls, stats: StatsStore, scope: str, kind: str, labels: dict[str, str]) -> SslStats:
        """``<scope>.ssl.<stat>``, exported as ``meshproxy_<kind>_ssl_<stat>{labels}``."""
        return cls(
            *(
                stats.counter(f"{scope}.ssl.{name}", prom=f"meshproxy_{kind}_ssl_{name}", labels=labels)
                for name in cls.__dataclass_fields__
            )
        )

    @classmethod
    def for_listener(cls, stats: StatsStore, name: str) -> SslStats:
        return cls.create(stats, f"listener.{name}", "listener", {"listener": name})

    @classmethod
    def for_cluster(cls, stats: StatsStore, name: str) -> SslStats:
        return cls.create(stats, f"cluster.{name}", "cluster", {"cluster": name})

    def failed(self, exc: BaseException) -> str:
        """Count one failed handshake; return the reason's stat name."""
        reason = failure_reason(exc)
        self.handshake_error.value += 1
        counter: Counter = getattr(self, reason)
        counter.value += 1
        return reason


def failure_reason(exc: BaseException) -> str:
    """Which ``ssl.*`` stat a failed handshake counts under: ``fail_verify_no_cert``, ``fail_verify_error``
    or ``connection_error``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "fail_verify_error"
    if isinstance(exc, ssl.SSLError) and exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "fail_verify_no_cert"
    return "connection_error"


def describe(exc: BaseException) -> str:
    """OpenSSL's words for a failed handshake (``certificate verify failed: certificate has expired``,
    ``tlsv1 alert unknown ca``, ...), or the exception's."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(slots=True)
class UpstreamTlsStats:
    """A cluster's ``ssl.*`` stats: the ones listeners keep too, and resumed sessions."""

    ssl: SslStats
    session_reused: Counter
    """Handshakes towards a host that resumed the previous session (no certificate exchange)."""


def upstream_tls_stats(cluster: Cluster) -> UpstreamTlsStats:
    """The cluster's ``cluster.<name>.ssl.*`` stats, registered once (at its first TLS handshake or failure)."""
    stats: UpstreamTlsStats | None = cluster.tls_stats
    if stats is None:
        labels = {"cluster": cluster.name}
        stats = cluster.tls_stats = UpstreamTlsStats(
            SslStats.for_cluster(cluster.store, cluster.name),
            cluster.store.counter(
                f"cluster.{cluster.name}.ssl.session_reused", prom="meshproxy_cluster_ssl_session_reused", labels=labels
            ),
        )
    return stats


def count_upstream_failure(cluster: Cluster, exc: BaseException) -> None:
    """Count and log a failed TLS handshake towards one of ``cluster``'s hosts (``cluster.<name>.ssl.*``).
    Anything that is not an ``ssl.SSLError`` (a refused or timed-out connect) is not a TLS failure and is
    left alone."""
    if not isinstance(exc, ssl.SSLError):
        return
    reason = upstream_tls_stats(cluster).ssl.failed(exc)
    log.warning("cluster %s: TLS handshake failed (%s): %s", cluster.name, reason, describe(exc))


# -- termination ----------------------------------------------------------------------------------------


_Signature = tuple[tuple[int, int, int, int] | None, ...]


class ServerTls:
    """TLS termination for one listener (or the admin): the current context, the handshakes under way, and
    the watch that replaces the context when its files change."""

    def __init__(
        self, config: TlsServerConfig, *, protocol: str, where: str, stats: SslStats, label: str | None = None
    ) -> None:
        self.config = config
        self.label = label or where
        """Who terminates, for handshake logs (``listener edge``, ``admin``)."""
        self.protocol = protocol
        self.where = where
        """The configuration path (``listeners[edge].tls``), for logs and errors."""
        self.stats = stats
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self._seen = self._signature()
        self.context = server_context(config, protocol=protocol, where=where)
        """Used by every handshake that starts from now on; replaced by ``check`` when the files change."""
        self._failed: _Signature | None = None
        self.pending: set[_Handshake] = set()
        self.closed = False

    def current(self) -> ssl.SSLContext:
        """The context for a handshake starting now."""
        return self.context

    @property
    def files(self) -> list[str]:
        files = [self.config.cert_file, self.config.key_file]
        if self.config.client_ca_file is not None:
            files.append(self.config.client_ca_file)
        for entry in self.config.certificates:
            files += [entry.cert_file, entry.key_file]
        return files

    def _signature(self) -> _Signature:
        signature: list[tuple[int, int, int, int] | None] = []
        for path in self.files:
            try:
                st = os.stat(path)
            except OSError:
                signature.append(None)
            else:
                signature.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(signature)

    def check(self) -> bool:
        """One poll: when a file changed since the context was built, build a new one and use it from the
        next handshake on. Returns whether the context was replaced. A set of files that does not load is
        counted and logged once, and tried again when a file changes again."""
        signature = self._signature()
        if signature == self._seen or signature == self._failed:
            return False
        try:
            context = server_context(self.config, protocol=self.protocol, where=self.where)
        except ConfigError as exc:
            self._failed = signature
            self.stats.context_update_error.value += 1
            log.warning("%s: the changed certificate files do not load, keeping the previous ones: %s", self.where, exc)
            return False
        self.context = context
        self._seen = signature
        self._failed = None
        self.stats.context_update.value += 1
        log.info("%s: certificate reloaded from %s", self.where, ", ".join(self.files))
        return True

    async def watch(self) -> None:
        """Poll the files every ``reload_interval`` until cancelled (not at all when it is 0)."""
        interval = self.config.reload_interval
        if interval <= 0:
            return
        while True:
            await anyio.sleep(interval)
            try:
                self.check()
            except Exception:  # never let a surprise end the proxy's task group
                log.exception("%s: checking the certificate files failed", self.where)

    def acceptor(self, session: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for the listening socket: each connection does its handshake, then becomes a
        ``session()`` on the TLS transport."""
        return lambda: _Handshake(self, session)

    def close(self) -> None:
        """Stop: abort handshakes under way (they carry no request yet) and refuse new ones."""
        self.closed = True
        for handshake in list(self.pending):
            handshake.abort()

    def handshake_ended(self, exc: BaseException | None, peer: Any) -> None:
        """Count a handshake done elsewhere (the admin's): a success when ``exc`` is ``None``."""
        if exc is None:
            self.stats.handshake.value += 1
        else:
            self.handshake_failed(exc, peer)

    def handshake_failed(self, exc: BaseException, peer: Any) -> None:
        """Count a failed handshake under its reason and log it with the client's address."""
        reason = self.stats.failed(exc)
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "a client"
        quiet = reason == "connection_error" and not isinstance(exc, ssl.SSLError)
        # A client that connects and leaves (a TCP health check, a port scan) is not worth a warning.
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "%s: TLS handshake with %s failed (%s): %s", self.label, where, reason, describe(exc),
        )


def _forget(context: ssl.SSLContext, transport: asyncio.BaseTransport) -> None:
    """Drop a handshake that failed before start_tls made its ``SSLObject`` (only a connection aborted in the
    same loop iteration as its start, i.e. a drain), so that the next ``SSLObject`` does not take it."""
    if isinstance(context, _ListenerContext):
        with contextlib.suppress(ValueError):
            context.handshakes.remove(transport)


class _Handshake(asyncio.Protocol):
    """One accepted connection until its handshake is done.

    First it is the TCP connection's protocol. uvloop starts reading right after ``connection_made`` (a
    ``pause_reading`` there is ignored), so the ClientHello can arrive before ``start_tls`` has installed its
    SSL protocol: those bytes are kept, reading is paused, and they are handed to the SSL protocol before its
    ``connection_made`` (an SSL protocol that has not started keeps what it is given for the handshake).
    Then it is the TLS transport's first protocol, and keeps what arrives before the session is attached (a
    client may send its first request together with the end of its handshake)."""

    def __init__(self, tls: ServerTls, session: Callable[[], asyncio.Protocol]) -> None:
        self.tls = tls
        self.make_session = session
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.started = False
        self.session: asyncio.Protocol | None = None
        self.buffer = bytearray()
        self.early = bytearray()
        """Encrypted bytes that arrived before ``start_tls`` took the connection over."""
        self.eof = False
        self.lost = False
        self.lost_exc: Exception | None = None

    # The raw TCP connection.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.tls.closed:
            self.transport.abort()
            return
        self.transport.pause_reading()  # the ClientHello is for the SSL protocol start_tls installs
        self.tls.pending.add(self)
        self.task = asyncio.get_running_loop().create_task(self._handshake())

    async def _handshake(self) -> None:
        tls = self.tls
        transport = self.transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        self.started = True
        loop = asyncio.get_running_loop()
        if self.early:
            # Runs before the connection_made that start_tls schedules below, and reading stays paused.
            loop.call_soon(self._feed_early, bytes(self.early))
            self.early.clear()
        context = tls.context
        if isinstance(context, _ListenerContext):
            context.handshakes.append(transport)  # for _AlertingSSLObject, made by start_tls's connection_made
        try:
            app = await loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=tls.handshake_timeout
            )
        except asyncio.CancelledError:
            tls.pending.discard(self)
            _forget(context, transport)
            raise
        except Exception as exc:
            tls.pending.discard(self)
            _forget(context, transport)
            tls.handshake_failed(exc, peer)
            transport.abort()
            return
        tls.pending.discard(self)
        if app is None or tls.closed:
            if app is not None:
                app.abort()
            return
        tls.stats.handshake.value += 1
        self._attach(app)

    def _attach(self, app: asyncio.Transport) -> None:
        session = self.session = self.make_session()
        app.set_protocol(session)
        session.connection_made(app)
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            session.data_received(data)
        if self.eof and not session.eof_received():
            app.close()
        if self.lost:
            session.connection_lost(self.lost_exc)

    def _feed_early(self, data: bytes) -> None:
        assert self.transport is not None
        protocol: Any = self.transport.get_protocol()  # uvloop's SSLProtocol is buffered but no subclass
        if not hasattr(protocol, "buffer_updated"):
            protocol.data_received(data)
            return
        view = memoryview(data)
        while view:
            buffer = protocol.get_buffer(len(view))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]

    def abort(self) -> None:
        self.tls.pending.discard(self)
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()

    # The TLS transport's protocol until the session is attached.

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.data_received(data)
        elif not self.started:
            self.early += data
            assert self.transport is not None
            self.transport.pause_reading()
        else:
            self.buffer += data

    def eof_received(self) -> bool:
        if not self.started:
            return False  # the client left before its handshake: the transport closes, connection_lost follows
        if self.session is not None:
            return bool(self.session.eof_received())
        self.eof = True  # passed on once the session is attached (an SSL transport ignores the answer)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.connection_lost(exc)
            return
        self.lost = True
        self.lost_exc = exc
        if not self.started and self.task is not None:
            # Gone before start_tls took the connection over: nothing would ever wake the handshake.
            self.task.cancel()
            if self in self.tls.pending:
                self.tls.pending.discard(self)
                assert self.transport is not None
                peer = self.transport.get_extra_info("peername")
                self.tls.handshake_failed(exc or ConnectionResetError("closed before the handshake"), peer)
