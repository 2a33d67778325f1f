"""Gaps a review left: sample images on hash-match evidence, earlier matches linked to the incident they fold into,
`--validate-config` loading web.trusted_command_keys, the signed command envelope's contract, and the two-person
rule for permanent-ban terminates checked by the monitor itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from monitor.evidence.signing import generate_signing_key

# ------------------------------------------------------------------------ 3. --validate-config loads the keys


def _validate(tmp_path: Path, web: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from monitor.cli.main import main as cli_main

    config = tmp_path / "c.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nweb: {web}\n")
    code = cli_main(["run", "--config", str(config), "--validate-config"])
    return code, capsys.readouterr().err


def test_validate_config_loads_the_trusted_command_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, pub, _ = generate_signing_key(tmp_path / "web.key")
    code, err = _validate(tmp_path, f"{{trusted_command_keys: [{pub}], require_signed_commands: true}}", capsys)
    assert code == 0, err


@pytest.mark.parametrize("problem", ["missing", "not a key", "private key", "group-writable", "none required"])
def test_validate_config_refuses_a_bad_trusted_command_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           problem: str) -> None:
    key, pub, _ = generate_signing_key(tmp_path / "web.key")
    expect = "web.trusted_command_keys[1]"
    keys = [pub, tmp_path / "other.pub"]
    if problem == "missing":
        expect += f": {tmp_path / 'other.pub'}: cannot read"
    elif problem == "not a key":
        keys[1].write_text("hello\n")
        expect += ": " + str(keys[1]) + ": not a PEM public key"
    elif problem == "private key":
        keys[1] = key
        expect += ": " + str(key) + ": not a PEM public key"
    elif problem == "group-writable":
        _, keys[1], _ = generate_signing_key(tmp_path / "other.key")
        os.chmod(keys[1], 0o664)
        expect += ": " + str(keys[1]) + ": writable by group or others (mode 0664)"
    else:
        keys = []
        expect = "web.require_signed_commands is on but web.trusted_command_keys lists no key"
    listed = ", ".join(str(k) for k in keys)
    code, err = _validate(tmp_path, f"{{trusted_command_keys: [{listed}], require_signed_commands: true}}", capsys)
    assert code == 2
    assert expect in err and "Traceback" not in err
    assert err.count("\n") == 1  # one line
