"""The `cluster:` section (monitor/config/cluster.py): the default stays local processes, bad values are one line
naming the key, and `engine: ray` picks the Ray supervisor (monitor/app/engine.py build_supervisor)."""

from __future__ import annotations

import time

import pytest

from monitor.app.engine import build_supervisor
from monitor.cluster.supervisor import RaySupervisor
from monitor.common.errors import ConfigError
from monitor.config.models import build_config
from monitor.runtime.workers import ShardedSupervisor


class NoSink:
    def on_state(self, change: object) -> None: ...

    def on_sample(self, sample: object, findings: object, timing: object) -> None: ...


def test_the_default_is_local_processes() -> None:
    cfg = build_config({})
    assert cfg.cluster.engine == "local" and cfg.cluster.address == "auto"
    assert isinstance(build_supervisor(build_config({"workers": 1}), [], NoSink()), ShardedSupervisor)


def test_engine_ray_picks_the_ray_supervisor_without_touching_ray() -> None:
    cfg = build_config({"cluster": {"engine": "ray", "address": "ray://10.0.0.1:10001", "cpus_per_actor": 2}})
    sup = build_supervisor(cfg, [], NoSink())
    assert isinstance(sup, RaySupervisor) and sup.cfg.cpus_per_actor == 2


@pytest.mark.parametrize(("section", "message"), [
    ({"address": "10.0.0.1"}, "cluster.address: must be auto, local, ray://HOST:PORT or HOST:PORT"),
    ({"engine": "spark"}, "cluster.engine: Input should be 'local' or 'ray'"),
    ({"heartbeat_s": 2, "dead_after_s": 3}, "cluster: dead_after_s must be at least twice heartbeat_s"),
    ({"queue_size": 10}, "cluster.queue_size: Input should be greater than or equal to 100"),
    ({"nodes": 3}, "cluster.nodes: unknown key"),
])
def test_bad_values_are_one_line_naming_the_key(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"cluster": section}, "monitor.yaml")
    assert str(err.value).startswith(f"monitor.yaml: {message}") and "\n" not in str(err.value)


def test_an_absent_cluster_is_one_line_at_once() -> None:
    import socket

    from monitor.cluster.supervisor import ClusterError, connect
    from monitor.config.models import ClusterConfig

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=rf"cluster.address 127.0.0.1:{port}: no Ray cluster answers"):
        connect(ClusterConfig(engine="ray", address=f"127.0.0.1:{port}"))
    assert time.monotonic() - t0 < 10
