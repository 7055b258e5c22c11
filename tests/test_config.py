"""Loading configuration: what a valid file becomes, and what every kind of mistake is told as.

Every error is one line per problem, ``FILE[:LINE:COLUMN]: PATH: MESSAGE``, where PATH is the path inside
the file as its author wrote it (``listeners[0].filters[1].delay.duration``): no pydantic union tags, no
Python type names, no traceback.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from meshproxy.config import (
    DEFAULT_MAX_MESSAGE_SIZE,
    AccessLogFilterConfig,
    AdminConfig,
    CircuitBreakersConfig,
    ClusterConfig,
    ClusterHealthCheckConfig,
    ConfigError,
    DynamoAbortConfig,
    DynamoListenerConfig,
    DynamoMatchConfig,
    DynamoStatsFilterConfig,
    FaultFilterConfig,
    FixedDelay,
    GrpcAbortConfig,
    GrpcListenerConfig,
    GrpcMatchConfig,
    GrpcRetryConfig,
    GrpcStatsFilterConfig,
    ListenerConfig,
    MeshConfig,
    MongoAbort,
    MongoMatch,
    OutlierDetectionConfig,
    StatsFilterConfig,
    TlsClientConfig,
    TlsServerConfig,
    TopologyRewriteFilterConfig,
    config_from_dict,
    load_config,
    mongo_sidecar_config,
    parse_address,
    parse_duration,
    parse_size,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

MINIMAL = """\
listeners:
  - name: app
    address: 127.0.0.1:27018
    cluster: mongo
clusters:
  - name: mongo
    hosts: ["127.0.0.1:27017"]
"""


def write(tmp_path: Path, text: str, name: str = "mesh.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def dict_error(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="mesh.yaml")
    return str(info.value)


def minimal(**listener: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "app", "address": "127.0.0.1:27018", "cluster": "mongo", **listener}],
        "clusters": [{"name": "mongo", "hosts": ["127.0.0.1:27017"]}],
    }


# -- valid files ------------------------------------------------------------------------------------------


def test_a_minimal_file_gets_stats_and_topology_rewrite_and_mongo_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    listener = config.listeners[0]
    assert listener.address == ("127.0.0.1", 27018)
    assert listener.protocol == "mongo"
    assert listener.prefix == "app"
    assert [type(f) for f in listener.filters] == [StatsFilterConfig, TopologyRewriteFilterConfig]
    assert listener.max_message_size == DEFAULT_MAX_MESSAGE_SIZE
    assert listener.idle_timeout == 3600.0
    assert config.admin is not None
    assert config.admin.address == ("127.0.0.1", 9901)
    assert config.cluster("mongo").hosts == [("127.0.0.1", 27017)]
    assert config.drain_timeout == 10.0


def test_admin_null_turns_the_admin_endpoint_off(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "admin: null\n" + MINIMAL)).admin is None


def test_durations_sizes_and_addresses_accept_units_and_plain_numbers(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            MINIMAL.replace(
                "    cluster: mongo\n",
                "    cluster: mongo\n    idle_timeout: 2m\n    max_message_size: 16KiB\n",
            )
            + "drain_timeout: 250ms\n",
        )
    )
    assert config.listeners[0].idle_timeout == 120.0
    assert config.listeners[0].max_message_size == 16 * 1024
    assert config.drain_timeout == 0.25


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), (3, 3.0), (0.5, 0.5), ("7", 7.0)],
)
def test_duration_spellings(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("48MB", 48_000_000), ("16KiB", 16384), ("1GiB", 1024**3), ("2k", 2000), ("512", 512), (1024, 1024)],
)
def test_size_spellings(text: Any, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:27017", ("127.0.0.1", 27017)), ("[::1]:9901", ("::1", 9901)), ("localhost:0", ("localhost", 0))],
)
def test_address_spellings(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


def test_a_full_config_round_trips_through_its_json_dump() -> None:
    data = minimal(
        stat_prefix="shop",
        filters=[
            {"type": "stats", "per_collection": False},
            {"type": "access_log", "path": "stderr"},
            {
                "type": "fault",
                "match": {"command": ["find"], "database": ["shop"]},
                "delay": {"duration": "50ms", "percentage": 10},
                "abort": {"code": 91, "code_name": "ShutdownInProgress", "percentage": 1},
            },
            {"type": "topology_rewrite", "mode": "standalone", "advertise": "10.0.0.1:27018"},
        ],
        max_message_size="1MiB",
        on_decode_error="passthrough",
    )
    config = config_from_dict(data)
    dumped = config.model_dump(mode="json")
    again = config_from_dict(dumped)
    assert again == config
    assert again.model_dump(mode="json") == dumped
    assert yaml.safe_load(yaml.safe_dump(dumped)) == dumped
    fault = config.listeners[0].filters[2]
    assert isinstance(fault, FaultFilterConfig)
    assert fault.delay is not None
    assert fault.delay.duration == 0.05


def test_the_sidecar_config_round_trips_too() -> None:
    config = mongo_sidecar_config(
        listen=("127.0.0.1", 0),
        upstream=("127.0.0.1", 27017),
        filters=[StatsFilterConfig(), AccessLogFilterConfig(path="stdout")],
    )
    assert config_from_dict(config.model_dump(mode="json")) == config


@pytest.mark.parametrize("name", ["mongo-sidecar.yaml", "mongo-faults.yaml"])
def test_each_example_file_loads(name: str) -> None:
    config = load_config(EXAMPLES / name)
    assert isinstance(config, MeshConfig)
    assert config.listeners[0].cluster == config.clusters[0].name


def test_the_faults_example_delays_finds_on_shop_and_aborts_inserts_with_shutdown_in_progress() -> None:
    filters = load_config(EXAMPLES / "mongo-faults.yaml").listeners[0].filters
    faults = [f for f in filters if isinstance(f, FaultFilterConfig)]
    delay = next(f for f in faults if f.delay is not None)
    abort = next(f for f in faults if f.abort is not None)
    assert delay.delay is not None
    assert (delay.delay.duration, delay.delay.percentage) == (0.05, 10)
    assert (delay.match.command, delay.match.database) == (["find"], ["shop"])
    assert abort.abort is not None
    assert (abort.abort.code, abort.abort.code_name) == (91, "ShutdownInProgress")
    assert abort.abort.percentage == 1
    assert abort.match.command == ["insert"]
    assert any(isinstance(f, AccessLogFilterConfig) and f.path == "stdout" for f in filters)


# -- field errors name file, line, path and field -------------------------------------------------------


def test_unknown_top_level_field_is_named_with_its_line_and_the_known_fields(tmp_path: Path) -> None:
    message = load_error(tmp_path, MINIMAL + "drain_timout: 5s\n")
    assert message == (
        f"{tmp_path / 'mesh.yaml'}:8:1: drain_timout: unknown field 'drain_timout' "
        "(known fields: admin, listeners, clusters, drain_timeout); did you mean 'drain_timeout'?"
    )


def test_unknown_field_inside_a_listener_names_its_path() -> None:
    message = dict_error(minimal(stat_prefx="x"))
    assert message.startswith("mesh.yaml: listeners[0].stat_prefx: unknown field 'stat_prefx'")
    assert "did you mean 'stat_prefix'?" in message


def test_unknown_field_inside_a_filter_lists_that_filter_type_fields_without_the_union_tag() -> None:
    message = dict_error(minimal(filters=[{"type": "fault", "delay": {"duration": "1s"}, "dealy": 1}]))
    assert message == (
        "mesh.yaml: listeners[0].filters[0].dealy: unknown field 'dealy' "
        "(known fields: type, delay, abort, match); did you mean 'delay'?"
    )


def test_wrong_type_says_what_was_expected_and_what_was_given(tmp_path: Path) -> None:
    text = MINIMAL.replace("    cluster: mongo\n", "    cluster: mongo\n    reuse_port: maybe\n")
    message = load_error(tmp_path, text)
    assert message.endswith(":5:5: listeners[0].reuse_port: expected true or false, got a string ('maybe')")


def test_a_string_where_a_list_belongs_is_reported_at_that_field() -> None:
    data = minimal()
    data["clusters"][0]["hosts"] = "127.0.0.1:27017"
    assert dict_error(data) == "mesh.yaml: clusters[0].hosts: expected a list, got a string ('127.0.0.1:27017')"


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ({**minimal(), "admin": 5}, "admin: expected a mapping, got a number (5)"),
        ({**minimal(), "admin": {"adress": "127.0.0.1:1"}}, "admin.adress: unknown field 'adress' (known fields: address, tls, token_file, tap_directory); did you mean 'address'?"),  # noqa: E501
        ({**minimal(), "listeners": {}}, "listeners: expected a list, got a mapping"),
        (minimal(filters=None), "listeners[0].filters: expected a list, got null"),
        (minimal(name=5), "listeners[0].name: expected a string, got a number (5)"),
        (minimal(stat_prefix=["a"]), "listeners[0].stat_prefix: expected a string, got a list"),
        (minimal(idle_timeout=True), "listeners[0].idle_timeout: a boolean is not a duration such as '250ms', '5s', '2m' or a number of seconds"),  # noqa: E501
        (minimal(idle_timeout=-1), "listeners[0].idle_timeout: a duration cannot be negative"),
        (minimal(max_message_size=0), "listeners[0].max_message_size: a size must be positive"),
        (minimal(max_message_size="8B"), "listeners[0].max_message_size: expected at least 16, got a string ('8B')"),
        (minimal(filters=[{"type": "stats", "per_collection": 3}]), "listeners[0].filters[0].per_collection: expected true or false, got a number (3)"),  # noqa: E501
        (minimal(filters=[{"type": "fault", "delay": 5}]), "listeners[0].filters[0].delay: expected a mapping, got a number (5)"),  # noqa: E501
        (minimal(filters=[{"type": "fault", "abort": {"code": 1.5}}]), "listeners[0].filters[0].abort.code: expected a whole number, got a number (1.5)"),  # noqa: E501
        (minimal(filters=[{"type": "fault", "abort": {}, "match": {"command": "find"}}]), "listeners[0].filters[0].match.command: expected a list, got a string ('find')"),  # noqa: E501
        (minimal(filters=[{"type": "topology_rewrite", "mode": "on"}]), "listeners[0].filters[0].mode: expected one of 'rewrite', 'standalone' or 'off', got a string ('on')"),  # noqa: E501
        ({**minimal(), 1: 2}, "1: a field name must be a string, got a number (1)"),
    ],
)  # fmt: skip
def test_each_kind_of_type_error_reads_as_expected_and_got(data: dict[Any, Any], line: str) -> None:
    assert dict_error(data) == f"mesh.yaml: {line}"


def test_a_choice_outside_the_allowed_values_lists_them() -> None:
    assert dict_error(minimal(protocol="http")) == (
        "mesh.yaml: listeners[0].protocol: expected one of 'mongo', 'dynamo', 'grpc', 'tcp' or 'auto', "
        "got a string ('http')"
    )


def test_bad_duration_inside_a_fault_filter_has_the_path_the_author_wrote(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        MINIMAL.replace(
            "    cluster: mongo\n",
            "    cluster: mongo\n    filters:\n      - type: stats\n      - type: fault\n"
            "        delay: {duration: soon}\n",
        ),
    )
    assert message == (
        f"{tmp_path / 'mesh.yaml'}:8:17: listeners[0].filters[1].delay.duration: "
        "'soon' is not a duration such as '250ms', '5s', '2m' or a number of seconds"
    )
    assert ".fault." not in message


def test_bad_size_names_the_field() -> None:
    assert dict_error(minimal(max_message_size="lots")) == (
        "mesh.yaml: listeners[0].max_message_size: 'lots' is not a size such as '48MB', '16KiB' or a number of bytes"
    )


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("nowhere", "'nowhere' is not an address of the form HOST:PORT"),
        ("127.0.0.1:http", "'127.0.0.1:http': the port must be a number"),
        ("127.0.0.1:70000", "'127.0.0.1:70000': the port must be between 0 and 65535"),
        (":27017", "':27017' has no host"),
    ],
)
def test_bad_address_says_why(address: str, reason: str) -> None:
    assert dict_error(minimal(address=address)) == f"mesh.yaml: listeners[0].address: {reason}"


def test_bad_host_in_a_cluster_names_its_index() -> None:
    data = minimal()
    data["clusters"][0]["hosts"] = ["127.0.0.1:27017", "db2"]
    assert dict_error(data) == "mesh.yaml: clusters[0].hosts[1]: 'db2' is not an address of the form HOST:PORT"


def test_an_out_of_range_percentage_is_reported_at_the_percentage() -> None:
    message = dict_error(minimal(filters=[{"type": "fault", "abort": {"percentage": 150}}]))
    assert message == (
        "mesh.yaml: listeners[0].filters[0].abort.percentage: expected at most 100, got a number (150)"
    )


def test_a_fault_filter_without_a_fault_is_reported_at_the_filter() -> None:
    assert dict_error(minimal(filters=[{"type": "fault"}])) == (
        "mesh.yaml: listeners[0].filters[0]: a fault filter needs 'delay', 'abort' or both"
    )


def test_an_empty_host_list_is_refused() -> None:
    data = minimal()
    data["clusters"][0]["hosts"] = []
    assert dict_error(data) == "mesh.yaml: clusters[0].hosts: expected at least 1 item(s), got none"


# -- sources of hosts ---------------------------------------------------------------------------------------


def test_a_cluster_may_take_its_hosts_from_dns_or_a_hosts_file(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        '    hosts: ["127.0.0.1:27017"]\n', "    dns: {name: db.internal, port: 27017, refresh_interval: 2s}\n"
    ) + "  - name: files\n    hosts_file: hosts.yaml\n"
    config = load_config(write(tmp_path, text))
    dns, files = config.clusters
    assert dns.dns is not None
    assert (dns.dns.name, dns.dns.port, dns.dns.refresh_interval, dns.dns.lookup_family) == (
        "db.internal", 27017, 2.0, "all",
    )
    assert dns.hosts == []
    assert files.hosts_file is not None
    assert (files.hosts_file.path, files.hosts_file.refresh_interval) == ("hosts.yaml", 1.0)


def test_a_cluster_without_any_source_of_hosts_is_told_the_three_choices() -> None:
    data = minimal()
    data["clusters"][0].pop("hosts")
    assert dict_error(data) == "mesh.yaml: clusters[0].hosts: required: give the cluster hosts, dns or hosts_file"


def test_two_sources_of_hosts_are_refused_at_the_second() -> None:
    data = minimal()
    data["clusters"][0]["hosts_file"] = "hosts.yaml"
    assert dict_error(data) == (
        "mesh.yaml: clusters[0].hosts_file: give only one of hosts, dns and hosts_file "
        "(this cluster has hosts and hosts_file)"
    )


@pytest.mark.parametrize(
    ("dns", "message"),
    [
        ({"name": "db.internal"}, "clusters[0].dns.port: required field 'port' is missing"),
        ({"name": "db.internal", "port": 70000}, "clusters[0].dns.port: expected at most 65535, got a number (70000)"),
        ({"name": "db", "port": 1, "refresh_interval": "soon"}, "clusters[0].dns.refresh_interval: 'soon' is not a"),
        ({"name": "db", "port": 1, "lookup_family": "v5"}, "clusters[0].dns.lookup_family: expected one of"),
        ({"name": "db", "port": 1, "ttl": 3}, "clusters[0].dns.ttl: unknown field 'ttl'"),
    ],
)
def test_dns_fields_are_checked_and_errors_name_the_field(dns: dict[str, Any], message: str) -> None:
    data = minimal()
    data["clusters"][0] = {"name": "mongo", "dns": dns}
    assert message in dict_error(data)


def test_hosts_file_errors_name_the_field() -> None:
    data = minimal()
    data["clusters"][0] = {"name": "mongo", "hosts_file": {"path": "h.yaml", "refresh_interval": 0}}
    assert dict_error(data) == (
        "mesh.yaml: clusters[0].hosts_file.refresh_interval: expected more than 0, got a number (0)"
    )


# -- the filter discriminator ----------------------------------------------------------------------------


def test_unknown_filter_type_is_reported_at_its_type_field_with_the_known_types(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, MINIMAL.replace("    cluster: mongo\n", "    cluster: mongo\n    filters:\n      - type: ratelimit\n")
    )
    assert message == (
        f"{tmp_path / 'mesh.yaml'}:6:9: listeners[0].filters[0].type: unknown filter type 'ratelimit' "
        "(known types: stats, fault, access_log, topology_rewrite)"
    )


def test_a_filter_without_a_type_is_told_which_types_exist() -> None:
    assert dict_error(minimal(filters=[{"delay": {"duration": "1s"}}])) == (
        "mesh.yaml: listeners[0].filters[0].type: required field 'type' is missing "
        "(one of: stats, fault, access_log, topology_rewrite)"
    )


def test_a_filter_written_as_a_bare_name_is_told_to_be_a_mapping() -> None:
    assert dict_error(minimal(filters=["stats"])) == (
        "mesh.yaml: listeners[0].filters[0]: expected a mapping, got a string ('stats')"
    )


# -- missing fields and cross references -----------------------------------------------------------------


def test_missing_required_field_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, MINIMAL.replace("    cluster: mongo\n", ""))
    # The field has no line of its own; the error points at the listener that lacks it.
    assert message == f"{tmp_path / 'mesh.yaml'}:2:5: listeners[0].cluster: required field 'cluster' is missing"


def test_missing_top_level_sections_are_each_reported() -> None:
    assert dict_error({}) == (
        "mesh.yaml: listeners: required field 'listeners' is missing\n"
        "mesh.yaml: clusters: required field 'clusters' is missing"
    )


def test_several_problems_are_all_reported_one_per_line() -> None:
    message = dict_error(minimal(address="nowhere", idle_timeout="forever", colour="blue"))
    assert [line.split(": ")[1] for line in message.splitlines()] == [
        "listeners[0].address",
        "listeners[0].idle_timeout",
        "listeners[0].colour",
    ]


def test_unknown_cluster_reference_is_reported_at_the_listener_cluster_field(tmp_path: Path) -> None:
    message = load_error(tmp_path, MINIMAL.replace("    cluster: mongo\n", "    cluster: mongodb\n"))
    assert message == (
        f"{tmp_path / 'mesh.yaml'}:4:5: listeners[0].cluster: unknown cluster 'mongodb' (defined clusters: mongo)"
    )


def test_duplicate_cluster_and_listener_names_are_reported_at_the_second_name() -> None:
    data = minimal()
    data["listeners"].append({"name": "app", "address": "127.0.0.1:27019", "cluster": "mongo"})
    data["clusters"].append({"name": "mongo", "hosts": ["127.0.0.1:27020"]})
    assert dict_error(data) == (
        "mesh.yaml: listeners[1].name: duplicate listener name 'app' (already used by listeners[0])\n"
        "mesh.yaml: clusters[1].name: duplicate cluster name 'mongo' (already used by clusters[0])"
    )



def test_a_dangling_cluster_reference_is_reported_together_with_field_errors_in_file_order(
    tmp_path: Path,
) -> None:
    text = MINIMAL.replace("cluster: mongo", "cluster: mongodb").replace(
        '    hosts: ["127.0.0.1:27017"]\n', '    hosts: ["127.0.0.1:27017"]\n    colour: red\n'
    ) + "drain_timeout: soon\n"
    path = tmp_path / "mesh.yaml"
    assert load_error(tmp_path, text).splitlines() == [
        f"{path}:4:5: listeners[0].cluster: unknown cluster 'mongodb' (defined clusters: mongo)",
        f"{path}:8:5: clusters[0].colour: unknown field 'colour' "
        "(known fields: name, hosts, dns, hosts_file, connect_timeout, tls, lb_policy, panic_threshold, "
        "health_check, outlier_detection, circuit_breakers)",
        f"{path}:9:1: drain_timeout: 'soon' is not a duration such as '250ms', '5s', '2m' or a number of seconds",
    ]


def test_a_duplicate_name_is_reported_together_with_field_errors() -> None:
    data = minimal(address="nowhere")
    data["clusters"].append({"name": "mongo", "hosts": ["127.0.0.1:27020"]})
    assert [line.split(": ")[1] for line in dict_error(data).splitlines()] == [
        "listeners[0].address",
        "clusters[1].name",
    ]


def test_a_cluster_without_a_name_does_not_also_make_every_reference_unknown() -> None:
    data = minimal()
    data["clusters"][0].pop("name")
    assert dict_error(data) == "mesh.yaml: clusters[0].name: required field 'name' is missing"


# -- the file itself -------------------------------------------------------------------------------------


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    message = load_error(tmp_path, "listeners:\n  - name: a: b\n")
    assert message == f"{tmp_path / 'mesh.yaml'}:2:12: not valid YAML: mapping values are not allowed here"


def test_unclosed_flow_list_is_a_yaml_error_with_a_position(tmp_path: Path) -> None:
    message = load_error(tmp_path, "clusters: [\n")
    assert message.startswith(f"{tmp_path / 'mesh.yaml'}:2:1: not valid YAML: ")


def test_a_key_given_twice_is_refused_instead_of_silently_keeping_the_last(tmp_path: Path) -> None:
    message = load_error(tmp_path, MINIMAL + "    hosts: ['127.0.0.1:27019']\n")
    assert message == (
        f"{tmp_path / 'mesh.yaml'}:8:5: clusters[0].hosts: duplicate key 'hosts' (first given on line 7)"
    )


@pytest.mark.parametrize("text", ["", "# nothing here yet\n", "---\n"])
def test_an_empty_file_is_named_as_empty(tmp_path: Path, text: str) -> None:
    assert load_error(tmp_path, text) == (
        f"{tmp_path / 'mesh.yaml'}: the file is empty; expected a mapping with 'listeners' and 'clusters'"
    )


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("just words\n", "a string ('just words')")])
def test_a_file_that_is_not_a_mapping_says_what_it_is(tmp_path: Path, text: str, kind: str) -> None:
    assert load_error(tmp_path, text) == (
        f"{tmp_path / 'mesh.yaml'}:1:1: (top level): expected a mapping with 'listeners' and 'clusters', got {kind}"
    )


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert str(info.value) == f"{tmp_path / 'absent.yaml'}: cannot read: No such file or directory"


def test_a_binary_file_is_named_as_not_text(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_bytes(b"listeners: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"mesh\.yaml: not a text file"):
        load_config(path)


def test_config_errors_do_not_chain_pydantic_or_yaml_exceptions(tmp_path: Path) -> None:
    for text in ("listeners: [\n", MINIMAL + "bogus: 1\n"):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text))
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__


# -- the reference stays true ----------------------------------------------------------------------------

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_every_yaml_block_in_the_configuration_reference_loads(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", REFERENCE.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2
    for index, block in enumerate(blocks):
        assert isinstance(load_config(write(tmp_path, block, f"block{index}.yaml")), MeshConfig)


def _fields(model: type[BaseModel]) -> Iterator[tuple[str, str]]:
    for name, field in model.model_fields.items():
        yield model.__name__, name
        for inner in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from _fields(inner)


def test_the_configuration_reference_has_a_table_row_for_every_field_of_every_model() -> None:
    rows = set(re.findall(r"^\| `([a-z0-9_]+)` \|", REFERENCE.read_text(), flags=re.MULTILINE))
    models: list[type[BaseModel]] = [
        MeshConfig, AdminConfig, ListenerConfig, ClusterConfig, StatsFilterConfig, FaultFilterConfig,
        FixedDelay, MongoAbort, MongoMatch, AccessLogFilterConfig, TopologyRewriteFilterConfig,
        DynamoListenerConfig, DynamoStatsFilterConfig, DynamoAbortConfig, DynamoMatchConfig,
        GrpcListenerConfig, GrpcStatsFilterConfig, GrpcAbortConfig, GrpcMatchConfig, GrpcRetryConfig,
        TlsServerConfig, TlsClientConfig, ClusterHealthCheckConfig, OutlierDetectionConfig, CircuitBreakersConfig,
    ]  # fmt: skip
    missing = {f"{model}.{name}" for m in models for model, name in _fields(m) if name not in rows}
    assert not missing


def test_the_error_examples_in_the_reference_are_what_meshproxy_prints(tmp_path: Path) -> None:
    """A few lines of the Errors section, reproduced (the rest are covered by the tests above)."""
    text = REFERENCE.read_text()
    duplicate = MINIMAL + "  - name: mongo\n    hosts: ['127.0.0.1:27019']\n"
    message = load_error(tmp_path, duplicate).replace(str(tmp_path / "mesh.yaml"), "mesh.yaml")
    assert message in text
    message = load_error(tmp_path, MINIMAL.replace("127.0.0.1:27018", "nowhere"))
    assert message.replace(str(tmp_path / "mesh.yaml"), "mesh.yaml") in text
