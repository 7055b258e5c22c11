"""One validated configuration model, loaded from YAML.

Every component is configured from these models, whether the proxy runs from ``meshproxy run -c``,
from ``meshproxy sidecar``, or is built in service code. Durations accept ``"250ms"``, ``"5s"``,
``"2m"``, ``"1h"`` or a number of seconds; sizes accept ``"48MB"``, ``"16KiB"`` or a number of bytes.
Load errors name the file, the path inside it and the field (``ConfigError``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

# -- scalar types ---------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration such as '250ms', '5s' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration such as '250ms', '5s', '2m' or a number of seconds")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a size such as '48MB', '16KiB' or a number of bytes")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        unit = (match.group(2) or "b").lower()
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    else:
        raise ValueError(f"{value!r} is not a size such as '48MB', '16KiB' or a number of bytes")
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


def parse_address(value: Any) -> tuple[str, int]:
    if isinstance(value, tuple | list) and len(value) == 2:
        host, port = str(value[0]), value[1]
    elif isinstance(value, str) and ":" in value:
        host, _, port_text = value.rpartition(":")
        host = host.strip("[]")
        if not port_text.isdigit():
            raise ValueError(f"{value!r}: the port must be a number")
        port = int(port_text)
    else:
        raise ValueError(f"{value!r} is not an address of the form HOST:PORT")
    if not host:
        raise ValueError(f"{value!r} has no host")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: the port must be between 0 and 65535")
    return host, port


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
Address = Annotated[tuple[str, int], BeforeValidator(parse_address)]

DEFAULT_MAX_MESSAGE_SIZE = 48_000_000
"""MongoDB's own ``maxMessageSizeBytes`` (48 MB): no legitimate message is larger."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- filters --------------------------------------------------------------------------------------------


class MongoMatch(_Model):
    """Which operations a filter applies to; an unset field matches everything."""

    command: list[str] | None = None
    database: list[str] | None = None
    collection: list[str] | None = None


class StatsFilterConfig(_Model):
    type: Literal["stats"] = "stats"
    per_collection: bool = True
    """Keep per database/collection/command stats (cardinality grows with collections)."""
    callsite_field: str = "$comment"
    """Callsite stats come from this top-level field of the command when it is a string."""


class FixedDelay(_Model):
    duration: Duration
    percentage: float = Field(100.0, ge=0, le=100)


class MongoAbort(_Model):
    code: int = 2
    code_name: str = "BadValue"
    message: str = "fault injected by meshproxy"
    percentage: float = Field(100.0, ge=0, le=100)


class FaultFilterConfig(_Model):
    type: Literal["fault"] = "fault"
    delay: FixedDelay | None = None
    abort: MongoAbort | None = None
    match: MongoMatch = MongoMatch()

    @model_validator(mode="after")
    def _needs_a_fault(self) -> FaultFilterConfig:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault filter needs 'delay', 'abort' or both")
        return self


class AccessLogFilterConfig(_Model):
    type: Literal["access_log"] = "access_log"
    path: str = "stdout"
    """A file path (appended to), or ``stdout`` / ``stderr``."""


class TopologyRewriteFilterConfig(_Model):
    type: Literal["topology_rewrite"] = "topology_rewrite"
    mode: Literal["rewrite", "standalone", "off"] = "rewrite"
    advertise: Address | None = None
    """The address drivers should use; defaults to the listener's own address."""


MongoFilterConfig = Annotated[
    StatsFilterConfig | FaultFilterConfig | AccessLogFilterConfig | TopologyRewriteFilterConfig,
    Field(discriminator="type"),
]


def _default_mongo_filters() -> list[MongoFilterConfig]:
    return [StatsFilterConfig(), TopologyRewriteFilterConfig()]


# -- listeners, clusters, admin -------------------------------------------------------------------------


class ListenerConfig(_Model):
    name: str
    address: Address
    protocol: Literal["mongo", "tcp", "auto"] = "mongo"
    """``auto`` sniffs the first bytes of each connection; bytes no codec claims are passed through."""
    cluster: str
    stat_prefix: str | None = None
    """Stats scope (``mongo.<stat_prefix>.*``); defaults to the listener's name."""
    filters: list[MongoFilterConfig] = Field(default_factory=_default_mongo_filters)
    max_message_size: ByteSize = DEFAULT_MAX_MESSAGE_SIZE
    on_decode_error: Literal["close", "passthrough"] = "close"
    """``close`` the one connection that sent bad bytes, or ``passthrough``: stop decoding it and
    forward its remaining bytes untouched."""
    idle_timeout: Duration = 3600.0
    """Close a connection with no traffic either way for this long; 0 disables."""
    reuse_port: bool = False

    @property
    def prefix(self) -> str:
        return self.stat_prefix or self.name


class ClusterConfig(_Model):
    name: str
    hosts: list[Address] = Field(min_length=1)
    connect_timeout: Duration = 5.0


class AdminConfig(_Model):
    address: Address = ("127.0.0.1", 9901)


class MeshConfig(_Model):
    admin: AdminConfig | None = AdminConfig()
    listeners: list[ListenerConfig] = Field(min_length=1)
    clusters: list[ClusterConfig] = Field(min_length=1)
    drain_timeout: Duration = 10.0
    """On SIGTERM/SIGINT: stop accepting, let in-flight operations finish for this long, then close."""

    @model_validator(mode="after")
    def _references_resolve(self) -> MeshConfig:
        names = [c.name for c in self.clusters]
        for index, listener in enumerate(self.listeners):
            if listener.cluster not in names:
                raise ValueError(
                    f"listeners[{index}].cluster: unknown cluster {listener.cluster!r} (known: {names})"
                )
        for kind, items in (("listener", [x.name for x in self.listeners]), ("cluster", names)):
            duplicates = sorted({n for n in items if items.count(n) > 1})
            if duplicates:
                raise ValueError(f"duplicate {kind} names: {duplicates}")
        return self

    def cluster(self, name: str) -> ClusterConfig:
        return next(c for c in self.clusters if c.name == name)


# -- loading --------------------------------------------------------------------------------------------


class ConfigError(Exception):
    """A configuration that cannot be used; the message names file, path and field."""


def _format_location(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def config_from_dict(data: Any, *, source: str = "<config>") -> MeshConfig:
    """Validate a parsed mapping; errors name ``source`` and each failing path."""
    try:
        return MeshConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            # Drop the discriminator tag pydantic inserts for tagged unions, e.g. filters[0].fault.
            location = tuple(
                part for part in error["loc"] if not (isinstance(part, str) and part.endswith("Config"))
            )
            lines.append(f"{source}: {_format_location(location)}: {error['msg']}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path) -> MeshConfig:
    """Read and validate a YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping, got {type(data).__name__}")
    return config_from_dict(data, source=str(path))


def mongo_sidecar_config(
    *,
    listen: tuple[str, int],
    upstream: tuple[str, int],
    admin: tuple[str, int] | None = ("127.0.0.1", 9901),
    stat_prefix: str = "mongo",
    filters: list[MongoFilterConfig] | None = None,
    **listener_options: Any,
) -> MeshConfig:
    """The configuration ``meshproxy sidecar mongo`` runs: one listener in front of one upstream."""
    listener: dict[str, Any] = {
        "name": stat_prefix,
        "address": listen,
        "protocol": "mongo",
        "cluster": "upstream",
        "stat_prefix": stat_prefix,
        **listener_options,
    }
    if filters is not None:
        listener["filters"] = filters
    return config_from_dict(
        {
            "admin": None if admin is None else {"address": admin},
            "listeners": [listener],
            "clusters": [{"name": "upstream", "hosts": [upstream]}],
        },
        source="<sidecar>",
    )
