"""The names of the commands a pymongo client sent, as its own command monitoring reports them: what the
capture, tap and replay tests compare decoded traffic with (handshakes and heartbeats are, by the driver
specification, not reported)."""

from __future__ import annotations

from pymongo import monitoring


class CommandNames(monitoring.CommandListener):
    """Pass as ``event_listeners=[names]``; ``names.names`` lists each started command, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass
