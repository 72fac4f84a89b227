"""Scoring models on tasks: the built-in fast scorers, with the split discipline of DESIGN.md decision 4."""
