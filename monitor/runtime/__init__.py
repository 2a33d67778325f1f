"""Where streams run: stream workers, worker processes, the supervisor, bank reloads."""
