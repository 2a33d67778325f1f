"""The shipped example config is valid as written."""

from __future__ import annotations

from pathlib import Path

from monitor.config import build_config, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_example_monitor_config_validates() -> None:
    cfg = build_config(load_config(CONFIGS / "monitor.example.yaml"), "example")
    assert cfg.streams and cfg.banks and cfg.servers[0].kind == "nginx-rtmp"
    assert not cfg.evidence.store_images and not cfg.hooks.enabled
