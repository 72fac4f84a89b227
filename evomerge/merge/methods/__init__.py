"""Merge methods: pure functions of tensors and parameters, registered by name.

Adding a method is its module plus one import here.
"""

from evomerge.merge.methods import linear, model_stock, slerp, task_arithmetic  # noqa: F401  (registers them)
from evomerge.merge.methods.registry import MergeMethod, ParamSpec, get_method, method_names

__all__ = ["MergeMethod", "ParamSpec", "get_method", "method_names"]
