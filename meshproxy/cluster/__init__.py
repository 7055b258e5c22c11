"""Upstream hosts and clusters shared by every protocol."""

from __future__ import annotations

from meshproxy.cluster.client import ClusterClient, ClusterClientThread, ClusterRequest, outcome_from_exception
from meshproxy.cluster.cluster import Cluster, Host

__all__ = ["Cluster", "ClusterClient", "ClusterClientThread", "ClusterRequest", "Host", "outcome_from_exception"]
