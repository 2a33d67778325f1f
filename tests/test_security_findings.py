"""Issue 19's security findings, one test (or more) per finding, named after it.

Each test here failed before its fix. Findings with larger test files of their own (the evidence
signatures, bans, the state files) have their tests there; SECURITY.md lists where each one is.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
    from monitor.config import build_config
    from monitor.errors import ConfigError

    for url in ("mqtt://node-1:s3cret-pw@127.0.0.1:1883", "mqtts://s3cret-pw@127.0.0.1", "mqtt://:s3cret-pw@h"):
        with pytest.raises(ConfigError) as err:
            build_config({"broker": {"url": url}}, "monitor.yaml")
        text = str(err.value)
        assert text.startswith("monitor.yaml: broker.url: must not hold user:password@"), text
        assert "s3cret-pw" not in text


def test_finding6_password_on_the_command_line_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.cli import main

    for argv in (["run", "--password", "s3cret-pw", "--validate-config"],
                 ["console", "--password", "s3cret-pw", "--json"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--password is no longer accepted" in err and "--password-file" in err, err
        assert "s3cret-pw" not in err and "Traceback" not in err


def test_finding6_console_broker_url_error_does_not_echo_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.cli import main

    assert main(["console", "--broker", "mqtt://u:s3cret-pw@127.0.0.1:1", "--json"]) == 2
    err = capsys.readouterr().err
    assert "must not hold user:password@" in err and "s3cret-pw" not in err and "Traceback" not in err


def test_finding6_password_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.cli import _broker_overrides, build_parser
    from monitor.config import BROKER_PASSWORD_ENV, BrokerConfig

    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    args = build_parser().parse_args(["console", "--username", "console", "--password-file", str(pw)])
    assert BrokerConfig.model_validate(_broker_overrides(args)).secret() == "from-file"
    monkeypatch.setenv(BROKER_PASSWORD_ENV, "from-env")
    assert BrokerConfig(username="console").secret() == "from-env"
    assert BrokerConfig(username="console", password_file=pw).secret() == "from-file"  # the file wins
    monkeypatch.delenv(BROKER_PASSWORD_ENV)
    assert BrokerConfig(username="console").secret() is None
