"""The DynamoDB requests the load sends and the responses the backend gives, as boto3 would see them.

Requests are shaped exactly like botocore 1.44's (``GetItem``/``PutItem`` on table ``orders``, the headers
and JSON spacing botocore emits, ``ReturnConsumedCapacity: TOTAL``) and carry a SigV4-shaped
``Authorization`` header whose signature is a real HMAC-SHA256 chain over the canonical request (nobody
checks it; it has the right length and alphabet). Responses are what DynamoDB answers to them, with a
correct ``x-amz-crc32`` (boto3 checks it) and an ``x-amzn-RequestId``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import zlib
from dataclasses import dataclass

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
AMZ_DATE = "20261125T100643Z"
USER_AGENT = (
    "Boto3/1.44.8 md/Botocore#1.44.8 ua/2.1 os/linux#6.18 md/arch#x86_64 lang/python#3.11.7 "
    "md/pyimpl#CPython m/b,Z,P,E,N,e cfg/retry-mode#standard Botocore/1.44.8"
)
CONTENT_TYPE = "application/x-amz-json-1.0"
TARGET_PREFIX = "DynamoDB_20120810."
REQUEST_ID = "8UQ5DKHT0PR6BAN64JRF9L0F27VV4KQNSO5AEMVJF66Q9ASUAAJG"

OPERATIONS = ("getitem", "putitem")


def _json(document: object) -> bytes:
    """botocore's serializer: ``json.dumps`` with its default separators (a space after ``:`` and ``,``)."""
    return json.dumps(document).encode()


GETITEM_REQUEST = _json({"TableName": "orders", "Key": {"pk": {"S": "customer#42"}}, "ReturnConsumedCapacity": "TOTAL"})

_ITEM = {
    "pk": {"S": "customer#42"},
    "sk": {"S": "order#2026-11-25#000917"},
    "status": {"S": "SHIPPED"},
    "total": {"N": "129.95"},
    "currency": {"S": "EUR"},
    "items": {
        "L": [
            {"M": {"sku": {"S": "SKU-10442"}, "qty": {"N": "2"}, "price": {"N": "39.99"}}},
            {"M": {"sku": {"S": "SKU-20871"}, "qty": {"N": "1"}, "price": {"N": "49.97"}}},
        ]
    },
    "shipping": {"M": {"city": {"S": "Lyon"}, "zip": {"S": "69002"}, "carrier": {"S": "colissimo"}}},
    "created_at": {"S": "2026-11-25T09:41:07Z"},
}

PUTITEM_REQUEST = _json(
    {
        "TableName": "orders",
        "Item": {k: v for k, v in _ITEM.items() if k != "shipping"},
        "ConditionExpression": "attribute_not_exists(pk)",
        "ReturnConsumedCapacity": "TOTAL",
    }
)

# DynamoDB's own responses are compact JSON.
GETITEM_RESPONSE = json.dumps(
    {"ConsumedCapacity": {"CapacityUnits": 0.5, "TableName": "orders"}, "Item": _ITEM}, separators=(",", ":")
).encode()
PUTITEM_RESPONSE = json.dumps(
    {"ConsumedCapacity": {"CapacityUnits": 1.0, "TableName": "orders"}}, separators=(",", ":")
).encode()


def crc32(body: bytes) -> int:
    """The ``x-amz-crc32`` DynamoDB sends: CRC-32 of the response body as an unsigned decimal."""
    return zlib.crc32(body) & 0xFFFFFFFF


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_authorization(target: str, body: bytes, host: str = "127.0.0.1") -> str:
    """A SigV4 ``Authorization`` header for this request, computed the way botocore does (fixed date)."""
    signed = "content-type;host;x-amz-date;x-amz-target"
    canonical = "\n".join(
        [
            "POST",
            "/",
            "",
            f"content-type:{CONTENT_TYPE}\nhost:{host}\nx-amz-date:{AMZ_DATE}\nx-amz-target:{target}\n",
            signed,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    day = AMZ_DATE[:8]
    scope = f"{day}/{REGION}/dynamodb/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", AMZ_DATE, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + SECRET_KEY).encode(), day)
    for part in (REGION, "dynamodb", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={signed}, Signature={signature}"


@dataclass(frozen=True, slots=True)
class Operation:
    """One benchmarked DynamoDB call: the request the load sends and the response the backend gives."""

    name: str  # getitem / putitem
    target: str  # X-Amz-Target
    body: bytes
    response: bytes

    def headers(self) -> dict[str, str]:
        """Request headers in botocore's order (``Host`` and ``Content-Length`` are added by the sender)."""
        return {
            "X-Amz-Target": self.target,
            "Content-Type": CONTENT_TYPE,
            "User-Agent": USER_AGENT,
            "X-Amz-Date": AMZ_DATE,
            "Authorization": sigv4_authorization(self.target, self.body),
            "amz-sdk-invocation-id": "799c04ae-764f-48b2-a4e3-129215df8101",
            "amz-sdk-request": "attempt=1; max=4",
        }


def operation(name: str) -> Operation:
    if name == "getitem":
        return Operation("getitem", TARGET_PREFIX + "GetItem", GETITEM_REQUEST, GETITEM_RESPONSE)
    if name == "putitem":
        return Operation("putitem", TARGET_PREFIX + "PutItem", PUTITEM_REQUEST, PUTITEM_RESPONSE)
    raise ValueError(f"unknown operation {name!r} (known: {', '.join(OPERATIONS)})")
