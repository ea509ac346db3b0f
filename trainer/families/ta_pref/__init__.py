"""Task arithmetic + preference as a family (kind point-set)."""
