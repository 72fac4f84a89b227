"""Tensors of one size laid out back to back, as the rows of one buffer.

A compiled merge kernel (methods/fused.py) merges tensors whose inputs and targets all lie back to back in one
call over their rows: each call of a kernel has a cost of its own, and rows run at the rate of one long tensor.
A model's layers repeat the same shapes, so its tensors fall into a few classes of one size: the engine lays out
the resident models, and the target it makes for a search, this way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def size_classes(tensors: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """The names of the floating tensors grouped by number of elements, dtype and device, in the mapping's
    order, for groups of two or more."""
    classes: dict[tuple, list[str]] = {}
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            classes.setdefault((tensor.numel(), tensor.dtype, tensor.device), []).append(name)
    return [names for names in classes.values() if len(names) > 1]


def stack(tensors: dict[str, torch.Tensor]) -> None:
    """Lay out each size class (size_classes) of `tensors` as the rows of one new buffer, in place: the same names,
    shapes and values. One class at a time, so that (when nothing else holds the tensors) the copies of one
    class are all the memory this takes besides."""
    for names in size_classes(tensors):
        rows = _rows_buffer(len(names), tensors[names[0]])
        for row, name in zip(rows, names, strict=True):
            row.copy_(tensors[name].reshape(-1))
            tensors[name] = row.view(tensors[name].shape)


def stack_parameters(model: torch.nn.Module, order: Iterable[str] = ()) -> None:
    """Move the model's parameters, each size class (size_classes), into the rows of one buffer (values kept),
    in the order of the names in `order` (the others after them, in the model's order): the order its inputs'
    rows are in, so that kernels can run over both.

    For models a search materializes into; not for one to be saved: save_pretrained takes tensors that share
    a buffer for tied weights."""
    named = dict(model.named_parameters())
    parameters = {name: named[name] for name in order if name in named} | named
    with torch.no_grad():
        for names in size_classes(parameters):
            rows = _rows_buffer(len(names), parameters[names[0]])
            for row, name in zip(rows, names, strict=True):
                parameter = parameters[name]
                row.copy_(parameter.reshape(-1))
                parameter.data = row.view(parameter.shape)


def _rows_buffer(count: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialized [count, like.numel()] buffer of like's dtype on its device."""
    return torch.empty(count, like.numel(), dtype=like.dtype, device=like.device)
