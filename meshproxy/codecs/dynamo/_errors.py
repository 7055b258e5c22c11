"""DynamoDB-shaped error responses for filters that inject faults, with the status DynamoDB really uses.

The status comes from botocore's model where the model says it: an error shape's
``error.httpStatusCode``, else its ``fault`` marker (a server fault: 500). DynamoDB's model (checked up to
botocore 1.44) marks neither on any error shape, and in the AWS JSON 1.0 protocol an unmarked error is a
sender fault, answered with 400 (``ThrottlingException``, ``ProvisionedThroughputExceededException``,
``ConditionalCheckFailedException`` ...). The exceptions are the AWS-wide server errors every service may
return (AWS "Common Errors": ``InternalFailure`` 500, ``ServiceUnavailable`` 503) and DynamoDB's own
``InternalServerError`` (500 in the DynamoDB developer guide's error table), which the model lists without
marking; those are ``SERVER_ERRORS`` below, consulted only when the model is silent.

The body is what DynamoDB sends: ``{"__type": "com.amazonaws.dynamodb.v20120810#<Type>", "message": ...}``,
with the message member spelled as the model's error shape spells it (``Message`` for
``TransactionCanceledException``), and ``x-amz-crc32`` set so that botocore accepts it.
"""

from __future__ import annotations

import json
from typing import Final

from botocore.model import Shape

from meshproxy.codecs.dynamo._messages import crc32_of
from meshproxy.codecs.dynamo._model import catalog

SERVER_ERRORS: Final = {"InternalServerError": 500, "InternalFailure": 500, "ServiceUnavailable": 503}
"""Server-side errors the model does not mark (see the module docstring for the sources)."""

CONTENT_TYPE: Final = b"application/x-amz-json-1.0"


def _error_shape(error_type: str, service: str) -> Shape | None:
    model = catalog().service_models[service]
    for shape in model.error_shapes:
        if shape.name == error_type or shape.error_code == error_type:
            return shape
    return None


def error_status(error_type: str, service: str = "dynamodb") -> int:
    """The HTTP status DynamoDB answers ``error_type`` with (see the module docstring)."""
    shape = _error_shape(error_type, service)
    if shape is not None:
        error = shape.metadata.get("error") or {}
        status = error.get("httpStatusCode")
        if isinstance(status, int):
            return status
        if shape.metadata.get("fault") or error.get("senderFault") is False:
            return 500
    return SERVER_ERRORS.get(error_type, 400)


def error_namespace(service: str = "dynamodb") -> str:
    """``com.amazonaws.dynamodb.v20120810``: the prefix of ``__type``, from the model's API version."""
    version = catalog().service_models[service].api_version.replace("-", "")
    return f"com.amazonaws.dynamodb.v{version}"


def error_response_body(error_type: str, message: str, service: str = "dynamodb") -> bytes:
    """The JSON body DynamoDB sends for ``error_type``."""
    shape = _error_shape(error_type, service)
    message_key = "Message" if shape is not None and "Message" in shape.members else "message"
    document = {"__type": f"{error_namespace(service)}#{error_type}", message_key: message}
    return json.dumps(document, separators=(",", ":")).encode()


def error_response(
    error_type: str, message: str, service: str = "dynamodb"
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A whole error response: status, headers (content type, length, ``x-amz-crc32``) and body."""
    body = error_response_body(error_type, message, service)
    headers = [
        (b"content-type", CONTENT_TYPE),
        (b"content-length", str(len(body)).encode()),
        (b"x-amz-crc32", str(crc32_of(body)).encode()),
        (b"x-amzn-errortype", error_type.encode()),
    ]
    return error_status(error_type, service), headers, body
