"""`python -m monitor_tools.bench.ingest`: the same as `monitor bench ingest` (monitor_tools/bench/ingest/cli.py)."""

from monitor_tools.bench.ingest.cli import main

raise SystemExit(main())
