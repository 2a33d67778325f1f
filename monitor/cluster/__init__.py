"""Streams on a Ray cluster: the same stream code, in actors on many nodes (`cluster: {engine: ray}`).

  coordinator.py  which actor runs which stream: placement by measured load, heartbeats, failover, drains
  actor.py        StreamActor: one LocalSupervisor shard on one node, its bounded event buffer, its load report
  supervisor.py   RaySupervisor: the engine's `Supervisor` over the actors (start, poll, move, reload)
  banks.py        banks put once in the object store, read by the actors without copying the codes
  status.py       what `monitor cluster status` shows, read from a running monitor's actors

Ray is an optional extra (`pip install '.[ray]'`); nothing here imports it at module level.
"""
