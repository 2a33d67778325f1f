"""The `monitor` command: one module per command."""
