"""The shipped example config is valid as written."""

from __future__ import annotations

from pathlib import Path

from monitor.config import models
from monitor.config.analyses import ClassifierConfig, OnnxClassifierConfig, ServiceClassifierConfig
from monitor.config.models import build_config, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_example_monitor_config_validates() -> None:
    cfg = build_config(load_config(CONFIGS / "monitor.example.yaml"), "example")
    assert cfg.streams and cfg.banks and cfg.servers[0].kind == "nginx-rtmp"
    assert not cfg.evidence.store_images and not cfg.hooks.enabled


def test_grafana_dashboard_uses_only_metrics_the_monitor_exports() -> None:
    import json
    import re

    from monitor.ops.metrics import Metrics

    exported = set()
    for metric in Metrics().registry.collect():
        exported |= {s.name for s in metric.samples} | {metric.name}
    dash = json.loads((CONFIGS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"monitor_[a-z_]+", e)}
    missing = {n for n in names if n not in exported and n.removesuffix("_bucket") + "_bucket" not in exported}
    # Counters without labels set yet expose only after first use; compare by family names too.
    families = {m.name for m in Metrics().registry.collect()}
    missing = {n for n in missing if n.removesuffix("_total").removesuffix("_bucket") not in families}
    assert not missing, missing


def test_every_section_is_importable_from_models() -> None:
    """monitor/config/ is split by concern; `monitor.config.models` still names every section."""
    assert all(hasattr(models, name) for name in models.__all__)
    assert issubclass(OnnxClassifierConfig, ClassifierConfig) and issubclass(ServiceClassifierConfig, ClassifierConfig)
    assert set(ClassifierConfig.model_fields) == {"name", "labels", "sampling", "incidents"}
    assert set(ClassifierConfig.model_fields) <= set(OnnxClassifierConfig.model_fields) & set(
        ServiceClassifierConfig.model_fields)
