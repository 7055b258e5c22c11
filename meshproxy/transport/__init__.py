"""Sockets live here and nowhere else: listeners, relays and the per-protocol sessions."""

from __future__ import annotations
