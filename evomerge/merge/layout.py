"""Tensors of one size laid out back to back, as the rows of one buffer.

A compiled merge kernel (methods/fused.py) merges tensors whose inputs and targets all lie back to back in one
call over their rows: each call of a kernel has a cost of its own, and rows run at the rate of one long
tensor. A model's layers repeat the same shapes, so its tensors fall into a few classes of one size: the
engine lays out the resident models, and the target it makes for a search, this way.
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


def stack(tensors: dict[str, torch.Tensor], values: bool = True) -> None:
    """Lay out each size class (size_classes) of `tensors` as the rows of one new buffer, in place (the same
    names and shapes, and values unless `values` is False), and move every other tensor into memory of its
    own.

    Why the others move too: tensors loaded from safetensors are views of the file's mapping, and any one left
    would keep the whole file mapped, and as resident as the rows that copy it. One class at a time, so that
    the copies of one class are all the memory this takes besides the tensors (when nothing else holds
    them)."""
    classes = size_classes(tensors)
    for names in classes:
        rows = _rows_buffer(len(names), tensors[names[0]])
        for row, name in zip(rows, names, strict=True):
            if values:
                row.copy_(tensors[name].reshape(-1))
            tensors[name] = row.view(tensors[name].shape)
    stacked = {name for names in classes for name in names}
    for name in [name for name in tensors if name not in stacked]:
        tensors[name] = tensors[name].clone() if values else torch.empty_like(tensors[name])


def stack_parameters(model: torch.nn.Module, order: Iterable[str] = (), values: bool = True) -> None:
    """`stack` the model's parameters, each class's rows in the order of the names in `order` (the others
    after them, in the model's order): the order its inputs' rows are in, so that kernels can run over both.
    Without `values`, the parameters are left uninitialized: for a model whose every parameter is written
    next, this spares reading the file a loaded model maps.

    For models a search materializes into; not for one to be saved: save_pretrained takes tensors that share
    a buffer for tied weights."""
    named = dict(model.named_parameters())
    parameters = {name: named[name] for name in order if name in named} | named
    tensors = {name: parameter.data for name, parameter in parameters.items()}
    stack(tensors, values)
    for name, parameter in parameters.items():
        parameter.data = tensors[name]


def _rows_buffer(count: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialized [count, like.numel()] buffer of like's dtype on its device."""
    return torch.empty(count, like.numel(), dtype=like.dtype, device=like.device)
