"""Tooling around the monitor: demo, benchmarks, evaluation, soak. Not part of the runtime wheel."""

from pathlib import Path

# tools/ of this checkout (the folder holding monitor_tools and test_streams): the benchmarks and `monitor eval` start
# `monitor run`, the stream generators and their own helper processes from there
TOOLS_ROOT = Path(__file__).resolve().parent.parent
