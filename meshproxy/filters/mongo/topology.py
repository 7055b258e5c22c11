"""Rewrite ``hello`` / ``isMaster`` replies so that drivers keep talking to the proxy.

A driver given ``mongodb://proxy:port`` runs server discovery: when the reply to its handshake names a
replica set (``setName``, ``hosts``, ``primary``, ``me``), the driver drops the seed address and connects to
the hosts the server listed, i.e. straight past the proxy (measured with pymongo in front of SecantusDB,
which reports itself as a one-member replica set). This filter edits those replies.

Modes:

``rewrite`` (default)
    The proxy presents itself as the only member of the same replica set: ``hosts`` -> ``[advertised]``,
    ``me`` -> advertised, ``primary`` -> advertised when the upstream is the writable primary (removed
    otherwise, since no member of the set the driver can see is primary); ``passives`` and ``arbiters``
    are removed (they are addresses too). ``setName``, ``setVersion``, ``electionId`` and ``tags`` stay, so
    the driver still sees a replica set and keeps retryable writes, transactions and tag-aware reads.
``standalone``
    The replica-set fields are removed so that the driver sees a standalone server. Drivers then disable
    retryable writes and transactions (they need a replica set): use this for tools that insist on it.
``off``
    Replies pass unchanged.

Only replies to ``hello`` / ``isMaster`` / ``ismaster`` are decoded (the command the client sent decides);
every reply of a streamed (exhaust) ``hello`` is rewritten, and a legacy OP_QUERY ``isMaster`` gets its
OP_REPLY rewritten. An unchanged reply (a standalone or mongos upstream in ``rewrite`` mode) is forwarded
byte for byte.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import bson

from meshproxy.codecs.mongo import MsgHeader, OpCode, OpCompressed, OpMsg, OpReply, encode
from meshproxy.filters.mongo.api import MongoFilter, MongoOperation

if TYPE_CHECKING:
    from meshproxy.stats import StatsStore

HELLO_COMMANDS = frozenset({"hello", "isMaster", "ismaster"})

TopologyMode = Literal["rewrite", "standalone", "off"]

_ADDRESS_LISTS = ("passives", "arbiters")

STANDALONE_REMOVED = (
    "setName",
    "setVersion",
    "hosts",
    "passives",
    "arbiters",
    "primary",
    "me",
    "electionId",
    "secondary",
    "arbiterOnly",
    "passive",
    "hidden",
    "tags",
    "lastWrite",
    "isreplicaset",
    "syncingTo",
)
"""Fields only a replica-set member reports; a driver that sees none of them classifies a standalone."""

_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def advertised_host_port(address: tuple[str, int]) -> str:
    """``host:port`` as drivers expect it; a wildcard bind address becomes 127.0.0.1, IPv6 is bracketed."""
    host, port = address
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def rewrite_hello(document: dict[str, Any], mode: TopologyMode, advertise: str) -> dict[str, Any] | None:
    """The rewritten reply document, or None when nothing needs to change. ``document`` is not modified."""
    if mode == "off" or not document.get("ok"):
        return None
    if mode == "standalone":
        if not any(key in document for key in STANDALONE_REMOVED):
            return None
        return {key: value for key, value in document.items() if key not in STANDALONE_REMOVED}
    if "hosts" not in document and "setName" not in document and "me" not in document:
        return None  # a standalone or mongos: nothing points past the proxy
    result = {key: value for key, value in document.items() if key not in _ADDRESS_LISTS}
    if "hosts" in document or "setName" in document:
        result["hosts"] = [advertise]
    if "me" in document or "setName" in document:
        result["me"] = advertise
    writable = document.get("isWritablePrimary", document.get("ismaster"))
    if writable is True:
        result["primary"] = advertise
    else:
        result.pop("primary", None)
    return result if result != document else None


def _legacy_reply(original: OpReply, first: dict[str, Any]) -> OpReply:
    """An OP_REPLY like ``original`` whose first document is ``first`` (encoded by the codec)."""
    documents = [bson.encode(first), *original.documents[1:]]
    header = original.header
    draft = OpReply(
        header=MsgHeader(0, header.request_id, header.response_to, int(OpCode.REPLY)),
        response_flags=original.response_flags,
        cursor_id=original.cursor_id,
        starting_from=original.starting_from,
        number_returned=len(documents),
        documents=documents,
        raw=b"",
    )
    raw = encode(draft)
    draft.raw = raw
    draft.header = MsgHeader(len(raw), header.request_id, header.response_to, int(OpCode.REPLY))
    return draft


class TopologyRewriteFilter(MongoFilter):
    """See the module docstring; counts ``mongo.<prefix>.topology_rewrite`` per rewritten reply."""

    def __init__(
        self,
        stats: StatsStore,
        prefix: str,
        *,
        mode: TopologyMode = "rewrite",
        advertise: tuple[str, int],
    ) -> None:
        self.mode: TopologyMode = mode
        self.advertise = advertised_host_port(advertise)
        self.rewritten = stats.counter(
            f"mongo.{prefix}.topology_rewrite",
            prom="meshproxy_mongo_topology_rewrite",
            labels={"prefix": prefix},
        )

    def on_response(self, op: MongoOperation) -> None:
        if self.mode == "off" or op.command not in HELLO_COMMANDS or op.local_reply:
            return
        response = op.response
        if response is None:
            return
        message = response.inner if isinstance(response, OpCompressed) else response
        try:
            if isinstance(message, OpMsg):
                document = message.document()
            elif isinstance(message, OpReply):
                first = message.first_document()
                if first is None:
                    return
                document = first
            else:
                return
        except Exception:  # an undecodable reply is the client's to reject; forward it unchanged
            return
        rewritten = rewrite_hello(document, self.mode, self.advertise)
        if rewritten is None:
            return
        if isinstance(message, OpMsg):
            header = message.header
            replacement: OpMsg | OpReply = OpMsg.from_document(
                rewritten,
                request_id=header.request_id,
                response_to=header.response_to,
                flag_bits=message.flag_bits,
            )
        else:
            replacement = _legacy_reply(message, rewritten)
        op.replace_response(replacement)
        self.rewritten.value += 1
