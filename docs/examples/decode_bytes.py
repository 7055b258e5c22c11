"""Decode MongoDB wire bytes with meshproxy's codec alone: no sockets, no event loop.

Run: python docs/examples/decode_bytes.py
The bytes come from pymongo's own message encoder, exactly what a driver would put on the wire.
"""

from __future__ import annotations

from bson import CodecOptions
from pymongo import message
from pymongo.read_preferences import ReadPreference

from meshproxy.codecs.mongo import MongoDecoder, OpMsg


def wire_bytes() -> bytes:
    """Two real OP_MSG requests as pymongo encodes them, back to back."""
    options = CodecOptions()
    first = message._op_msg(
        0, {"find": "orders", "filter": {"sku": "a"}, "$db": "shop"}, "shop", ReadPreference.PRIMARY, options
    )
    second = message._op_msg(
        0, {"insert": "orders", "documents": [{"_id": 1}], "$db": "shop"}, "shop", ReadPreference.PRIMARY,
        options,
    )
    return bytes(first[1]) + bytes(second[1])  # (request_id, bytes, ...)


def main() -> None:
    data = wire_bytes()
    decoder = MongoDecoder()
    # Bytes may arrive in any pieces: feed returns whole messages as they complete.
    messages = decoder.feed(data[:10]) + decoder.feed(data[10:])
    for msg in messages:
        assert isinstance(msg, OpMsg)
        # command name, $db and collection are read from the raw BSON without decoding the document
        print(f"{msg.command_name} db={msg.database} collection={msg.collection} bytes={len(msg.raw)}")
    print("decoded body of the first:", messages[0].document())


if __name__ == "__main__":
    main()
