"""The Grafana dashboard's Cluster row (configs/grafana-dashboard.json) shows every per-actor series the engine
exports (monitor/ops/metrics.py ClusterMetrics), and nothing it does not export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from monitor.ops.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "configs" / "grafana-dashboard.json"


def test_the_cluster_row_queries_every_cluster_metric() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    row = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"].startswith("Cluster"))
    exprs = [t["expr"] for p in panels[row + 1:] for t in p.get("targets", [])]
    named = {n.removesuffix("_total") for e in exprs for n in re.findall(r"monitor_cluster_[a-z_]+", e)}
    families = {m.name for m in Metrics().registry.collect() if m.name.startswith("monitor_cluster_")}
    assert families and named == families, (named ^ families)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
