"""Layer stacking (data-flow space) on the tiny zoo, against the experts and a parameter-space merge.

    python experiments/stack_zoo.py [--seed 0] [--evaluations 32] [--limit 50]

Two CMA-ES searches over stacks of up to 6 layers (2 repeats of the sources' layers, scales in [0.5, 1.5]),
scored on the three skills' search splits (mean exact match):
- `dfs`: the three experts' layers;
- `merge+dfs`: the layers of the uniform task-arithmetic merge of the three experts (a parameter-space merge,
  given inline as a stack source) and of the three experts (the paper's hybrid, in one run).
Every source's own layers are scored too (a stack search's first candidates), with the embeddings, final
norm and head of the search's first source: the first source alone is that model exactly, the others are
their layers under its embeddings (the zoo's experts share a base, so this costs little). Then the
best stack of each search is exported as a plain checkpoint (scales folded, evomerge/stacking.py), reloaded
with transformers and scored again on the held-out split: the difference to the ledger's held-out record and
the largest logit difference measure what folding costs. Prints a table; saves results/stack_zoo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from evomerge.config import config_from_dict  # noqa: E402
from evomerge.search.loop import Search  # noqa: E402
from evomerge.search.results import best_trial, held_out_scores  # noqa: E402
from evomerge.search.space import candidate_from_yaml  # noqa: E402
from evomerge.stacking import write_stack_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "stack_zoo.json"
SKILLS = ("add", "reverse", "shift")
EXPERTS = [f"zoo:expert_{skill}" for skill in SKILLS]
MERGE = {"method": "task_arithmetic", "base": "zoo:base", "sources": [{"model": m} for m in EXPERTS]}


def run_config(sources: list, run_dir: Path, seed: int, evaluations: int, limit: int) -> dict:
    return {
        "stack": {"sources": sources, "repeats": 2, "max_depth": 6, "scale_low": 0.5, "scale_high": 1.5},
        "tasks": {skill: {"data": f"zoo:{skill}", "limit": limit} for skill in SKILLS},
        "objectives": [{"task": skill, "metric": "exact_match"} for skill in SKILLS],
        "optimizer": {"name": "cmaes", "population_size": 8, "sigma": 0.2},
        "budget": {"evaluations": evaluations},
        "seed": seed,
        "run_dir": str(run_dir),
    }


def mean(scores: dict) -> float:
    return sum(scores[skill]["exact_match"] for skill in SKILLS) / len(SKILLS)


def one_search(label: str, sources: list, root: Path, args) -> dict:
    config = config_from_dict(run_config(sources, root / label, args.seed, args.evaluations, args.limit))
    search = Search(config, progress=False)
    study = search.run()
    completed = [t for t in study.get_trials() if t.values is not None]
    best = best_trial(config, completed)
    stack = candidate_from_yaml(best.user_attrs["recipe"], f"trial {best.number}")
    scorer = search.scorer
    sources_alone = {}
    for index, seed in enumerate(search.seed_recipes):
        name = (sources[index] if isinstance(sources[index], str) else "task-arithmetic merge") + " layers"
        sources_alone[name] = {"held_out": mean(scorer.score(seed, "held_out"))}
    out = root / f"{label}-export"
    write_stack_dir(scorer.engine, stack, out)
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    scorer.engine.materialize(stack, scorer.model)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        logit_gap = (exported(ids).logits - scorer.model(ids).logits).abs().max().item()
    return {
        "sources_alone": sources_alone,
        "best_trial": best.number,
        "best_stack": [[layer.source, layer.layer, round(layer.scale, 3)] for layer in stack.layers],
        "search": mean(best.user_attrs["scores"]),
        "held_out": mean(held_out_scores(study)[best.number]),
        "exported_held_out": mean(scorer.evaluator.score(exported, "held_out")),
        "exported_max_logit_difference": logit_gap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluations", type=int, default=32)
    parser.add_argument("--limit", type=int, default=50, help="search examples per skill")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "settings": vars(args),
            "dfs": one_search("dfs", EXPERTS, Path(tmp), args),
            "merge+dfs": one_search("merge+dfs", [MERGE, *EXPERTS], Path(tmp), args),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print("held-out mean exact match over add, reverse, shift")
    print(f"{'model':40} {'held-out':>9}")
    for name, row in results["merge+dfs"]["sources_alone"].items():
        print(f"{name:40} {row['held_out']:9.3f}")
    for label in ("dfs", "merge+dfs"):
        row = results[label]
        print(f"{label + ' best (search ' + format(row['search'], '.3f') + ')':40} {row['held_out']:9.3f}")
        print(f"{label + ' exported checkpoint':40} {row['exported_held_out']:9.3f}"
              f"   max logit difference {row['exported_max_logit_difference']:.2e}")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
