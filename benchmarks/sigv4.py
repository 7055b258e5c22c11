"""CPU cost of SigV4 re-signing one DynamoDB request: ``python -m benchmarks.sigv4``.

Signs the GetItem and BatchWriteItem requests boto3 sent to moto (recorded in ``tests/fixtures/dynamo``)
with ``DynamoRequestSigner``, as the DynamoDB session does for every request when ``aws`` is on, and splits
the cost: botocore's ``SigV4Auth.add_auth`` on an ``AWSRequest`` alone, and the whole ``sign`` (header
filtering, the ``AWSRequest``, the signature, re-encoding the request). Best of five rounds, microseconds per
request; no sockets, so it is stable enough on a busy machine.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, RefreshableCredentials

from benchmarks.hotpath import per_op_us
from meshproxy.codecs.http1 import Http1RequestDecoder
from meshproxy.filters.dynamo.sigv4 import DynamoRequestSigner

ROUNDS = 5000

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dynamo"


def main() -> None:
    static = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    temporary = RefreshableCredentials(
        "ASIAEXAMPLE", "secret", "token" * 80, expiry, refresh_using=lambda: {}, method="benchmark"
    )
    for step in ("04_get_item", "06_batch_write"):
        (request,) = Http1RequestDecoder().feed((FIXTURES / f"{step}.req.http").read_bytes())[:1]
        headers = [(k.decode(), v.decode()) for k, v in request.headers if k.lower() != b"authorization"]
        def botocore_only(
            headers: list[tuple[str, str]] = headers, body: bytes = request.body,
            frozen: object = static.get_frozen_credentials(),
        ) -> None:
            aws = AWSRequest(method="POST", url="http://127.0.0.1:8000/", data=body)
            for name, value in headers:
                aws.headers[name] = value
            SigV4Auth(frozen, "dynamodb", "us-east-1").add_auth(aws)

        print(f"{step}: {len(request.headers)} headers, {len(request.body)} byte body")
        print(f"  {'botocore AWSRequest + SigV4Auth.add_auth':44s} {per_op_us(botocore_only, ROUNDS):7.1f} us")
        for label, credentials in (("static keys", static), ("temporary credentials", temporary)):
            signer = DynamoRequestSigner(credentials, region="us-east-1")
            cost = per_op_us(lambda signer=signer, request=request: signer.sign(request, "127.0.0.1:8000"), ROUNDS)
            print(f"  {'DynamoRequestSigner.sign, ' + label:44s} {cost:7.1f} us")


if __name__ == "__main__":
    main()
