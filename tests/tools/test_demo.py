"""`monitor demo` runs with nothing but the package: PyAV streams, embedded broker, console, summary."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_demo_detects_every_known_image_and_nothing_else() -> None:
    r = run_cli("demo", "--duration", "26", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.count("ALERT  stream demo-known") == 2
    assert "ALERT  stream demo-clean" not in r.stdout
    assert "expected 2, detected 2, false alerts 0, alerts on demo-clean 0" in r.stdout
    # The demo stops watching a stream when its publisher is done: no reconnect attempts after the last alert.
    assert "reconnecting" not in r.stdout + r.stderr, r.stdout + r.stderr
