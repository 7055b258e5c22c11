"""meshproxy: an L7 proxy and library for MongoDB, DynamoDB and gRPC traffic."""

from __future__ import annotations

__version__ = "0.1.0"
