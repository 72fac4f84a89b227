"""The SmolLM2 experiment: does an evolved merge of two real experts beat the tuned merges on the cross-skill
task neither expert can do?

On the SmolLM2 family (docs/smollm2.md; `evomerge zoo build --family smollm2` first), with
configs/smollm2.yaml: held-out exact match on `arith_words` (the word problem answered in French words: the
search's objective and the baselines' tuning target, on the search split), and on `arith` and `words` (each
expert's own skill, scored here on the held-out split only), of every model: each expert alone, the uniform
average, task arithmetic / TIES / DARE-TIES each with its global setting tuned on the search split
(`evomerge baselines`), and the evolved DARE-TIES merge per layer group (CMA-ES), one run per seed. The best
evolved merge is exported (`evomerge export`), loaded in plain transformers and asked three held-out
arith_words prompts.

    python experiments/smollm2/run_experiment.py                       # seeds 0 1, the config's budget
    python experiments/smollm2/run_experiment.py --seeds 0 --evaluations 60

Every stage is a run directory under --work (default experiments/smollm2/runs): run the same command again
after a stop and it resumes where it was (the baselines' ledger, each search's ledger). The results are saved
after each stage to experiments/results/smollm2_experiment.json, and the table is printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from optuna.trial import TrialState
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.config import RunConfig, load_config
from evomerge.search.baselines import run_baselines
from evomerge.search.ledger import ELAPSED_ATTR, load_run_study
from evomerge.search.results import best_trial, held_out_scores, trial_recipe
from evomerge.search.runs import run_search
from evomerge.search.scoring import CandidateScorer
from evomerge.smollm2.build import built_family_dir
from evomerge.smollm2.skills import CROSS_TASK, SKILLS, TASKS, read_split

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = ROOT / "configs" / "smollm2.yaml"
RESULTS = ROOT / "experiments" / "results" / "smollm2_experiment.json"
#: How many held-out prompts the exported model is asked (the first of the split).
SHOWN_PROMPTS = 3


def skills_scorer(work: Path) -> CandidateScorer:
    """A scorer of the config's merges on all three tasks (the search scores arith_words alone)."""
    skills = {task: {"data": f"smollm2:{task}", "chat_template": True, "limit": 100} for task in SKILLS}
    overrides = {**{f"tasks.{task}": spec for task, spec in skills.items()}, "run_dir": str(work / "skills")}
    return CandidateScorer(load_config(CONFIG, overrides))


def held_out_row(scores: dict) -> dict[str, float]:
    return {task: scores[task]["exact_match"] for task in TASKS}


def baseline_rows(config: RunConfig, scorer: CandidateScorer) -> list[dict]:
    return [
        {
            "label": result.label,
            "family": result.family,
            "search": result.trial.user_attrs["scores"][CROSS_TASK]["exact_match"],
            "held_out_recorded": result.held_out[CROSS_TASK]["exact_match"],
            "held_out": held_out_row(scorer.score(trial_recipe(result.trial), "held_out")),
        }
        for result in run_baselines(config, progress=sys.stderr.isatty())
    ]


def search_row(args: argparse.Namespace, seed: int, scorer: CandidateScorer) -> dict:
    overrides = {"run_dir": str(args.work / f"cmaes-seed{seed}"), "seed": seed}
    if args.evaluations:
        overrides["budget.evaluations"] = args.evaluations
    config = load_config(CONFIG, overrides)
    started = time.perf_counter()
    run_search(config)  # as `evomerge run` does: the run's config.yaml written beside its ledger
    wall = time.perf_counter() - started
    study = load_run_study(config)
    trials = study.get_trials(deepcopy=False)
    best = best_trial(config, [t for t in trials if t.state == TrialState.COMPLETE])
    return {
        "label": "evolved DARE-TIES per layer group (CMA-ES)",
        "seed": seed,
        "run_dir": str(_shown(config.run_dir)),
        "trial": best.number,
        "evaluations": len(trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "wall_seconds_this_call": round(wall, 1),
        "search_seconds": round(float(study.user_attrs[ELAPSED_ATTR]), 1),
        "search": best.user_attrs["scores"][CROSS_TASK]["exact_match"],
        "held_out_recorded": held_out_scores(study)[best.number][CROSS_TASK]["exact_match"],
        "held_out": held_out_row(scorer.score(trial_recipe(best), "held_out")),
        "recipe": best.user_attrs["recipe"],
    }


def _shown(path: Path) -> Path:
    """A path inside the repository relative to it (as the results JSON is committed), others as they are."""
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def exported_answers(run_dir: Path, out: Path) -> list[dict]:
    """Export the run's best merge with the CLI, load it in plain transformers, and ask it the first held-out
    arith_words prompts (greedy, through the chat template)."""
    subprocess.run(
        ["evomerge", "export", str(run_dir), "--out", str(out), "--force"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    answers = []
    for row in read_split(built_family_dir(), CROSS_TASK, "held_out")[:SHOWN_PROMPTS]:
        messages = [{"role": "user", "content": row["prompt"]}]
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            output = model.generate(**ids, do_sample=False, max_new_tokens=16)
        answer = tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        answers.append({"prompt": row["prompt"], "answer": answer, "gold": row["answer"]})
    return answers


def table(baselines: list[dict], searches: list[dict]) -> str:
    lines = [
        "| model | "
        + " | ".join(f"{t} (held-out)" for t in TASKS)
        + f" | {CROSS_TASK} (search) | evaluations |",
        "| --- |" + " ---: |" * (len(TASKS) + 2),
    ]
    for row in baselines:
        cells = [f"{row['held_out'][t]:.3f}" for t in TASKS]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {row['search']:.3f} | |")
    for row in searches:
        cells = [f"{row['held_out'][t]:.3f}" for t in TASKS]
        name = f"{row['label']} seed {row['seed']}, trial {row['trial']}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['search']:.3f} | {row['evaluations']} |")
    return "\n".join(lines)


def save(result: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--evaluations", type=int, help="candidates per search (default: the config's)")
    parser.add_argument("--work", type=Path, default=HERE / "runs", help="run directories (ledgers)")
    args = parser.parse_args()
    family = built_family_dir()  # one line naming the build command when the family is not built
    result: dict = {"config": str(CONFIG.relative_to(ROOT)), "family": family.name, "searches": []}
    scorer = skills_scorer(args.work)
    started = time.perf_counter()
    result["baselines"] = baseline_rows(
        load_config(CONFIG, {"run_dir": str(args.work / "baselines")}), scorer
    )
    result["baseline_seconds_this_call"] = round(time.perf_counter() - started, 1)
    save(result)
    print(table(result["baselines"], []), flush=True)
    for seed in args.seeds:
        result["searches"].append(search_row(args, seed, scorer))
        save(result)
        print(table(result["baselines"], result["searches"]), flush=True)
    best = max(result["searches"], key=lambda row: row["search"])
    result["exported"] = {
        "seed": best["seed"],
        "trial": best["trial"],
        "answers": exported_answers(ROOT / best["run_dir"], args.work / "exported"),
    }
    save(result)
    for shown in result["exported"]["answers"]:
        print(f"{shown['prompt']!r} -> {shown['answer']!r} (gold {shown['gold']!r})")


if __name__ == "__main__":
    main()
