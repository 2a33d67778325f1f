"""Issue 19's security findings, one test (or more) per finding, named after it.

Each test here failed before its fix. Findings with larger test files of their own (the evidence
signatures, bans, the state files) have their tests there; SECURITY.md lists where each one is.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import stat
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


# -- finding 7: dependency floors with known CVEs ------------------------------------------------------------


def test_finding7_aiohttp_floor_excludes_releases_with_known_cves() -> None:
    """CVE-2024-52303, CVE-2024-52304 (fixed in 3.10.11) and CVE-2025-53643 (fixed in 3.12.14)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"aiohttp\b", d))
    floor = re.search(r">=\s*([\d.]+)", spec)
    assert floor is not None, spec
    assert _version(floor.group(1)) >= (3, 12, 14), spec
    assert _version(metadata.version("aiohttp")) >= (3, 12, 14)


# -- finding 6: broker credentials in URLs and on the command line ------------------------------------------


def test_finding6_broker_url_with_userinfo_is_a_config_error_that_does_not_echo_it() -> None:
    from monitor.common.errors import ConfigError
    from monitor.config.models import build_config

    for url in ("mqtt://node-1:s3cret-pw@127.0.0.1:1883", "mqtts://s3cret-pw@127.0.0.1", "mqtt://:s3cret-pw@h"):
        with pytest.raises(ConfigError) as err:
            build_config({"broker": {"url": url}}, "monitor.yaml")
        text = str(err.value)
        assert text.startswith("monitor.yaml: broker.url: must not hold user:password@"), text
        assert "s3cret-pw" not in text


def test_finding6_password_on_the_command_line_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.cli.main import main

    for argv in (["run", "--password", "s3cret-pw", "--validate-config"],
                 ["console", "--password", "s3cret-pw", "--json"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--password is no longer accepted" in err and "--password-file" in err, err
        assert "s3cret-pw" not in err and "Traceback" not in err


def test_finding6_console_broker_url_error_does_not_echo_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.cli.main import main

    assert main(["console", "--broker", "mqtt://u:s3cret-pw@127.0.0.1:1", "--json"]) == 2
    err = capsys.readouterr().err
    assert "must not hold user:password@" in err and "s3cret-pw" not in err and "Traceback" not in err


def test_finding6_password_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.cli.common import broker_overrides
    from monitor.cli.main import build_parser
    from monitor.config.models import BROKER_PASSWORD_ENV, BrokerConfig

    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    args = build_parser().parse_args(["console", "--username", "console", "--password-file", str(pw)])
    assert BrokerConfig.model_validate(broker_overrides(args)).secret() == "from-file"
    monkeypatch.setenv(BROKER_PASSWORD_ENV, "from-env")
    assert BrokerConfig(username="console").secret() == "from-env"
    assert BrokerConfig(username="console", password_file=pw).secret() == "from-file"  # the file wins
    monkeypatch.delenv(BROKER_PASSWORD_ENV)
    assert BrokerConfig(username="console").secret() is None


# -- finding 3: state files readable by everyone, a truncated outbox, two monitors on one state --------------


def _engine(state: Path) -> Any:
    from monitor.app.engine import Engine
    from monitor.config.models import build_config

    return Engine(build_config({"state_dir": str(state), "workers": 0}), [])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_finding3_state_directory_0700_and_every_state_file_0600(tmp_path: Path) -> None:
    from monitor.delivery.outbox import OutboxMessage

    old = os.umask(0o022)  # the usual umask: files would be 0644 without the fix
    try:
        state = tmp_path / "state"
        engine = _engine(state)
        engine.outbox.put(OutboxMessage("m1", "t/a", b"{}", 1, False, 1.0))
        assert engine.evidence is not None
        engine.evidence.append("note", stream_id="s1", body={"moderator": "alice", "publisher_addr": "127.0.0.1"})
        engine.outbox.close()
        engine.evidence.close()
        engine.state_lock.release()
    finally:
        os.umask(old)
    assert _mode(state) == 0o700
    names = sorted(p.name for p in state.iterdir())
    for name in ("outbox.sqlite", "evidence.sqlite", "monitor.lock"):
        assert name in names
    for p in state.iterdir():
        assert _mode(p) == 0o600, (p.name, oct(_mode(p)))


def test_finding3_wal_and_shm_files_are_0600_while_open(tmp_path: Path) -> None:
    from monitor.delivery.outbox import Outbox, OutboxMessage
    from monitor.evidence.store import EvidenceLog

    old = os.umask(0o022)
    try:
        with Outbox(tmp_path / "o.sqlite") as box, EvidenceLog(tmp_path / "e.sqlite") as ev:
            box.put(OutboxMessage("m1", "t/a", b"{}", 1, False, 1.0))
            ev.append("note", stream_id="s1", body={"text": "x"})
            side = [p for p in tmp_path.iterdir() if p.name.endswith(("-wal", "-shm"))]
            assert len(side) == 4, sorted(p.name for p in tmp_path.iterdir())
            for p in tmp_path.iterdir():
                assert _mode(p) == 0o600, (p.name, oct(_mode(p)))
    finally:
        os.umask(old)


def test_finding3_existing_wide_state_files_are_narrowed(tmp_path: Path) -> None:
    from monitor.delivery.outbox import Outbox, OutboxMessage

    with Outbox(tmp_path / "o.sqlite") as box:
        box.put(OutboxMessage("m1", "t/a", b"{}", 1, False, 1.0))
    (tmp_path / "o.sqlite").chmod(0o644)
    with Outbox(tmp_path / "o.sqlite") as box:
        assert box.depth() == 1
        for p in tmp_path.iterdir():
            assert _mode(p) == 0o600, p.name


def test_finding3_truncated_outbox_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from monitor.delivery.outbox import Outbox, OutboxMessage

    state = tmp_path / "state"
    state.mkdir()
    with Outbox(state / "outbox.sqlite") as box:
        for i in range(200):
            box.put(OutboxMessage(f"m{i}", "t/a", b"x" * 400, 1, False, float(i)))
    size = (state / "outbox.sqlite").stat().st_size
    os.truncate(state / "outbox.sqlite", size // 2)
    with caplog.at_level(logging.ERROR, logger="monitor.delivery.outbox"):
        engine = _engine(state)  # before the fix: OutboxError (a traceback) from the constructor
    try:
        lines = [r.getMessage() for r in caplog.records if r.name == "monitor.delivery.outbox"]
        assert len(lines) == 1 and "was damaged" in lines[0] and "moved aside to" in lines[0], lines
        aside = [p for p in state.iterdir() if ".corrupt-" in p.name and p.name.endswith("Z")]
        assert len(aside) == 1 and aside[0].stat().st_size == size // 2  # kept, for inspection
        engine.outbox.put(OutboxMessage("new", "t/a", b"{}", 1, False, 1.0))
        assert engine.outbox.depth() >= 1
    finally:
        engine.state_lock.release()


def test_finding3_outbox_of_another_kind_is_a_one_line_error_not_moved(tmp_path: Path) -> None:
    from monitor.common.errors import UserError

    state = tmp_path / "state"
    state.mkdir()
    other = sqlite3.connect(state / "outbox.sqlite")
    other.execute("CREATE TABLE mine (x)")
    other.commit()
    other.close()
    with pytest.raises(UserError, match="not an outbox file"):
        _engine(state)
    assert sorted(p.name for p in state.iterdir() if "outbox" in p.name) == ["outbox.sqlite"]
    _engine(tmp_path / "elsewhere").state_lock.release()  # the failed start left no lock behind on its state
    from monitor.common.statefiles import StateLock

    StateLock.acquire(state).release()


def test_finding3_second_monitor_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    from monitor.common.statefiles import StateDirInUse

    state = tmp_path / "state"
    first = _engine(state)
    try:
        with pytest.raises(StateDirInUse, match=rf"in use by another monitor \(pid {os.getpid()}\)"):
            _engine(state)
    finally:
        first.state_lock.release()
    _engine(state).state_lock.release()  # free again once the first one let go


def test_finding3_lock_is_held_across_processes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = _engine(state)
    try:
        code = ("import sys\nfrom monitor.cli.main import main\n"
                f"sys.exit(main(['run', '--config', {str(tmp_path / 'c.yaml')!r}]))")
        (tmp_path / "c.yaml").write_text(f"state_dir: {state}\nworkers: 0\nbroker: {{url: 'mqtt://127.0.0.1:9'}}\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    finally:
        first.state_lock.release()
    assert out.returncode == 2, out.stderr
    assert "is in use by another monitor" in out.stderr and "Traceback" not in out.stderr, out.stderr


# -- finding 5: control characters in moderator names and reasons, markup in console text ------------------


def _book_with_incident() -> tuple[Any, Any]:
    from monitor.incidents import IncidentBook, IncidentPolicy, NewIncident
    from pipelines.base import Finding

    book = IncidentBook(IncidentPolicy(), {"b1": "high"}, lambda: 1000.0)
    f = Finding("known_content", "s1", 1.0, 1000.0, "b1", "e1", "pdq", 4, 31, 90, "ab" * 32, "label", ())
    inc = next(e.incident for e in book.on_sample("s1", 1.0, [f]) if isinstance(e, NewIncident))
    return book, inc


def _command(inc: Any, **changes: Any) -> dict[str, Any]:
    import uuid

    return {"schema_version": 1, "type": "command", "command_id": str(uuid.uuid4()), "action": "acknowledge",
            "incident_id": inc.incident_id, "stream_id": inc.stream_id, "moderator": "alice",
            "reason": "looked at it", **changes}


HOSTILE = ["alice\n12:00:00 INFO monitor: incident x: dismiss by bob", "alice\x1b[2J\x1b]0;pwned\x07", "ali\rce",
           "\u202eecila", "alice\u2028bob", "alice\x00", "al\x85ice", "alice\ud800"]


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("field", ["moderator", "reason"])
def test_finding5_command_parser_refuses_control_characters(field: str, text: str) -> None:
    from monitor.incidents import CommandError

    book, inc = _book_with_incident()
    with pytest.raises(CommandError) as err:
        book.apply_command(_command(inc, **{field: text}))
    msg = str(err.value)
    assert field in msg and "U+" in msg and "not accepted" in msg
    assert all(c.isprintable() for c in msg), msg  # the error itself never carries the character
    assert book.get(inc.incident_id).status == "open"  # nothing applied


def test_finding5_ordinary_names_and_reasons_still_pass() -> None:
    book, inc = _book_with_incident()
    out = book.apply_command(_command(inc, moderator="Zoë O'Brien-Łukasz 山田", reason="test card; not a match ✓"))
    assert out.changed


def test_finding5_refused_command_is_logged_as_one_escaped_line(tmp_path: Path) -> None:
    import io

    from monitor.ops.logs import setup_logging

    engine = _engine(tmp_path / "state")
    try:
        setup_logging("info")
        stream = io.StringIO()
        logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
        engine.handle_command({"moderator": "mallory\n00:00:00 INFO   forged line\x1b[31m", "action": "x"})
        logging.getLogger("monitor.app.engine").info("bank label %s", "a\x1b]0;title\x07b\nc")
        out = stream.getvalue()
    finally:
        engine.state_lock.release()
    lines = out.splitlines()
    assert len(lines) == 2, lines
    assert "\x1b" not in out and "\x07" not in out
    assert "forged line" in lines[0] and "\\x1b" in lines[1] and "\\n" in lines[1]


def test_finding5_console_refuses_a_moderator_name_with_control_characters(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.cli.main import main
    from monitor.config.models import BrokerConfig
    from monitor.console.tui import ModerationConsole

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["console", "--moderator", "eve\x1b[2J"]) == 2
    err = capsys.readouterr().err
    assert "U+001B (ESCAPE)" in err and "\x1b" not in err
    with pytest.raises(ValueError, match=r"U\+000A"):
        ModerationConsole(BrokerConfig(), moderator="eve\nadmin")


def test_finding5_console_lines_escape_message_text() -> None:
    from monitor.console.printer import format_alert, format_state

    alert = {"observed_at": "2024-01-01T00:00:00Z", "stream_id": "s1", "media_time_s": 1.0, "bank": "b",
             "entry_id": "e1", "entry_label": "x\x1b[2Jy\nz", "distance": 3, "threshold": 31, "quality": 90,
             "node": "n1", "stream_url": "rtmp://h/live/s1", "alert_id": "a1"}
    text = format_alert(alert) + format_state({"stream_id": "s1", "state": "live", "detail": "d\x1b]0;t\x07"})
    assert "\x1b" not in text and "\x07" not in text and len(format_alert(alert).splitlines()) == 2


def test_finding3_state_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    from monitor.common.errors import UserError
    from monitor.common.statefiles import private_dir

    shared = tmp_path / "shared"
    shared.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to make a folder owned by someone else")
    os.chown(shared, 12345, 12345)
    shared.chmod(0o777)
    with pytest.raises(UserError, match="belongs to uid 12345 and others may write to it"):
        private_dir(shared)


def test_finding5_json_log_messages_are_escaped_too() -> None:
    import json

    from monitor.ops.logs import JsonFormatter

    record = logging.LogRecord("monitor.app.engine", logging.INFO, __file__, 1, "by %s", ("\u202eecila\x1b[2J",), None)
    line = JsonFormatter().format(record)
    assert "\u202e" not in line and "\x1b" not in line
    assert json.loads(line)["msg"] == "by \\u202eecila\\x1b[2J"
