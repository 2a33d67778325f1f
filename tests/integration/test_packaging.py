"""The runtime wheel holds the runtime only, and the runtime runs without the tools and their dependencies.

The repository has two distributions: the runtime (pyproject.toml: `monitor`, `pipelines`) and the tools
(tools/pyproject.toml: `monitor_tools`, `test_streams`, with amqtt, matplotlib, FAISS and scikit-image). An
operator's `pip install .` gets the first only, so `monitor run` must work with none of the second importable.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from test_streams.infra import Mosquitto
from tests.conftest import REPO, MqttCollector, require_tools

# What a runtime-only install does not have: the tools, and the dependencies only they or extras bring.
NOT_IN_A_RUNTIME_INSTALL = ("monitor_tools", "test_streams", "tests", "matplotlib", "amqtt", "faiss", "skimage",
                            "onnx", "onnxruntime", "ray", "selenium", "pytest", "hypothesis")

BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in a runtime install)", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
from monitor.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _build_wheel(out: Path) -> Path:
    # Without build isolation where setuptools and wheel are at hand (no download); pip fetches them otherwise.
    local = importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel")
    isolation = ["--no-build-isolation"] if local else []
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("livestream_safety_monitor-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    return wheels[0]


@pytest.mark.slow
def test_the_runtime_wheel_holds_no_test_or_tooling_code(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"monitor", "pipelines"}, sorted(tops)
    assert not [n for n in names if "/test" in n or n.startswith(("monitor_tools", "test_streams", "tests"))]
    # The files the runtime reads at run time came along.
    assert "monitor/contracts/schemas/alert.schema.json" in names and "monitor/py.typed" in names
    assert {"monitor/web/static/index.html", "monitor/web/static/app.js", "monitor/web/static/style.css"} <= set(names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    for dep in ("matplotlib", "amqtt", "faiss", "scikit-image", "onnx", "ray", "selenium"):
        assert not [r for r in requires if dep in r], (dep, requires)


@pytest.mark.realinfra
@pytest.mark.slow
def test_monitor_run_alerts_with_none_of_the_tools_importable(
    mosquitto: Mosquitto, bank_csv: Path, tmp_path: Path, collector_factory: Callable[..., MqttCollector]
) -> None:
    require_tools()
    video = tmp_path / "known.mp4"
    # Made with the tools (this process has them); watched by a monitor process that has not.
    made = subprocess.run([sys.executable, "-m", "test_streams.live", str(video), "--duration", "8",
                           "--show", "1:2:6"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    collector = collector_factory(mosquitto.port, "pkg/#")
    script = BLOCKER.format(blocked=set(NOT_IN_A_RUNTIME_INSTALL))
    proc = subprocess.run([sys.executable, "-c", script, "run", "--once", "--stream", f"s={video}",
                           "--bank", f"known={bank_csv}", "--broker", mosquitto.url, "--prefix", "pkg",
                           "--node", "n"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "not in a runtime install" not in proc.stderr, proc.stderr
    alerts = collector.wait_for(lambda m: "/alerts/" in m.topic, 10)
    assert alerts and alerts[0].json()["entry_id"] == "2", (proc.stderr, [m.topic for m in collector.messages])


def test_a_tool_command_without_the_tools_says_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import monitor.cli.main as cli

    monkeypatch.setattr(cli, "entry_points", lambda group: [])  # as in a runtime-only install
    for command in ("demo", "bench", "eval"):
        assert cli.main([command, "--quick"]) == 2
        err = capsys.readouterr().err
        assert f"`monitor {command}` is part of the monitor's tools" in err and "pip install -e tools" in err, err
    assert "[needs the tools: pip install -e tools]" in " ".join(cli.build_parser().format_help().split())
