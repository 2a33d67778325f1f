"""The web console's accounts, sessions, CSRF tokens and login rate limits (monitor/web/users.py, sessions.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from monitor.common.errors import UserError
from monitor.web.sessions import LoginLimiter, SessionStore
from monitor.web.users import UserStore, at_least


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_users_file_is_private_and_hashes_with_argon2(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "state" / "web-users.json")
    store.add("alice", "correct horse battery", "moderator")
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path.parent).st_mode) == 0o700
    text = store.path.read_text()
    assert "correct horse" not in text and "$argon2id$" in text
    assert store.authenticate("alice", "correct horse battery") is not None
    assert store.authenticate("alice", "wrong password!") is None
    assert store.authenticate("nobody", "correct horse battery") is None
    store.update("alice", disabled=True)
    assert store.authenticate("alice", "correct horse battery") is None


def test_users_refuse_bad_input(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "u.json")
    with pytest.raises(UserError, match="at least 10"):
        store.add("bob", "short", "viewer")
    with pytest.raises(UserError, match="user name"):
        store.add("bo\nb", "long enough pw", "viewer")
    store.add("bob", "long enough pw", "viewer")
    with pytest.raises(UserError, match="exists"):
        store.add("bob", "long enough pw", "viewer")
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(UserError, match="not a users file"):
        UserStore(tmp_path / "bad.json").load()


def test_roles_are_ordered() -> None:
    assert at_least("admin", "lead") and at_least("lead", "moderator") and at_least("moderator", "viewer")
    assert not at_least("viewer", "moderator") and not at_least("moderator", "lead") and not at_least("x", "viewer")


def test_session_expires_after_ttl_and_idle_time() -> None:
    clock = Clock()
    store = SessionStore(ttl_s=100, idle_s=30, clock=clock)
    s = store.create("alice", "moderator")
    clock.t += 20
    assert store.get(s.token) is s
    clock.t += 31  # idle past 30 s
    assert store.get(s.token) is None
    s2 = store.create("alice", "moderator")
    for _ in range(5):  # active, but past the absolute lifetime
        clock.t += 25
        store.get(s2.token)
    assert store.get(s2.token) is None
    assert store.get(None) is None and store.get("forged") is None
    s3 = store.create("alice", "moderator")
    clock.t += 20
    assert store.get(s3.token, touch=False) is s3  # the event stream checks without keeping it alive
    clock.t += 20
    assert store.get(s3.token) is None


def test_csrf_token_is_per_session_and_compared_exactly() -> None:
    store = SessionStore(ttl_s=100, idle_s=100)
    a, b = store.create("a", "viewer"), store.create("b", "viewer")
    assert a.csrf != b.csrf and a.token != b.token
    assert a.csrf_ok(a.csrf)
    assert not a.csrf_ok(None) and not a.csrf_ok("") and not a.csrf_ok(b.csrf) and not a.csrf_ok(a.csrf[:-1])


def test_login_limiter_counts_failures_per_key_in_a_window() -> None:
    clock = Clock()
    lim = LoginLimiter(max_failures=3, window_s=60, clock=clock)
    for _ in range(3):
        assert lim.retry_after("user:a", "addr:1") is None
        lim.failed("user:a", "addr:1")
    wait = lim.retry_after("user:a", "addr:2")
    assert wait is not None and 0 < wait <= 60
    assert lim.retry_after("user:b", "addr:1") is not None  # the address is limited too
    assert lim.retry_after("user:b", "addr:2") is None
    clock.t += 61
    assert lim.retry_after("user:a", "addr:1") is None


def test_monitor_users_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.cli.main import main

    pw = tmp_path / "pw"
    pw.write_text("long enough password\n")
    state = str(tmp_path / "state")
    assert main(["users", "--state-dir", state, "add", "alice", "--role", "lead", "--password-file", str(pw)]) == 0
    assert main(["users", "--state-dir", state, "disable", "alice"]) == 0
    assert main(["users", "--state-dir", state, "list"]) == 0
    assert "alice\tlead\tdisabled" in capsys.readouterr().out
    assert main(["users", "--state-dir", state, "add", "alice", "--role", "lead", "--password-file", str(pw)]) == 2
    assert capsys.readouterr().err.strip() == "monitor: error: user 'alice' exists (use `monitor users passwd`)"
    assert main(["users", "--state-dir", state, "passwd", "nobody", "--password-file", str(pw)]) == 2
    assert "no user 'nobody'" in capsys.readouterr().err
