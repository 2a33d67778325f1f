"""Analyses that a sampled frame goes through; each turns a Sample into Findings."""
