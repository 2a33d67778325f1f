"""The evidence log: append-only, hash-chained, signed heads, exports for reports."""
