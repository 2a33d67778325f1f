"""Shared building blocks with no policy of their own: errors, URL redaction, safe text, state files."""
