"""Benchmarks behind `monitor bench ingest|match|soak|evasion|classify` (monitor_tools/commands.py): each prints one
JSON document on stdout; the live ones share monitor_tools/bench/harness.py."""
