"""Scoring models on tasks: the built-in fast scorers and lm-eval, with the split discipline that keeps
held-out scores honest (the optimizer sees only the search split)."""
