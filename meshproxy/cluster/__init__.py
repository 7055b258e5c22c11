"""Upstream hosts and clusters shared by every protocol."""

from __future__ import annotations

from meshproxy.cluster.cluster import Cluster, Host

__all__ = ["Cluster", "Host"]
