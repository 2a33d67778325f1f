"""`python -m monitor.servers.hooks token ROUTE` (monitor/servers/hooks/command.py)."""

from monitor.servers.hooks.command import main

raise SystemExit(main())
