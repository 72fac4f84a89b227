"""Time mergekit's in-memory merge path (the one mergekit-evolve's InMemoryMergeEvaluator uses), per
candidate.

Runs inside mergekit's own virtual environment (experiments/setup_mergekit.sh), called by bench_merge.py:

    MERGEKIT_VENV/bin/python experiments/mergekit_in_memory.py CONFIG.yaml --repeats N

It plans the merge with MergePlanner.plan_in_memory, runs mergekit's Executor and copies every tensor into one
preallocated model, as InMemoryMergeEvaluator.evaluate does (without lm-eval, ray or vLLM, which only
evaluate).
Prints one JSON line: {"seconds": [...], "peak_rss_bytes": ...}.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import transformers
import yaml
from mergekit.architecture import arch_info_for_config
from mergekit.config import MergeConfiguration
from mergekit.graph import Executor
from mergekit.io.tasks import LoaderCache, ReturnTensor
from mergekit.merge import _model_out_config
from mergekit.options import MergeOptions
from mergekit.plan import MergePlanner
from transformers.initialization import no_init_weights


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="a mergekit merge config (YAML)")
    parser.add_argument("--repeats", type=int, default=3, help="timed merges, after one warm-up merge")
    args = parser.parse_args()

    with open(args.config) as file:
        config = MergeConfiguration.model_validate(yaml.safe_load(file))
    options = MergeOptions(device="cpu", quiet=True)
    LoaderCache().setup(options)
    base = config.base_model or config.models[0].model
    example = transformers.AutoConfig.from_pretrained(base.model.path)
    info = arch_info_for_config(example)
    out_config = _model_out_config(config, info)
    with no_init_weights():
        model = transformers.AutoModelForCausalLM.from_config(out_config, dtype=torch.bfloat16).eval()
    params = dict(model.named_parameters(remove_duplicate=False))

    def merge() -> None:
        planner = MergePlanner(config, info, options, out_config)
        planner._plan()
        # plan_in_memory's own ReturnTensor(...) fails pydantic validation with the pydantic this mergekit
        # installs ("Can't instantiate abstract class Task[Tensor]"); the same tasks, built without
        # validation:
        tasks = [
            ReturnTensor.model_construct(
                weight_info=w, tensor_task=t, dtype=w.force_dtype or config.out_dtype
            )
            for w, t in planner._tensors
        ]
        for task, value in Executor(tasks, math_device="cpu", storage_device="cpu").run(quiet=True):
            params[task.weight_info.name].data.copy_(value)

    merge()  # warm-up: opens the files, as the evaluator's first candidate does
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        merge()
        seconds.append(time.perf_counter() - started)
    with open(
        "/proc/self/status"
    ) as status:  # VmHWM: ru_maxrss would include the peak of the forking process
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak}))


if __name__ == "__main__":
    main()
