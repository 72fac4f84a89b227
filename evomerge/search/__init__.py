"""The search: the loop over a search space, its optimizers, the ledger that is its only state, and what
is read from it (results, held-out scores, status)."""
