"""The composition root: builds everything from the configuration and routes the results (engine.py, `Engine`).

The only package that imports every other; by concern:
  state.py        the state directory: lock, outbox, evidence log, signing key
  banks.py        banks loaded, watched and reloaded; the negative-bank policy
  records.py      every evidence body, and the one thread that writes them and signs heads
  publishing.py   alerts, incident and stream states, evidence heads over MQTT; the flush at shutdown
  commands.py     console commands on incidents, and the proposals they leave
  enforcement.py  terminate: ban, then drop the publisher
  streams.py      the stream registry the hook server and discovery call
  services.py     the server APIs, the hook server and discovery
  health.py       the health message, the gauges, counters kept as deltas
"""
