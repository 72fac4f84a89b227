"""Seconds per merge candidate: evomerge's in-place engine against mergekit, on a random-initialized Llama.

    python experiments/bench_merge.py                      # SmolLM-135M shape, bf16, base + 2, 3 and 4
    sources python experiments/bench_merge.py --size 0.5b --sources 3
    python experiments/bench_merge.py --size tiny --sources 2 --repeats 1 --no-demo    # a quick check

For each number of sources and each method (linear, task arithmetic, TIES, DARE-TIES) it measures, in one run:
- ours: seconds per candidate written in place into a resident model (`MergeEngine.materialize`, into a target
  made as a search makes it: `new_target(stacked=True)`), every candidate with new weights, so nothing is
  skipped; peak memory of the process as a multiple of the model size, over the timed candidates (what a
  search holds), and through the first candidate (loading, compiling the kernels, finding the cuts);
- the memory-bound time: the bytes a candidate must move (read the base and every source, write the target)
  divided by the bandwidth of a plain tensor copy of the model measured in the same process;
- mergekit (when installed: experiments/setup_mergekit.sh, or --mergekit PATH): `mergekit-yaml` on the same
  recipe (a fresh process that writes the merge to disk, as mergekit-evolve's on-disk path does), and for
  3 sources its in-memory path (experiments/mergekit_in_memory.py, in mergekit's venv);
- agreement with mergekit (3 sources saved in float32, so that magnitudes rarely tie; float32 out; parameters
  where the definitions agree): max abs and max relative (to the tensor's largest entry) difference;
- candidates per hour on the demo (configs/demo.yaml over the zoo, merge + evaluate, serial, CPU).
Prints a table and saves everything to experiments/results/bench_merge.json.

GPU (--device cuda) runs the same code; the figures in results/ are CPU figures until a GPU run is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "bench_merge.json"
DEFAULT_MERGEKIT = ROOT / ".mergekit-venv" / "bin" / "mergekit-yaml"
METHODS = ("linear", "task_arithmetic", "ties", "dare_ties")
#: Llama shapes: SmolLM-135M's, a ~0.5B one (Qwen2.5-0.5B's widths), and a tiny one for quick checks.
SIZES = {
    "smollm-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
    ),
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
    ),
}
WEIGHTS = (0.5, 0.3, 0.2, 0.4)
#: Where our definitions deliberately differ from mergekit's, per method (the agreement runs set mergekit's
#: parameters so that both compute the same thing, and say which).
DIFFERENCES = {
    "linear": "Same definition (weighted sum divided by the sum of the weights).",
    "task_arithmetic": "Same definition (base + lambda * sum_i w_i delta_i, no normalization by default).",
    "ties": "Same definition, with one deliberate difference: mergekit keeps at least one entry per tensor "
    "(k = max(1, floor(density n))) and breaks magnitude ties by its sort, we keep floor(density n) "
    "(possibly none) and break ties to the lower index, so that CPU and GPU keep the same entries.",
    "dare_ties": (
        "Deliberately different: we rescale kept entries by 1 / (1 - drop) as the DARE paper does and "
        "normalize by the agreeing weights by default (mergekit rescales to the L1 norm of the task "
        "vector and does not normalize); our random masks are a hash of the element's index "
        "(evomerge/merge/methods/counter_random.py: the same on every device), mergekit's come from torch's "
        "generator, so agreement is measured at drop 0 (density 1) with mergekit's normalize on, which "
        "checks the sign election."
    ),
}


def build_models(directory: Path, size: str, sources: int, dtype: torch.dtype) -> list[Path]:
    """A random base and `sources` fine-tune-like sources (base + small noise), saved as HF directories."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **SIZES[size],
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        dtype=dtype,
        architectures=["LlamaForCausalLM"],
    )
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in LlamaForCausalLM(config).named_parameters()}
    generator = torch.Generator().manual_seed(0)
    base = {name: torch.randn(shape, generator=generator) * 0.02 for name, shape in shapes.items()}
    paths = []
    for index in range(sources + 1):
        path = directory / ("base" if index == 0 else f"source{index}")
        if not (path / "model.safetensors").is_file():
            path.mkdir(parents=True, exist_ok=True)
            noise = 0.0 if index == 0 else 0.002
            tensors = {
                name: (t + noise * torch.randn(t.shape, generator=generator)).to(dtype).contiguous()
                for name, t in base.items()
            }
            save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
            config.save_pretrained(path)
        paths.append(path)
    return paths


def our_recipe(method: str, paths: list[Path], sources: int, candidate: int, agreement: bool = False) -> dict:
    """Our recipe for a method; `candidate` shifts the weights so that every timed candidate differs."""
    entries = []
    for i in range(sources):
        entry: dict = {"model": str(paths[i + 1]), "weight": WEIGHTS[i] + 0.01 * candidate}
        if method == "ties":
            entry["density"] = 0.5
        if method == "dare_ties":
            entry["drop"] = 0.0 if agreement else 0.5
        entries.append(entry)
    recipe = {"method": method, "sources": entries, "seed": 0}
    if method != "linear":
        recipe["base"] = str(paths[0])
    return recipe


def mergekit_config(
    method: str, paths: list[Path], sources: int, dtype: str, agreement: bool = False
) -> dict:
    models = []
    for i in range(sources):
        parameters: dict = {"weight": WEIGHTS[i]}
        if method == "ties":
            parameters["density"] = 0.5
        if method == "dare_ties":
            parameters["density"] = 1.0 if agreement else 0.5
        models.append({"model": str(paths[i + 1]), "parameters": parameters})
    config = {"merge_method": method, "models": models, "dtype": dtype, "out_dtype": dtype}
    if method != "linear":
        config["base_model"] = str(paths[0])
    if method == "dare_ties" and agreement:
        config["parameters"] = {"normalize": True}
    return config


# --------------------------------------------------------------------------- ours (run in a worker process)


def peak_rss() -> int:
    """This process's peak resident memory in bytes since it started its program (VmHWM: unlike ru_maxrss, it
    does not inherit the peak of the process that forked it)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def reset_peak_rss() -> None:
    """Start this process's VmHWM anew from its present resident memory (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def copy_seconds(tensors: list[torch.Tensor], repeats: int) -> float:
    """Median seconds of a plain copy of all `tensors` into preallocated ones (the model's memcpy)."""
    targets = [torch.empty_like(t) for t in tensors]
    times = []
    for _ in range(repeats + 1):
        synchronize(tensors[0].device)
        started = time.perf_counter()
        for target, tensor in zip(targets, tensors, strict=True):
            target.copy_(tensor)
        synchronize(tensors[0].device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(args: argparse.Namespace) -> dict:
    """Time `materialize` for one method and number of sources; runs in its own process for its peak
    memory."""
    from evomerge.merge.engine import MergeEngine, model_bytes
    from evomerge.merge.recipe import recipe_from_dict

    rss_before = peak_rss()
    paths = [Path(p) for p in args.paths]
    first = recipe_from_dict(our_recipe(args.method, paths, args.sources, 0))
    engine = MergeEngine.from_recipe(first, device=args.device, kernels=args.kernels)
    model = engine.new_target(stacked=True)
    size = model_bytes(engine.reference)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    engine.materialize(first, model)  # warm-up: compiles the kernel and sorts the task vectors (TIES) once
    first_seconds = time.perf_counter() - started
    peak_first = peak_rss()
    reset_peak_rss()  # from here: the peak of a search's every later candidate
    times = []
    for candidate in range(1, args.repeats + 1):
        recipe = recipe_from_dict(our_recipe(args.method, paths, args.sources, candidate))
        synchronize(engine.device)
        started = time.perf_counter()
        engine.materialize(recipe, model)
        synchronize(engine.device)
        times.append(time.perf_counter() - started)
    # peaks before the copy below, whose buffers are the benchmark's yardstick, not the engine's
    peak = peak_rss()
    peak_device = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
    copy = copy_seconds(list(engine.reference.tensors.values()), args.repeats)
    inputs = args.sources + (0 if args.method == "linear" else 1)
    result = {
        "seconds": statistics.median(times),
        "seconds_all": times,
        "kernels": "compiled" if engine.compiled else "blocks",
        "first_candidate_seconds": first_seconds,
        "model_bytes": size,
        "copy_seconds": copy,
        "copy_bandwidth_gb_s": 2 * size / copy / 1e9,
        "bytes_moved": (inputs + 1) * size,
        "memory_bound_seconds": (inputs + 1) * size / (2 * size / copy),
        "peak_rss_bytes": peak,
        "rss_before_bytes": rss_before,
        "peak_models": (peak - rss_before) / size,
        "peak_models_through_first_candidate": (peak_first - rss_before) / size,
        "memory_goal_models": inputs + 2,
    }
    if args.device.startswith("cuda"):
        result["peak_device_bytes"] = peak_device
        result["peak_models"] = peak_device / size
        result["device_name"] = torch.cuda.get_device_name()
    return result


def run_agreement(args: argparse.Namespace) -> dict:
    """Our float32 merge against mergekit's float32 output in args.mergekit_out: max abs and relative
    difference."""
    from safetensors.torch import load_file

    from evomerge.merge.engine import MergeEngine
    from evomerge.merge.recipe import recipe_from_dict

    paths = [Path(p) for p in args.paths]
    recipe = recipe_from_dict(our_recipe(args.method, paths, args.sources, 0, agreement=True))
    theirs: dict[str, torch.Tensor] = {}
    for file in sorted(Path(args.mergekit_out).glob("*.safetensors")):
        theirs.update(load_file(file))
    engine = MergeEngine.from_recipe(recipe)
    worst_abs, worst_rel, worst_tensor, compared, differing, elements = 0.0, 0.0, None, 0, 0, 0
    for name, ours in engine.merged_tensors(recipe):
        if name not in theirs:
            continue
        gap = (ours - theirs[name].float()).abs()
        differing += int((gap > 1e-6 * float(ours.abs().max())).sum())
        elements += gap.numel()
        difference = float(gap.max())
        worst_abs = max(worst_abs, difference)
        relative = difference / max(float(ours.abs().max()), 1e-30)
        if relative > worst_rel:
            worst_rel, worst_tensor = relative, name
        compared += 1
    return {
        "max_abs_diff": worst_abs,
        "max_rel_diff": worst_rel,
        "worst_tensor": worst_tensor,
        "tensors_compared": compared,
        "elements_differing": differing,
        "elements_compared": elements,
    }


def worker(args: argparse.Namespace) -> dict:
    return run_ours(args) if args.worker == "ours" else run_agreement(args)


def in_worker(
    kind: str, args: argparse.Namespace, paths: list[Path], method: str, sources: int, **extra
) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--method",
        method,
        "--sources",
        str(sources),
        "--repeats",
        str(args.repeats),
        "--device",
        args.device,
        "--kernels",
        args.kernels,
        "--paths",
        *map(str, paths),
    ]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {kind} {method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- mergekit


#: Runs argv[1:] and writes its peak RSS (bytes) to stderr's last line. A child's ru_maxrss starts at the peak
#: of the process that forked it, so the command is forked from this small interpreter, not from the
#: benchmark.
PEAK_WRAPPER = (
    "import os, sys; pid = os.fork()\n"
    "if pid == 0: os.execvp(sys.argv[1], sys.argv[1:])\n"
    "_, status, usage = os.wait4(pid, 0); print(usage.ru_maxrss * 1024, file=sys.stderr)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))"
)


def run_child(command: list[str]) -> tuple[float, int, str]:
    """Run a command; its wall seconds, its peak RSS in bytes, and its stdout (raises if it fails)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK_WRAPPER, *command], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed:\n{done.stderr[-3000:]}")
    return seconds, int(done.stderr.strip().splitlines()[-1]), done.stdout


def mergekit_yaml(executable: Path, config: dict, workdir: Path, device: str) -> tuple[float, int, Path]:
    """Run mergekit-yaml on a config; seconds, peak RSS, and the output directory."""
    config_path = workdir / f"mergekit-{time.monotonic_ns()}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = workdir / f"{config_path.stem}-out"
    command = [str(executable), str(config_path), str(out), "--quiet", "--no-copy-tokenizer"]
    if device.startswith("cuda"):
        command.append("--cuda")
    seconds, peak, _ = run_child(command)
    return seconds, peak, out


def mergekit_in_memory(executable: Path, config: dict, workdir: Path, repeats: int) -> dict:
    config_path = workdir / f"mergekit-memory-{time.monotonic_ns()}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    python = executable.parent / "python"
    script = ROOT / "experiments" / "mergekit_in_memory.py"
    _, _, output = run_child([str(python), str(script), str(config_path), "--repeats", str(repeats)])
    return json.loads(output.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the demo


def demo_candidates_per_hour(evaluations: int) -> dict:
    """Serial CPU search on configs/demo.yaml (the zoo): candidates per hour from merge + evaluate times."""
    from evomerge.config import load_config
    from evomerge.search.loop import Search

    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(
            ROOT / "configs" / "demo.yaml",
            {"run_dir": run_dir, "budget.evaluations": evaluations, "device": "cpu"},
        )
        started = time.perf_counter()
        search = Search(config, progress=False)
        setup = time.perf_counter() - started
        study = search.run()
        total = time.perf_counter() - started
        trials = [t for t in study.trials if "merge_seconds" in t.user_attrs]
        merge = statistics.median(t.user_attrs["merge_seconds"] for t in trials)
        evaluate = statistics.median(t.user_attrs["eval_seconds"] for t in trials)
    return {
        "candidates": len(trials),
        "merge_seconds_median": merge,
        "eval_seconds_median": evaluate,
        "candidates_per_hour_merge_plus_eval": 3600 / (merge + evaluate),
        "candidates_per_hour_wall": 3600 * len(trials) / (total - setup),
        "setup_seconds": setup,
    }


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="smollm-135m", help="model shape")
    parser.add_argument(
        "--sources", type=int, nargs="+", default=[3, 2, 4], help="numbers of sources (besides the base)"
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=3, help="timed candidates per measurement (median)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--kernels",
        choices=["auto", "compiled", "blocks"],
        default="auto",
        help="how our engine computes merges (MergeEngine's kernels; auto: compiled on CPU here)",
    )
    parser.add_argument(
        "--mergekit",
        type=Path,
        default=Path(os.environ.get("MERGEKIT_YAML", DEFAULT_MERGEKIT)),
        help="the mergekit-yaml executable (default: .mergekit-venv/bin/mergekit-yaml or $MERGEKIT_YAML)",
    )
    parser.add_argument("--no-demo", action="store_true", help="skip the demo's candidates per hour")
    parser.add_argument("--demo-evaluations", type=int, default=16)
    parser.add_argument(
        "--workdir", type=Path, help="where the random models go (default: a temporary directory)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON to write")
    parser.add_argument("--worker", choices=["ours", "agreement"], help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--mergekit-out", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        args.sources = args.sources[0]
        print(json.dumps(worker(args)))
        return
    has_mergekit = args.mergekit.is_file()
    if not has_mergekit:
        print(
            f"note: mergekit not found at {args.mergekit}; mergekit is skipped "
            "(install it with: bash experiments/setup_mergekit.sh)"
        )
    figures = {
        "model": f"random Llama, {args.size} shape, bfloat16, tied embeddings",
        "parameters": parameter_count(args.size),
        "device": args.device,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(),
        "kernels": args.kernels,
        "load_average_at_start": os.getloadavg(),
        "mergekit": mergekit_version(args.mergekit) if has_mergekit else "not installed (skipped)",
        "gpu": "GPU figures are still to be taken: no GPU was lent to this run (the code path is the same)"
        if args.device == "cpu"
        else "this run",
        "rows": [],
        "differences_from_mergekit": DIFFERENCES,
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        paths = build_models(workdir / f"models-{args.size}", args.size, max(args.sources), torch.bfloat16)
        figures["task_vectors"] = precomputed_vs_on_the_fly(paths, args.repeats)
        print(
            f"task vectors of {figures['task_vectors']['tensor']}: on the fly "
            f"{figures['task_vectors']['on_the_fly_seconds']:.3f} s, precomputed in float32 "
            f"{figures['task_vectors']['precomputed_float32_seconds']:.3f} s"
        )
        for sources in args.sources:
            for method in args.methods:
                row = measure(args, paths, workdir, method, sources, has_mergekit)
                figures["rows"].append(row)
                print_row(row)
                save(figures, args.out)  # after every row: a long run that is stopped keeps what it measured
    if not args.no_demo:
        figures["demo"] = demo_candidates_per_hour(args.demo_evaluations)
        per_hour = figures["demo"]["candidates_per_hour_merge_plus_eval"]
        print(f"demo: {per_hour:.0f} candidates/hour (merge + evaluate)")
    figures["load_average_at_end"] = os.getloadavg()
    save(figures, args.out)
    print(f"saved to {args.out}")


def measure(
    args: argparse.Namespace, paths: list[Path], workdir: Path, method: str, sources: int, has_mergekit: bool
) -> dict:
    """One row: ours, and when mergekit is installed, mergekit-yaml, its in-memory path and the agreement."""
    ours = in_worker("ours", args, paths, method, sources)
    row: dict = {"sources": sources, "method": method, "ours": ours}
    if not has_mergekit:
        return row
    config = mergekit_config(method, paths, sources, "bfloat16")
    seconds, peak, out = mergekit_yaml(args.mergekit, config, workdir, args.device)
    row["mergekit_yaml"] = {"seconds": seconds, "peak_rss_bytes": peak}
    shutil.rmtree(out)
    if sources != 3:
        return row
    if args.device == "cpu":
        memory = mergekit_in_memory(args.mergekit, config, workdir, args.repeats)
        row["mergekit_in_memory"] = {
            **memory,
            "seconds": statistics.median(memory["seconds"]),
            "seconds_all": memory["seconds"],
        }
    exact = build_models(workdir / f"models-{args.size}-float32", args.size, 3, torch.float32)
    config = mergekit_config(method, exact, sources, "float32", True)
    _, _, out = mergekit_yaml(args.mergekit, config, workdir, args.device)
    row["agreement"] = {
        **in_worker("agreement", args, exact, method, sources, mergekit_out=out),
        "note": DIFFERENCES[method],
    }
    shutil.rmtree(out)
    return row


def precomputed_vs_on_the_fly(paths: list[Path], repeats: int) -> dict:
    """Task arithmetic of the largest tensor from task vectors computed on the fly from the bf16 sources (what
    the engine does) against float32 task vectors computed once (what they would cost: 4 bytes per parameter
    per source), both block by block into a bf16 target."""
    from safetensors.torch import load_file

    from evomerge.merge.methods.blocks import block_size, write_blocks
    from evomerge.merge.methods.task_arithmetic import TaskArithmeticSettings, generalized_task_arithmetic

    tensors = [load_file(path / "model.safetensors") for path in paths[:4]]
    name = max(tensors[0], key=lambda n: tensors[0][n].numel())
    base, sources = tensors[0][name], [t[name] for t in tensors[1:]]
    deltas = [(s.float() - base.float()).reshape(-1) for s in sources]
    base_flat = base.reshape(-1)
    work = torch.empty(2, block_size(base, None))
    out = torch.empty_like(base)

    def from_task_vectors(start: int, stop: int) -> torch.Tensor:
        result, term = work[0, : stop - start].zero_(), work[1, : stop - start]
        for w, delta in zip(WEIGHTS, deltas, strict=False):
            result.add_(torch.mul(delta[start:stop], w, out=term))
        return result.add_(base_flat[start:stop])

    settings = TaskArithmeticSettings(None, None, weight=list(WEIGHTS[: len(sources)]))

    def on_the_fly() -> None:
        generalized_task_arithmetic(base, sources, settings, out=out)

    timings = {}

    def precomputed() -> None:
        write_blocks(base, from_task_vectors, out, None)

    for label, action in (("on_the_fly_seconds", on_the_fly), ("precomputed_float32_seconds", precomputed)):
        action()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            action()
            times.append(time.perf_counter() - started)
        timings[label] = statistics.median(times)
    return {"tensor": name, "elements": base.numel(), **timings}


def save(figures: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")


def parameter_count(size: str) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**SIZES[size], tie_word_embeddings=True))
    return sum(p.numel() for p in model.parameters())


def mergekit_version(executable: Path) -> str:
    done = subprocess.run(
        [
            str(executable.parent / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('mergekit'))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return f"mergekit {done.stdout.strip()}"


def print_row(row: dict) -> None:
    ours = row["ours"]
    bound = ours["memory_bound_seconds"]
    text = (
        f"{row['method']:16} sources={row['sources']}  ours ({ours['kernels']}) {ours['seconds']:.3f} s "
        f"(memory-bound {bound:.3f} s, x{ours['seconds'] / bound:.1f}; "
        f"peak {ours['peak_models']:.1f} models, goal <= {ours['memory_goal_models']}; through the first "
        f"candidate {ours['peak_models_through_first_candidate']:.1f})"
    )
    if "mergekit_yaml" in row:
        mk = row["mergekit_yaml"]["seconds"]
        text += f"  mergekit-yaml {mk:.2f} s (x{mk / ours['seconds']:.0f})"
    if "mergekit_in_memory" in row:
        mk = row["mergekit_in_memory"]["seconds"]
        text += f"  mergekit in-memory {mk:.2f} s (x{mk / ours['seconds']:.0f})"
    if "agreement" in row:
        agreement = row["agreement"]
        text += f"  agreement max abs {agreement['max_abs_diff']:.2e} rel {agreement['max_rel_diff']:.2e}"
    print(text, flush=True)


if __name__ == "__main__":
    main()
