"""Fault injection for gRPC calls: a delay before the call goes upstream, or an abort with a chosen gRPC
status and message (a trailers-only response, as a server that refuses a call sends), for a percentage of
the calls that match by service and method."""

from __future__ import annotations

import random as _random
from typing import TYPE_CHECKING

from meshproxy.filters._shared import FaultDice
from meshproxy.filters.grpc.api import CallAction, Delay, GrpcAbort, GrpcCall, GrpcFilter

if TYPE_CHECKING:
    from meshproxy.config import GrpcFaultFilterConfig
    from meshproxy.stats import StatsStore


class GrpcFaultFilter(GrpcFilter):
    """Delays and/or aborts matching calls; an abort wins when both fire."""

    def __init__(
        self, config: GrpcFaultFilterConfig, stats: StatsStore, prefix: str, *, random: _random.Random | None = None
    ) -> None:
        self.config = config
        self.dice = FaultDice(random)
        labels = {"prefix": prefix}
        self.delay_injected = stats.counter(
            f"grpc.{prefix}.fault.delay_injected", prom="meshproxy_grpc_fault_delay_injected", labels=labels
        )
        self.abort_injected = stats.counter(
            f"grpc.{prefix}.fault.abort_injected", prom="meshproxy_grpc_fault_abort_injected", labels=labels
        )
        match = config.match
        self._services = None if match.services is None else frozenset(match.services)
        self._methods = None if match.methods is None else frozenset(match.methods)
        abort = config.abort
        self._abort = None if abort is None else GrpcAbort(abort.status, abort.message)

    def matches(self, call: GrpcCall) -> bool:
        if self._services is not None and call.service not in self._services:
            return False
        if self._methods is not None:
            return call.method in self._methods or f"{call.service}/{call.method}" in self._methods
        return True

    def on_call_start(self, call: GrpcCall) -> CallAction | None:
        if not self.matches(call):
            return None
        abort = self.config.abort
        if abort is not None and self._abort is not None and self.dice.roll(abort.percentage):
            self.abort_injected.value += 1
            return self._abort
        delay = self.config.delay
        if delay is not None and delay.duration > 0 and self.dice.roll(delay.percentage):
            self.delay_injected.value += 1
            return Delay(delay.duration)
        return None
