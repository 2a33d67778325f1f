"""Moderation consoles: the line console and the Textual console."""
