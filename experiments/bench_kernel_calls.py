"""Where a compiled candidate's time goes: the kernels' arithmetic, or the cost of one call per tensor.

    python experiments/bench_kernel_calls.py                       # SmolLM-135M shape, bf16, base + 2 sources
    python experiments/bench_kernel_calls.py --size 0.5b --sources 4

For random tensors of a Llama's shapes (no files, no engine), and each method, it times in one process:
- per tensor: every tensor merged by its own kernel call into its own target (as the engine merges into a
  target that is not stacked);
- as rows: the tensors of one size laid out as rows of one buffer (evomerge/merge/layout.py), in base, sources
  and targets, and merged in one kernel call per size (as the engine merges into a stacked target, a
  search's);
- one call: the same elements as one tensor, merged by one call (the kernels' throughput without any per-call
  cost);
- Python: the per-tensor loop with the kernel call left out (our code around the kernels);
- the memory-bound time: bytes a candidate must move / the bandwidth of a plain copy of every tensor
  (as in bench_merge.py).
TIES cuts every tensor at a fixed threshold instead of looking up its MagnitudeRanks (the kernel does the same
work for any threshold). Prints a table and saves experiments/results/bench_kernel_calls.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from bench_merge import SIZES, copy_seconds
from transformers import LlamaConfig, LlamaForCausalLM

from evomerge.merge import layout
from evomerge.merge.methods import fused
from evomerge.merge.methods.magnitude_cut import MagnitudeCut
from evomerge.merge.methods.task_arithmetic import (
    TaskArithmeticSettings,
    generalized_task_arithmetic,
    task_arithmetic_call,
)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_kernel_calls.json"
#: generalized_task_arithmetic's settings per method, as the registry gives them (weights and the method's
#: sparsity added per run)
METHODS = {
    "task_arithmetic": {"sparsification": None, "consensus": None},
    "ties": {"sparsification": "magnitude", "consensus": "sign", "normalize": True},
    "dare_ties": {"sparsification": "random", "consensus": "sign", "normalize": True},
}


def method_settings(method: str, sources: int) -> TaskArithmeticSettings:
    """The settings of `method` over this many sources: set weights, and half of each task vector kept."""
    weights = [0.5, 0.3, 0.2, 0.4, 0.1, 0.6][:sources]
    extra = {"ties": {"density": [0.5] * sources}, "dare_ties": {"drop": [0.5] * sources}}.get(method, {})
    return TaskArithmeticSettings(weight=weights, **METHODS[method], **extra)


class FixedCut:
    """Stands in for a tensor's MagnitudeRanks: the same cut at every k (half the entries, at 0.01)."""

    def __init__(self, n: int) -> None:
        self.cut_at = MagnitudeCut(0.01, n // 2)

    def cut(self, k: int) -> MagnitudeCut:
        return self.cut_at


def model_tensors(size: str, sources: int) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Random bf16 base tensors of the model's parameter shapes, and sources = base + small noise."""
    config = LlamaConfig(**SIZES[size], tie_word_embeddings=True)
    with torch.device("meta"):
        shapes = [p.shape for p in LlamaForCausalLM(config).parameters()]
    generator = torch.Generator().manual_seed(0)
    base = [torch.randn(shape, generator=generator).bfloat16() for shape in shapes]
    return base, [
        [(b.float() + torch.randn(b.shape, generator=generator) * 0.01).bfloat16() for b in base]
        for _ in range(sources)
    ]


def merge_call(method: str, sources: int) -> Callable[[torch.Tensor, list[torch.Tensor], torch.Tensor], None]:
    settings = method_settings(method, sources)
    checksum = torch.empty((), dtype=torch.float32)

    def call(base: torch.Tensor, inputs: list[torch.Tensor], out: torch.Tensor) -> None:
        ranks = [FixedCut(base.numel())] * sources if method == "ties" else None
        generalized_task_arithmetic(
            base, inputs, settings, compiled=True, out=out, checksum=checksum, ranks=ranks
        )

    return call


def merge_rows(
    method: str, sources: int
) -> Callable[[list[torch.Tensor], list[list[torch.Tensor]], list[torch.Tensor]], None]:
    """Like merge_call, over all tensors at once: each tensor's call planned, then calls of one size run as
    one (fused.run_many), as the engine runs them."""
    settings = method_settings(method, sources)

    def merge(
        base: list[torch.Tensor], per_source: list[list[torch.Tensor]], targets: list[torch.Tensor]
    ) -> None:
        groups: dict[tuple, list[fused.KernelCall]] = {}
        for b, inputs, out in zip(base, per_source, targets, strict=True):
            ranks = [FixedCut(b.numel())] * sources if method == "ties" else None
            call = task_arithmetic_call(out, b, list(inputs), settings, ranks)
            groups.setdefault(call.group(), []).append(call)
        for calls in groups.values():
            fused.run_many(calls)

    return merge


def stacked_copy(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of the tensors, those of one size as rows of one buffer (layout.stack)."""
    named = {str(i): t.clone() for i, t in enumerate(tensors)}
    layout.stack(named)
    return list(named.values())


def median_seconds(work: Callable[[], None], repeats: int) -> float:
    work()  # compiles, and warms the caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="smollm-135m", help="model shape")
    parser.add_argument("--sources", type=int, default=2, help="number of sources besides the base")
    parser.add_argument("--repeats", type=int, default=5, help="timed candidates per measurement (median)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON to write")
    args = parser.parse_args()

    base, sources = model_tensors(args.size, args.sources)
    per_source = list(zip(*sources, strict=True))
    targets = [torch.empty_like(b) for b in base]
    rows_base, rows_targets = stacked_copy(base), stacked_copy(targets)
    rows_per_source = list(zip(*[stacked_copy(source) for source in sources], strict=True))
    whole_base = torch.cat([b.reshape(-1) for b in base])
    whole_sources = [torch.cat([t.reshape(-1) for t in source]) for source in sources]
    whole_target = torch.empty_like(whole_base)
    classes = layout.size_classes({str(i): b for i, b in enumerate(base)})
    # a call per class or tensor
    calls_as_rows = len(classes) + len(base) - sum(len(names) for names in classes)
    copy = copy_seconds(base, args.repeats)
    rows = []
    for method in METHODS:
        call = merge_call(method, args.sources)

        def per_tensor(call=call) -> None:
            for b, inputs, out in zip(base, per_source, targets, strict=True):
                call(b, list(inputs), out)

        def as_rows(method=method) -> None:
            merge_rows(method, args.sources)(rows_base, rows_per_source, rows_targets)

        inputs = args.sources + 1
        row = {
            "method": method,
            "tensors": len(base),
            "per_tensor_seconds": median_seconds(per_tensor, args.repeats),
            "rows_seconds": median_seconds(as_rows, args.repeats),
            "kernel_calls_as_rows": calls_as_rows,
            "one_call_seconds": median_seconds(
                lambda call=call: call(whole_base, whole_sources, whole_target), args.repeats
            ),
            "memory_bound_seconds": copy * (inputs + 1) / 2,
        }
        with mock.patch.object(fused, "run", lambda *a, **k: True):
            row["python_seconds"] = median_seconds(per_tensor, args.repeats)
        row["per_call_ms"] = (row["per_tensor_seconds"] - row["one_call_seconds"]) / len(base) * 1e3
        rows.append(row)
        bound = row["memory_bound_seconds"]
        print(
            f"{method:16} per tensor {row['per_tensor_seconds']:.3f} s  "
            f"as rows {row['rows_seconds']:.3f} s ({row['kernel_calls_as_rows']} calls)  "
            f"one call {row['one_call_seconds']:.3f} s  "
            f"memory-bound {bound:.3f} s (x{row['per_tensor_seconds'] / bound:.1f}"
            f" / x{row['one_call_seconds'] / bound:.1f})  python {row['python_seconds']:.3f} s  "
            f"per call {row['per_call_ms']:.2f} ms over one call's rate"
        )
    figures = {
        "model": f"random Llama tensors, {args.size} shape, bfloat16, tied embeddings",
        "parameters": whole_base.numel(),
        "sources": args.sources,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "settings": METHODS,
        "ties_cut": "a fixed threshold per tensor (0.01, half the entries), not looked up",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
