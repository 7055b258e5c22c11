"""Host discovery: a cluster's hosts from DNS (re-resolved on an interval) or from a file watched for edits.

Why it looks like this:

- **Discovery only produces a host list; the cluster applies it.** Both sources end in
  ``Cluster.set_hosts``, which keeps the hosts that stay (their health, ejection and stats), adds the new
  ones to the balancer, the health checker and outlier detection, and lets requests already on a removed
  host finish. So DNS and files behave alike, and a third source would be one more loop.
- **A failed update changes nothing.** A lookup that fails or a file that does not parse is logged (the
  file and the entry named) and counted in ``cluster.<name>.update_failure``; the last good hosts stay. An
  unreachable DNS server or an editor's half-written file must not empty a cluster.
- **The resolver is injected.** ``DnsDiscovery`` takes any async ``(name, port) -> [(ip, port), ...]``;
  the default asks the event loop's ``getaddrinfo`` (the system resolver, ``/etc/hosts`` included). Tests
  and service code can hand in their own answers.
- **Files are polled, not watched by inotify**: a stat per interval works on every platform and file
  system (bind mounts and ConfigMaps included). A file whose size and modification time are unchanged is
  not read again unless its modification time is within two seconds of the poll (git's "racy clean"
  rule: a same-size edit inside the file system's timestamp granularity would otherwise go unseen);
  a file that is read but whose content hash is unchanged is not parsed again.

Envoy's names: ``STRICT_DNS`` for the DNS source, the ``update_attempt`` / ``update_success`` /
``update_failure`` / ``update_no_rebuild`` / ``membership_change`` stats.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import yaml

from meshproxy.cluster.cluster import Cluster
from meshproxy.config import ClusterConfig, parse_address

__all__ = [
    "Discovery",
    "DnsDiscovery",
    "HostsFileDiscovery",
    "HostsFileError",
    "Member",
    "Resolver",
    "discovery_for",
    "parse_hosts_file",
    "system_resolver",
]

log = logging.getLogger("meshproxy.cluster.discovery")

Member = tuple[tuple[str, int], int]
"""``((host, port), weight)``: one host of a discovery answer."""

Resolver = Callable[[str, int], Awaitable[list[tuple[str, int]]]]
"""``await resolve(name, port)``: the addresses ``name`` stands for, as ``(ip, port)`` pairs. Raising (or
returning an empty list) is a failed lookup."""

_RACY_WINDOW = 2.0
"""Seconds: a file modified this recently is read again even if its size and mtime look unchanged."""

_FAMILIES = {"all": socket.AF_UNSPEC, "v4_only": socket.AF_INET, "v6_only": socket.AF_INET6}


def system_resolver(lookup_family: Literal["all", "v4_only", "v6_only"] = "all") -> Resolver:
    """A resolver on the running event loop's ``getaddrinfo``: every A/AAAA record (as ``lookup_family``
    allows), in the order the system gives them, each address once."""

    async def resolve(name: str, port: int) -> list[tuple[str, int]]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            name, port, family=_FAMILIES[lookup_family], type=socket.SOCK_STREAM
        )
        addresses: dict[tuple[str, int], None] = {}
        for family, _, _, _, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                addresses[(str(sockaddr[0]), int(sockaddr[1]))] = None
        return list(addresses)

    return resolve


class HostsFileError(ValueError):
    """A hosts file that cannot be used; the message names the file and, where it applies, the entry."""


def parse_hosts_file(path: str, text: str) -> list[Member]:
    """The members a hosts file lists (YAML or JSON): a list whose entries are ``"host:port"`` or
    ``{address: "host:port", weight: N}``. Raises ``HostsFileError`` naming ``path`` and the entry.

    An explicit empty list (``[]``) is a cluster without hosts; an empty file is refused, because it is what
    a file looks like halfway through being rewritten."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HostsFileError(f"hosts file {path}: not YAML or JSON: {exc}") from None
    if data is None:
        raise HostsFileError(f"hosts file {path}: empty (write [] for a cluster without hosts)")
    if not isinstance(data, list):
        raise HostsFileError(f"hosts file {path}: expected a list of hosts, got {type(data).__name__}")
    members: list[Member] = []
    seen: dict[tuple[str, int], int] = {}
    for index, entry in enumerate(data):
        where = f"hosts file {path}: entry {index} ({entry!r})"
        address_text: Any = entry
        weight: Any = 1
        if isinstance(entry, dict):
            unknown = set(entry) - {"address", "weight"}
            if unknown:
                raise HostsFileError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
            if "address" not in entry:
                raise HostsFileError(f"{where}: no address")
            address_text, weight = entry["address"], entry.get("weight", 1)
        if not isinstance(address_text, str):
            raise HostsFileError(f"{where}: expected \"host:port\" or {{address, weight}}")
        try:
            address = parse_address(address_text)
        except ValueError as exc:
            raise HostsFileError(f"{where}: {exc}") from None
        if address[1] == 0:
            raise HostsFileError(f"{where}: port 0 is not an upstream port")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise HostsFileError(f"{where}: weight must be a whole number of at least 1, got {weight!r}")
        if address in seen:
            raise HostsFileError(f"{where}: {address[0]}:{address[1]} is already entry {seen[address]}")
        seen[address] = index
        members.append((address, weight))
    return members


@dataclass(slots=True)
class DnsDiscovery:
    """Envoy's ``STRICT_DNS``: resolve ``name`` every ``refresh_interval`` seconds; the cluster's hosts are
    every address of the last successful answer, on ``port``, weight 1."""

    cluster: Cluster
    name: str
    port: int
    refresh_interval: float = 5.0
    resolver: Resolver = field(default_factory=system_resolver)
    """Any async ``(name, port) -> [(ip, port), ...]``; the default is the event loop's ``getaddrinfo``."""
    timeout: float = 10.0
    """A lookup taking longer fails (the system resolver can hang for its own retries; the proxy's start
    waits for the first lookup)."""
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    apply: Callable[[Iterable[Member]], bool] | None = None
    """What applies an answer; ``None`` is ``cluster.set_hosts``. A caller whose cluster is picked from other
    threads passes one that takes its lock (``ClusterClient``)."""

    async def update(self) -> bool:
        """Resolve once and apply the answer; ``False`` (logged, counted) when the lookup failed."""
        stats = self.cluster.stats
        stats.update_attempt.inc()
        try:
            with anyio.fail_after(self.timeout):
                addresses = await self.resolver(self.name, self.port)
            if not addresses:
                raise OSError("no addresses")
        except Exception as exc:  # socket.gaierror, or anything an injected resolver raises: never end the loop
            stats.update_failure.inc()
            log.warning(
                "cluster %s: resolving %s failed (%s: %s); keeping %d host(s)",
                self.cluster.name, self.name, type(exc).__name__, exc, len(self.cluster.hosts),
            )
            return False
        stats.update_success.inc()
        (self.apply or self.cluster.set_hosts)([(address, 1) for address in addresses])
        return True

    async def run(self) -> None:
        """Re-resolve every ``refresh_interval`` until cancelled (the first ``update`` is the caller's)."""
        while True:
            await self.sleep(self.refresh_interval)
            await self.update()


@dataclass(slots=True)
class HostsFileDiscovery:
    """Hosts from ``path``, read again whenever it changes (polled every ``refresh_interval`` seconds)."""

    cluster: Cluster
    path: str
    refresh_interval: float = 1.0
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    clock: Callable[[], float] = time.time
    """Wall-clock seconds, compared with the file's modification time."""
    apply: Callable[[Iterable[Member]], bool] | None = None
    """What applies the file's hosts; ``None`` is ``cluster.set_hosts`` (see ``DnsDiscovery.apply``)."""
    _signature: tuple[int, int, int] | None = field(default=None, repr=False)
    _digest: bytes | None = field(default=None, repr=False)

    def update(self, *, force: bool = False) -> bool | None:
        """Poll once: ``None`` when the file did not change, ``True`` when its hosts were applied, ``False``
        when it changed but could not be used (logged with the file and entry, counted in
        ``update_failure``; the hosts stay as they were). ``force`` reads and applies it even if unchanged
        (the first read at startup: a file missing then leaves the cluster without hosts until it appears)."""
        stats = self.cluster.stats
        try:
            members = self._read(force=force)
        except HostsFileError as exc:
            stats.update_attempt.inc()
            stats.update_failure.inc()
            log.error("cluster %s: %s; keeping %d host(s)", self.cluster.name, exc, len(self.cluster.hosts))
            return False
        if members is None:
            return None
        stats.update_attempt.inc()
        stats.update_success.inc()
        (self.apply or self.cluster.set_hosts)(members)
        return True

    def _read(self, *, force: bool) -> list[Member] | None:
        """The file's members, or ``None`` when it is unchanged since the last good or bad read."""
        try:
            info = os.stat(self.path)
            signature = (info.st_mtime_ns, info.st_size, info.st_ino)
            racy = abs(self.clock() - info.st_mtime_ns / 1e9) < _RACY_WINDOW
            if not force and signature == self._signature and not racy:
                return None
            with open(self.path, "rb") as file:
                raw = file.read()
        except OSError as exc:
            if not force and self._signature == (-1, -1, -1):
                return None  # still missing: said once already
            self._signature, self._digest = (-1, -1, -1), None
            raise HostsFileError(f"hosts file {self.path}: cannot read: {exc.strerror or exc}") from None
        self._signature = signature
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        if not force and digest == self._digest:
            return None
        self._digest = digest
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HostsFileError(f"hosts file {self.path}: not UTF-8 text ({exc})") from None
        return parse_hosts_file(self.path, text)

    async def run(self) -> None:
        """Poll every ``refresh_interval`` until cancelled (the first read is ``update(force=True)``)."""
        while True:
            await self.sleep(self.refresh_interval)
            self.update()


Discovery = DnsDiscovery | HostsFileDiscovery


def discovery_for(
    cluster: Cluster,
    config: ClusterConfig,
    resolver: Resolver | None = None,
    apply: Callable[[Iterable[Member]], bool] | None = None,
) -> Discovery | None:
    """The discovery ``config`` asks for (``None`` for static ``hosts``); ``resolver`` replaces the
    system's for ``dns`` clusters; ``apply`` replaces ``cluster.set_hosts``."""
    if config.dns is not None:
        return DnsDiscovery(
            cluster,
            config.dns.name,
            config.dns.port,
            config.dns.refresh_interval,
            resolver=resolver if resolver is not None else system_resolver(config.dns.lookup_family),
            apply=apply,
        )
    if config.hosts_file is not None:
        return HostsFileDiscovery(cluster, config.hosts_file.path, config.hosts_file.refresh_interval, apply=apply)
    return None
