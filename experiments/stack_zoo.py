"""Layer stacking (data-flow space) on the tiny zoo, alone and as the hybrid, against the parameter-space
merge.

    python experiments/stack_zoo.py [--seed 0] [--evaluations 64] [--merge-evaluations 200] [--limit N]

Two runs, scored on the three skills' search splits (mean exact match; by default every search prompt, 200
per skill), every number in the table on the held-out split (200 other prompts per skill):
- `dfs`: a CMA-ES search over stacks of the three experts' layers (2 repeats, at most 6 layers, a scale in
  [0.5, 1.5] on each kept layer's input), `--evaluations` candidates;
- `hybrid`: one hybrid run (evomerge/search/hybrid.py): the parameter-space search of the zoo merge experiment
  (experiments/zoo_merge/cmaes.yaml: CMA-ES over per-layer task-arithmetic weights, `--merge-evaluations`
  candidates), then a stacking search over the layers of its best merge and of the three experts
  (`search:best` first, so the embeddings, final norm and head are the merge's), `--evaluations` candidates,
  in one ledger.
A stacking search first scores each source's own layers as they are (under the embeddings of its first source;
the zoo's experts share a base, so this costs little): the experts alone, and in the hybrid the best merge.
The best stack of each run is exported as a plain checkpoint (scales folded, evomerge/stack/engine.py),
reloaded with transformers and scored again on the held-out split: the difference to the ledger's held-out
record and the largest logit difference say what folding costs. Prints a table; saves results/stack_zoo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from evomerge.config import config_from_dict  # noqa: E402
from evomerge.search.hybrid import HybridSearch, best_merge  # noqa: E402
from evomerge.search.ledger import load_run_study  # noqa: E402
from evomerge.search.loop import Search  # noqa: E402
from evomerge.search.results import best_trial, held_out_scores  # noqa: E402
from evomerge.search.space import candidate_from_yaml  # noqa: E402
from evomerge.stack.engine import write_stack_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "stack_zoo.json"
MERGE_CONFIG = ROOT / "experiments" / "zoo_merge" / "cmaes.yaml"
SKILLS = ("add", "reverse", "shift")
EXPERTS = [f"zoo:expert_{skill}" for skill in SKILLS]
STACK = {"repeats": 2, "max_depth": 6, "scale_low": 0.5, "scale_high": 1.5}


def run_config(args, run_dir: Path, hybrid: bool) -> dict:
    data = yaml.safe_load(MERGE_CONFIG.read_text())
    data.update(
        seed=args.seed, run_dir=str(run_dir), optimizer={"name": "cmaes", "population_size": 8, "sigma": 0.2}
    )
    if args.limit is not None:
        data["tasks"] = {skill: {**task, "limit": args.limit} for skill, task in data["tasks"].items()}
    if hybrid:
        data["optimizer"]["sigma"] = 0.15  # the merge phase exactly as in the zoo merge experiment
        data["stack"] = {"sources": ["search:best", *EXPERTS], **STACK}
        data["stack_budget"] = {"evaluations": args.evaluations}
        data["budget"] = {"evaluations": args.merge_evaluations}
    else:
        del data["recipe"], data["genome"]
        data["stack"] = {"sources": EXPERTS, **STACK}
        data["budget"] = {"evaluations": args.evaluations}
    return data


def mean(scores: dict) -> float:
    return sum(scores[skill]["exact_match"] for skill in SKILLS) / len(SKILLS)


def best_of(config, study) -> tuple:
    completed = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    best = best_trial(config, completed)
    return best, {
        "trial": best.number,
        "search": mean(best.user_attrs["scores"]),
        "held_out": mean(held_out_scores(study)[best.number]),
    }


def stacking_results(config, search: Search, names: list[str], root: Path, label: str) -> dict:
    """Each source's own layers, the best stack, and the best stack exported and scored again."""
    study, scorer = search.study, search.scorer
    best, row = best_of(config, study)
    sources_alone = {
        f"{name} layers": {"held_out": mean(scorer.score(seed, "held_out"))}
        for name, seed in zip(names, search.seed_recipes)
    }
    stack = candidate_from_yaml(best.user_attrs["recipe"], f"trial {best.number}")
    out = root / f"{label}-export"
    write_stack_dir(scorer.engine, stack, out)
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    scorer.engine.materialize(stack, scorer.model)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        logit_gap = (exported(ids).logits - scorer.model(ids).logits).abs().max().item()
    return {
        "sources_alone": sources_alone,
        "best": {
            **row,
            "stack": [[layer.source, layer.layer, round(layer.scale, 3)] for layer in stack.layers],
        },
        "exported_held_out": mean(scorer.evaluator.score(exported, "held_out")),
        "exported_max_logit_difference": logit_gap,
        "evaluations": len(study.get_trials()),
    }


def run_dfs(args, root: Path) -> dict:
    config = config_from_dict(run_config(args, root / "dfs", hybrid=False))
    search = Search(config, progress=False)
    started = time.perf_counter()
    search.run()
    return {
        **stacking_results(config, search, EXPERTS, root, "dfs"),
        "seconds": time.perf_counter() - started,
    }


def run_hybrid(args, root: Path) -> dict:
    config = config_from_dict(run_config(args, root / "hybrid", hybrid=True))
    started = time.perf_counter()
    HybridSearch(config, progress=False).run()
    seconds = time.perf_counter() - started
    merge = config.merge_phase()
    merge_best = best_of(merge, load_run_study(merge))[1]
    stack_config = config.stack_phase(best_merge(merge))
    search = Search(stack_config, progress=False)  # resumes the finished stacking phase: its resident models
    names = ["best merge", *EXPERTS]
    result = stacking_results(stack_config, search, names, root, "hybrid")
    return {"merge_phase_best": merge_best, **result, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluations", type=int, default=64, help="candidates of each stacking search")
    parser.add_argument(
        "--merge-evaluations", type=int, default=200, help="candidates of the hybrid's merge phase"
    )
    parser.add_argument(
        "--limit", type=int, help="search and held-out examples per skill (default: all, 200)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "settings": vars(args),
            "dfs": run_dfs(args, Path(tmp)),
            "hybrid": run_hybrid(args, Path(tmp)),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print("mean exact match over add, reverse, shift (held-out split)")
    rows = {name: row["held_out"] for name, row in results["dfs"]["sources_alone"].items()}
    rows["parameter-space merge (hybrid's merge phase best)"] = results["hybrid"]["merge_phase_best"][
        "held_out"
    ]
    for label in ("dfs", "hybrid"):
        rows[f"{label}: best stack"] = results[label]["best"]["held_out"]
        rows[f"{label}: best stack, exported checkpoint"] = results[label]["exported_held_out"]
    for name, value in rows.items():
        print(f"{name:55} {value:6.3f}")
    for label in ("dfs", "hybrid"):
        print(
            f"{label}: best {results[label]['best']['stack']}, max logit difference after folding "
            f"{results[label]['exported_max_logit_difference']:.2e}, {results[label]['seconds'] / 60:.1f} min"
        )
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
