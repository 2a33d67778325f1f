"""Fuzzing every parser of outside input: each rejects bad input with a clear error and nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.app.engine import Engine
from monitor.common.errors import ConfigError
from monitor.config.models import build_config, load_config
from monitor.console.printer import AlertValidator, parse_alert
from pipelines.banks import parse_bank_text
from pipelines.errors import BankFormatError

HEX = "0123456789abcdef"
hexes = st.text(HEX, min_size=60, max_size=68)
lines = st.one_of(
    hexes,
    st.builds(lambda h: f"pdq {h}", hexes),
    st.builds(lambda h, i: f"{h},{i},d,2024-01-01,a b", hexes, st.integers()),
    st.builds(lambda h: json.dumps({"hash": h, "id": 1}), hexes),
    st.text(max_size=80),
    st.just("# comment"),
    st.just(""),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(lines, max_size=12), st.sampled_from(["pdq", "phash"]))
def test_hash_lists(rows: list[str], signal: str) -> None:
    try:
        codes, entries, _ = parse_bank_text("\n".join(rows), "fuzz.txt", signal)
    except BankFormatError as exc:
        assert str(exc).startswith("fuzz.txt:") and "nothing loaded" in str(exc)
        return
    assert len(codes) == len(entries)


config_keys = st.sampled_from(["node", "broker", "streams", "banks", "ingest", "sampling", "incidents", "hooks",
                               "servers", "metrics", "terminate", "evidence", "delivery", "bogus"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(config_keys, json_values, max_size=5))
def test_config_dicts(data: dict[str, Any]) -> None:
    try:
        build_config(data, "fuzz.yaml")
    except ConfigError as exc:
        assert all(line.startswith("fuzz.yaml: ") for line in str(exc).splitlines())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_config_yaml_text(tmp_path: Path, text: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    try:
        data = load_config(p)
    except ConfigError as exc:
        assert str(exc).startswith(str(p))
        return
    assert isinstance(data, dict)


alert_like = st.fixed_dictionaries({}, optional={
    "schema_version": json_values, "type": st.just("alert") | json_values, "alert_id": json_values,
    "stream_id": json_values, "media_time_s": json_values, "distance": json_values,
})


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), alert_like.map(lambda d: json.dumps(d).encode())))
def test_alert_payloads_read_by_the_console(payload: bytes) -> None:
    alert, problem = parse_alert(payload, AlertValidator())
    assert (alert is None) != (problem is None)


def test_console_commands_over_mqtt(tmp_path: Path) -> None:
    engine = Engine(build_config({"state_dir": str(tmp_path / "state")}), [])

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                     st.fixed_dictionaries({"action": st.sampled_from(["acknowledge", "terminate", "x"]),
                                            "moderator": json_values, "incident_id": json_values,
                                            "command_id": json_values}).map(lambda d: json.dumps(d).encode())))
    def run(payload: bytes) -> None:
        engine._on_command("livesafe/node-1/commands", payload)  # logs and ignores bad commands

    run()
    assert not engine._tasks  # nothing was started for an invalid command


def test_config_yaml_never_builds_python_objects(tmp_path: Path) -> None:
    # The loader is yaml.safe_load: a tag that would run code is a config error, not an object.
    p = tmp_path / "evil.yaml"
    p.write_text("node: !!python/object/apply:os.system ['true']\n")
    try:
        load_config(p)
    except ConfigError as exc:
        assert str(exc).startswith(f"{p}:1:")
        return
    raise AssertionError("a python/object tag was accepted")
