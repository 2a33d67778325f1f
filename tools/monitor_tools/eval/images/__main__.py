"""`python -m monitor_tools.eval.images`: the offline image benchmark (monitor_tools/eval/images/cli.py)."""

from monitor_tools.eval.images.cli import main

raise SystemExit(main())
