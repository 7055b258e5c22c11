"""A paginated Scan through the DynamoDB sidecar returns the same items, page by page, as moto directly.

Pagination is the client following ``LastEvaluatedKey`` with ``ExclusiveStartKey``: a proxy that altered a
body, or confused two responses on one kept-alive connection, would show here as a lost, doubled or
reordered item.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshproxy.proxy import ProxyThread
from testbeds.dynamo.workload import client_for, comparable

from ..support import admin_view
from .conftest import PREFIX, create_table, endpoint

pytestmark = pytest.mark.integration

TABLE = "ledger"
ITEMS = 50
PAGE = 7


def _fill(url: str) -> None:
    dynamo = client_for(url)
    try:
        create_table(dynamo, TABLE)
        for start in range(0, ITEMS, 25):  # BatchWriteItem takes at most 25 requests
            dynamo.batch_write_item(RequestItems={TABLE: [
                {"PutRequest": {"Item": {"id": {"S": f"k{n:03}"}, "amount": {"N": str(n * 3)}, "memo": {"S": "x" * n}}}}
                for n in range(start, min(start + 25, ITEMS))
            ]})
    finally:
        dynamo.close()


def _pages(url: str) -> list[Any]:
    dynamo = client_for(url)
    try:
        paginator = dynamo.get_paginator("scan")
        return [comparable(page) for page in paginator.paginate(TableName=TABLE, PaginationConfig={"PageSize": PAGE})]
    finally:
        dynamo.close()


def test_scan_pages_through_the_sidecar_equal_scan_pages_from_moto(
    empty_moto: tuple[str, int], sidecar: ProxyThread
) -> None:
    """50 items in pages of 7: the sidecar returns the same 8 pages, with the same items and the same
    ``LastEvaluatedKey`` each, as moto does directly, and counts one ``Scan`` per page."""
    _fill(endpoint(empty_moto))

    direct = _pages(endpoint(empty_moto))
    proxied = _pages(endpoint(sidecar.listener_address(PREFIX)))

    assert len(direct) > 1
    assert proxied == direct
    items = [item["id"]["S"] for page in proxied for item in page["Items"]]
    assert sorted(items) == [f"k{n:03}" for n in range(ITEMS)]
    stats = admin_view(sidecar).stats
    assert stats[f"dynamodb.{PREFIX}.operation.Scan.upstream_rq_total"] == len(proxied)
    assert stats[f"dynamodb.{PREFIX}.table.{TABLE}.upstream_rq_total"] == len(proxied)
