"""Streaming-server integration: publish hooks, server APIs, bans and discovery."""
