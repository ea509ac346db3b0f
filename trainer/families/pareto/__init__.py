"""Pareto Merging (seed 002): one base merge plus a preference-conditioned low-rank update."""
