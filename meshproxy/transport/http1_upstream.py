"""One HTTP/1.1 upstream connection to one host, kept alive between requests by the session that owns it.

Why a class of its own rather than ``Relay``'s single upstream: a DynamoDB session balances every request
(``cluster.pick`` per request), so one client connection may need a kept-alive connection to each of several
hosts at once; ``Relay`` knows exactly one upstream. The connection is the asyncio protocol of its socket and
passes every callback to its owner with itself as the first argument, so the owner can tell the connection
carrying its request from an idle one (whose bytes, EOF or loss mean something else).

The connection keeps the cluster's and the host's connection stats (``upstream_cx_total`` / ``_active``,
``cx_total`` / ``cx_active``, ``upstream_cx_connect_fail`` / ``_timeout``, ``upstream_cx_destroy_local`` /
``_remote``, bytes both ways) exactly once per connection, whoever closes it first.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from meshproxy.codecs.http1 import Http1ResponseDecoder
from meshproxy.transport.relay import open_upstream

if TYPE_CHECKING:
    from meshproxy.cluster import Host
    from meshproxy.cluster.cluster import Cluster


class Http1UpstreamOwner(Protocol):
    """What an ``Http1Upstream`` tells its session. Every call names the connection it comes from."""

    active: bool
    """Set on every read, for the session's idle timeout."""

    def conn_made(self, conn: Http1Upstream) -> None:
        """The connection is up; what was written while dialling has been sent."""

    def conn_failed(self, conn: Http1Upstream, reason: str) -> None:
        """The connection could not be opened (refused, unreachable, connect timeout); nothing was sent."""

    def conn_data(self, conn: Http1Upstream, data: bytes) -> None:
        """Bytes from the server."""

    def conn_eof(self, conn: Http1Upstream) -> bool:
        """The server closed its sending side. True keeps our side open (a half-closed byte relay); False
        closes the connection."""

    def conn_lost(self, conn: Http1Upstream) -> None:
        """The connection is gone without the owner closing it (reset, or after an EOF)."""

    def conn_pause_writing(self, conn: Http1Upstream) -> None:
        """The connection's write buffer is full: stop reading what feeds it."""

    def conn_resume_writing(self, conn: Http1Upstream) -> None:
        """The connection's write buffer drained."""


class Http1Upstream(asyncio.Protocol):
    """An upstream HTTP/1.1 connection of one session to one host: dialling, then open, then closed."""

    __slots__ = (
        "_task",
        "closed",
        "cluster",
        "decoder",
        "host",
        "owner",
        "pending",
        "transport",
    )

    def __init__(self, owner: Http1UpstreamOwner, cluster: Cluster, host: Host, decoder: Http1ResponseDecoder) -> None:
        self.owner = owner
        self.cluster = cluster
        self.host = host
        self.decoder = decoder
        """This connection's response framing (each connection has its own byte stream)."""
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.pending: list[bytes] = []
        """Bytes written while dialling, sent once connected."""
        self._task: asyncio.Task[None] | None = None

    def dial(self) -> None:
        """Start connecting (``open_upstream``: the cluster's connect timeout, TLS if the cluster has it, the
        connection counted in the cluster's and the host's stats)."""
        self._task = asyncio.get_running_loop().create_task(self._connect())

    @property
    def dialling(self) -> bool:
        return self.transport is None and not self.closed

    async def _connect(self) -> None:
        try:
            # Not reported as a success: the owner reports each response's outcome instead.
            transport = await open_upstream(self.cluster, self.host, lambda: self, report_success=False)
        except OSError as exc:
            self._failed(exc.strerror or str(exc) or type(exc).__name__)
            return
        self.transport = transport
        if self.closed:  # the owner gave up while it was dialling
            self._closed(remote=False)
            return
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            self.cluster.stats.upstream_cx_tx_bytes_total.value += len(data)
            transport.write(data)
        self.owner.conn_made(self)

    def _failed(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.cluster.stats.upstream_cx_connect_fail.inc()
        self.host.stats.cx_connect_fail.inc()
        self.owner.conn_failed(self, reason)

    # -- asyncio protocol ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        owner = self.owner
        owner.active = True
        self.cluster.stats.upstream_cx_rx_bytes_total.value += len(data)
        owner.conn_data(self, data)

    def eof_received(self) -> bool:
        return not self.closed and self.owner.conn_eof(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed or self.transport is None:  # closed by us, or a dial that failed (``_failed`` reports)
            return
        self._closed(remote=True)
        self.owner.conn_lost(self)

    def pause_writing(self) -> None:
        if not self.closed:
            self.owner.conn_pause_writing(self)

    def resume_writing(self) -> None:
        if not self.closed:
            self.owner.conn_resume_writing(self)

    # -- the owner's calls --------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send ``data`` now, or once connected."""
        transport = self.transport
        if transport is not None:
            self.cluster.stats.upstream_cx_tx_bytes_total.value += len(data)
            transport.write(data)
        elif not self.closed:
            self.pending.append(data)

    def close(self, *, remote: bool = False) -> None:
        """Close it (flushing what was written); its later callbacks are ignored. ``remote``: the server
        ended it (an EOF already seen), for ``upstream_cx_destroy_remote``."""
        if self.closed:
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._closed(remote=remote)

    def _closed(self, *, remote: bool) -> None:
        self.closed = True
        self.pending.clear()
        transport, self.transport = self.transport, None
        if transport is None:
            return
        stats = self.cluster.stats
        stats.upstream_cx_active.value -= 1
        self.host.stats.cx_active.value -= 1
        (stats.upstream_cx_destroy_remote if remote else stats.upstream_cx_destroy_local).value += 1
        transport.close()
