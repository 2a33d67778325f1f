"""`monitor cluster status`: the Ray cluster's nodes and a running monitor's stream actors (monitor/cluster/)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from monitor.common.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cluster", help="the Ray cluster a monitor runs its streams on: `cluster status`")
    csub = p.add_subparsers(dest="cluster_command", required=True)
    st = csub.add_parser("status", help="nodes, stream actors, streams per actor, samples/s, lag")
    st.add_argument("--config", type=Path, help="the monitor's config file (its cluster: section)")
    st.add_argument("--address", help="the Ray cluster (auto, HOST:PORT, ray://HOST:PORT); overrides the config")
    st.add_argument("--namespace", help="the monitor's Ray namespace; overrides the config")
    st.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from monitor.cluster.status import cluster_status, format_status
    from monitor.config.models import ClusterConfig, build_config, load_config

    cluster = build_config(load_config(args.config), str(args.config)).cluster if args.config else ClusterConfig()
    overrides = {k: v for k, v in (("address", args.address), ("namespace", args.namespace)) if v}
    if overrides:
        try:
            cluster = ClusterConfig.model_validate({**cluster.model_dump(), **overrides})
        except ValidationError as exc:
            problems = "; ".join(f"--{e['loc'][0]}: {str(e['msg']).removeprefix('Value error, ')}"
                                 for e in exc.errors())
            raise ConfigError(f"cluster status: {problems}") from None
    if cluster.address == "local":
        raise ConfigError("cluster status: cluster.address is local (a cluster inside the monitor's own process): "
                          "give the address of a running cluster with --address")
    # Ray's own notices (a node marked dead, say) are printed by its threads: to stderr, so stdout stays JSON
    with contextlib.redirect_stdout(sys.stderr):
        view = cluster_status(cluster)
        import ray

        ray.shutdown()
    print(json.dumps(view.json(), indent=2) if args.json else format_status(view))
    return 0
