"""Fault injection for MongoDB operations: a fixed delay and an error reply, each for a share of operations.

Envoy's mongo_proxy can only delay, globally. Here both faults are matched by command, database and
collection (``MongoMatch``), so one can slow down the ``orders`` collection or fail 10 % of ``insert``s and
watch how a service copes.

Handshake and authentication commands are never faulted unless the match names them explicitly: failing or
stalling ``hello`` makes drivers mark the server unknown and drop their pools, which is not what someone who
asked to fault "every operation" means.
"""

from __future__ import annotations

import itertools
import random as _random
from typing import TYPE_CHECKING

from meshproxy.codecs.mongo import error_reply
from meshproxy.filters._shared import BoundedCounters, FaultDice
from meshproxy.filters.mongo.api import (
    MONITORING_COMMANDS,
    Delay,
    LocalReply,
    MongoFilter,
    MongoOperation,
    RequestAction,
)

if TYPE_CHECKING:
    from meshproxy.config import FaultFilterConfig, MongoMatch
    from meshproxy.stats import StatsStore

HANDSHAKE_COMMANDS = MONITORING_COMMANDS | frozenset(
    {"saslStart", "saslContinue", "authenticate", "getnonce", "logout"}
)
"""Commands a driver's connection handshake and monitoring depend on; exempt unless named in the match."""

MAX_COMMAND_STATS = 1000
"""Distinct per-command fault counters kept; further command names are counted under ``_overflow``."""

_REQUEST_IDS = itertools.count(0x4D500000)
"""Request ids of locally generated replies; a distinctive range ("MP") eases reading captures."""


class MongoFaultFilter(MongoFilter):
    """Delays and/or aborts matching operations; see ``FaultFilterConfig``."""

    def __init__(
        self,
        config: FaultFilterConfig,
        stats: StatsStore,
        prefix: str,
        *,
        random: _random.Random | None = None,
    ) -> None:
        self.config = config
        self.dice = FaultDice(random)
        self.random = self.dice.random
        match: MongoMatch = config.match
        self._commands = frozenset(match.command) if match.command is not None else None
        self._databases = frozenset(match.database) if match.database is not None else None
        self._collections = frozenset(match.collection) if match.collection is not None else None
        labels = {"prefix": prefix}
        self.delay_injected = stats.counter(
            f"mongo.{prefix}.delay_injected", prom="meshproxy_mongo_delay_injected", labels=labels
        )
        self.abort_injected = stats.counter(
            f"mongo.{prefix}.abort_injected", prom="meshproxy_mongo_abort_injected", labels=labels
        )
        self._per_command = BoundedCounters(
            lambda kind, command: stats.counter(
                f"mongo.{prefix}.cmd.{command}.{kind}",
                prom=f"meshproxy_mongo_cmd_{kind}",
                labels={"prefix": prefix, "command": command},
            ),
            MAX_COMMAND_STATS,
        )

    def matches(self, op: MongoOperation) -> bool:
        """Whether ``op`` is one the configured match selects (before the percentage is rolled)."""
        command = op.command
        if self._commands is None:
            if command in HANDSHAKE_COMMANDS:
                return False
        elif command not in self._commands:
            return False
        if self._databases is not None and op.database not in self._databases:
            return False
        return self._collections is None or op.collection in self._collections

    def on_request(self, op: MongoOperation) -> RequestAction | None:
        if not self.matches(op):
            return None
        config = self.config
        abort = config.abort
        # An abort answers at once, so when both faults fire the abort wins (the filter is not called again
        # after a delay). A fire-and-forget request (w: 0) gets no reply, so it can only be delayed.
        if abort is not None and op.expects_reply and self.dice.roll(abort.percentage):
            self.abort_injected.value += 1
            self._per_command.inc("abort_injected", op.command)
            reply = error_reply(
                op.plain_request,
                code=abort.code,
                code_name=abort.code_name,
                errmsg=abort.message,
                request_id=next(_REQUEST_IDS) & 0x7FFFFFFF,
            )
            return LocalReply(reply)
        delay = config.delay
        if delay is not None and delay.duration > 0 and self.dice.roll(delay.percentage):
            self.delay_injected.value += 1
            self._per_command.inc("delay_injected", op.command)
            return Delay(delay.duration)
        return None
