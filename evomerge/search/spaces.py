"""The registered search spaces, in the order `candidate_from_dict` asks them whether data is theirs (the last
takes anything the others do not hold)."""

from __future__ import annotations

from evomerge.merge.space import ParameterSpace
from evomerge.search.space import SearchSpace
from evomerge.stack.space import DataFlowSpace

SPACES: tuple[type[SearchSpace], ...] = (DataFlowSpace, ParameterSpace)
