"""MAP (seed 000, Model merging with Amortized Pareto front): design, evaluation, surrogates, search."""
