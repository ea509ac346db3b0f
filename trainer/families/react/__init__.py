"""ReACT (AAAI 2026): closed-form per-task corrections of a fixed merge's features (kind feature-map)."""
