"""`python -m monitor_tools.eval.live`: the same as `monitor eval` (monitor_tools/eval/live/cli.py)."""

from monitor_tools.eval.live.cli import main

raise SystemExit(main())
