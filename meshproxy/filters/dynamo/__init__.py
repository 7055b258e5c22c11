"""DynamoDB filters: stats, fault injection, access log (issue 3)."""

from __future__ import annotations
