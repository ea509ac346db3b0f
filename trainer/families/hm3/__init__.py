"""HM3 (seed 001): a preference-weighted DARE-TIES merge (parameter level), then a per-block choice
of source searched by a preference-conditioned policy trained with PPO (architecture level)."""
