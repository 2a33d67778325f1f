"""From findings to incidents: pure, synchronous incident logic on an injected clock."""
