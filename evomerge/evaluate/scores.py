"""What an evaluator returns, in a module of its own so that reading scores from a ledger (status, report)
does not import the evaluator and the model code it needs."""

from __future__ import annotations

#: `{task: {metric: value}}`.
Scores = dict[str, dict[str, float]]
