"""What `monitor cluster status` shows: the Ray cluster's nodes and a running monitor's stream actors.

It joins the cluster as a second driver, finds the monitor's actors by name in its namespace
(monitor/cluster/supervisor.py names them) and asks each for its streams and last load report; it changes nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from monitor.cluster.supervisor import ACTOR_PREFIX, ClusterError, connect
from monitor.config.models import ClusterConfig

if TYPE_CHECKING:
    from ray import ObjectRef

STATUS_TIMEOUT_S = 10.0  # an actor that does not answer by then is shown as not answering


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    address: str
    alive: bool
    head: bool
    cpus: float


@dataclass(frozen=True, slots=True)
class ClusterView:
    namespace: str
    nodes: list[NodeInfo]
    actors: list[dict[str, object]]  # each actor's own answer (monitor/cluster/actor.py StreamActor.status)

    def json(self) -> dict[str, object]:
        return {"namespace": self.namespace, "nodes": [dataclasses.asdict(n) for n in self.nodes],
                "actors": self.actors}


def cluster_status(cfg: ClusterConfig) -> ClusterView:
    connect(cfg, log_to_driver=False)  # first: without Ray installed it says how to get it
    import ray

    listed: list[dict[str, object]] = ray.nodes()  # type: ignore[no-untyped-call]
    nodes = []
    for n in listed:
        resources = n.get("Resources")
        res = resources if isinstance(resources, dict) else {}
        nodes.append(NodeInfo(str(n.get("NodeID")), str(n.get("NodeManagerAddress")), bool(n.get("Alive")),
                              "node:__internal_head__" in res, float(res.get("CPU", 0.0))))
    names = sorted(a for a in ray.util.list_named_actors() if a.startswith(ACTOR_PREFIX))
    actors: list[dict[str, object]] = []
    refs: dict[str, ObjectRef[dict[str, object]]] = {}
    for name in names:
        try:
            refs[name] = ray.get_actor(name).status.remote()
        except ValueError:
            continue  # gone since it was listed
    for name, ref in refs.items():
        try:
            actors.append(ray.get(ref, timeout=STATUS_TIMEOUT_S))
        except Exception as exc:
            text = str(exc).strip()
            actors.append({"actor": name, "error": text.splitlines()[0] if text else type(exc).__name__})
    return ClusterView(cfg.namespace, nodes, actors)


def _num(a: dict[str, object], key: str) -> float:
    v = a.get(key)
    return float(v) if isinstance(v, int | float) else 0.0


def format_status(view: ClusterView) -> str:
    """The status as a few aligned lines for a terminal."""
    lines = [f"nodes ({len(view.nodes)}):"]
    for n in view.nodes:
        lines.append(f"  {n.node_id[:12]}  {n.address:<15}  {'alive' if n.alive else 'dead':<5}  {n.cpus:g} CPU"
                     f"{'  head' if n.head else ''}")
    lines.append(f"stream actors ({len(view.actors)}):")
    lines.append(f"  {'actor':<34} {'node':<12} {'streams':>7} {'samples/s':>9} {'cpu':>5} {'lag s':>6} "
                 f"{'queued':>6} {'dropped':>7}")
    for a in view.actors:
        if "error" in a:
            lines.append(f"  {a['actor']!s:<34} not answering: {a['error']}")
            continue
        listed = a.get("streams")
        streams = [str(s) for s in listed] if isinstance(listed, list) else []
        lines.append(f"  {a.get('actor')!s:<34} {str(a.get('node'))[:12]:<12} {len(streams):>7} "
                     f"{_num(a, 'samples_per_s'):>9.2f} {_num(a, 'cpu'):>5.2f} {_num(a, 'lag_s'):>6.2f} "
                     f"{_num(a, 'queued'):>6.0f} {_num(a, 'dropped'):>7.0f}")
        if streams:
            lines.append(f"    {', '.join(streams)}")
    return "\n".join(lines)


__all__ = ["ClusterError", "ClusterView", "NodeInfo", "cluster_status", "format_status"]
