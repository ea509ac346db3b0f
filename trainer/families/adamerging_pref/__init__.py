"""AdaMerging + preference as a family, one optimisation per point (kind point-set)."""
