"""Tooling around the monitor: demo, benchmarks, evaluation, soak. Not part of the runtime wheel."""
