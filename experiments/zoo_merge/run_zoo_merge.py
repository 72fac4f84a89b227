"""The zoo merge experiment: does an evolved per-layer merge beat the usual tuned merges on held-out data?

On the tiny zoo (docs/zoo.md), for every model: held-out exact match on each skill (200 prompts each), their
mean, and a cross-skill task that needs two experts at once. Models: each expert alone, the uniform average,
task arithmetic / TIES / DARE-TIES each tuned on the search split (`evomerge baselines`), the evolved
per-layer merge (CMA-ES, `cmaes.yaml`, one run per seed) and the evolved Pareto set (NSGA-II, `nsga2.yaml`).

The cross-skill task, "reverse then shift": for a word of 5-6 letters with at least one letter in n-z, the
model is asked `rev WORD=`, then asked `shift OUTPUT=` about its own answer; it scores when the second answer
is the word reversed and shifted. Reversing 5-6 letters is expert_reverse's extension of the base and shifting
n-z letters is expert_shift's, so neither expert alone can do both steps (like Japanese math in Sakana's
evolutionary merge: one model's language, another's math). The search never sees this task.

    python experiments/zoo_merge/run_zoo_merge.py            # seeds 0 1 2, ~30 min on 2 cores
    python experiments/zoo_merge/run_zoo_merge.py --seeds 0  # one seed

Prints a markdown table and saves everything to experiments/results/zoo_merge.json.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import time
from pathlib import Path

import torch
from optuna.trial import TrialState
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evomerge.config import RunConfig, load_config
from evomerge.merge.recipe import Recipe
from evomerge.search.baselines import run_baselines
from evomerge.search.ledger import ELAPSED_ATTR, load_run_study
from evomerge.search.loop import Search
from evomerge.search.results import best_trial, held_out_scores, pareto_front, trial_recipe
from evomerge.search.scoring import CandidateScorer
from evomerge.zoo.build import ensure_zoo
from evomerge.zoo.skills import SKILLS, read_split

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "zoo_merge.json"
CROSS_SKILL_WORDS = 200
CROSS_SKILL_SEED = 1234


def shifted(word: str) -> str:
    return "".join(chr((ord(c) - ord("a") + 1) % 26 + ord("a")) for c in word)


def cross_skill_words(zoo: Path) -> list[str]:
    """Words of 5-6 letters with a letter in n-z, none a prompt of the zoo's reverse or shift data."""
    used = {
        row["prompt"].split(" ", 1)[1][:-1]
        for skill in ("reverse", "shift")
        for split in ("train", "search", "held_out")
        for row in read_split(zoo, skill, split)
    }
    rng = random.Random(CROSS_SKILL_SEED)
    words: list[str] = []
    while len(words) < CROSS_SKILL_WORDS:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 6)))
        if word not in used and word not in words and any(c >= "n" for c in word):
            words.append(word)
    return words


def greedy_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str]
) -> list[str]:
    """Greedy continuations up to EOS (left-padded batch), special tokens dropped."""
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        output = model.generate(
            **encoded,
            do_sample=False,
            max_new_tokens=8,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


def cross_skill_accuracy(scorer: CandidateScorer, recipe: Recipe, words: list[str]) -> float:
    scorer.engine.materialize(recipe, scorer.model)
    reversed_ = greedy_answers(scorer.model, scorer.tokenizer, [f"rev {w}=" for w in words])
    final = greedy_answers(scorer.model, scorer.tokenizer, [f"shift {r}=" for r in reversed_])
    return sum(f == shifted(w[::-1]) for f, w in zip(final, words)) / len(words)


def held_out_row(config: RunConfig, scores: dict) -> dict[str, float]:
    row = {o.task: scores[o.task][o.metric] for o in config.objectives}
    row["mean"] = sum(row.values()) / len(row)
    return row


def run_search(config_path: Path, work: Path, seed: int) -> tuple[RunConfig, float]:
    config = load_config(config_path, {"run_dir": str(work / f"{config_path.stem}-seed{seed}"), "seed": seed})
    started = time.perf_counter()
    Search(config, progress=False).run()
    return config, time.perf_counter() - started


def search_rows(
    config: RunConfig, wall: float, scorer: CandidateScorer, words: list[str], label: str
) -> dict:
    study = load_run_study(config)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    held_out = held_out_scores(study)
    best = best_trial(config, completed)
    front = pareto_front(study)
    front_rows = [held_out_row(config, held_out[t.number]) for t in front]
    return {
        "label": label,
        "seed": config.seed,
        "trial": best.number,
        "evaluations": len(study.get_trials()),
        "wall_seconds": round(wall, 1),
        "search_seconds": round(float(study.user_attrs[ELAPSED_ATTR]), 1),
        "held_out": held_out_row(config, held_out[best.number]),
        "cross_skill": cross_skill_accuracy(scorer, trial_recipe(best), words),
        "pareto_size": len(front),
        "pareto_best_per_skill": {o.task: max(r[o.task] for r in front_rows) for o in config.objectives},
        "recipe": best.user_attrs["recipe"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=HERE / "runs", help="run directories (ledgers, reports)")
    args = parser.parse_args()
    zoo = ensure_zoo()
    words = cross_skill_words(zoo)

    started = time.perf_counter()
    base_config = load_config(HERE / "cmaes.yaml", {"run_dir": str(args.work / "baselines")})
    scorer = CandidateScorer(base_config)
    baselines = []
    for result in run_baselines(base_config, progress=False, scorer=scorer):
        baselines.append(
            {
                "label": result.label,
                "family": result.family,
                "held_out": held_out_row(base_config, result.held_out),
                "cross_skill": cross_skill_accuracy(scorer, trial_recipe(result.trial), words),
            }
        )
    baseline_seconds = time.perf_counter() - started

    searches: list[dict] = []
    for seed in args.seeds:
        for name, label in (
            ("cmaes", "evolved per-layer (CMA-ES)"),
            ("nsga2", "evolved Pareto set (NSGA-II)"),
        ):
            config, wall = run_search(HERE / f"{name}.yaml", args.work, seed)
            searches.append(search_rows(config, wall, scorer, words, label))
            save(
                baselines, searches, baseline_seconds
            )  # after every run: a long experiment keeps what it has
    print(table(baselines, searches))


def save(baselines: list[dict], searches: list[dict], baseline_seconds: float) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "skills": list(SKILLS),
                "held_out_per_skill": 200,
                "cross_skill_words": CROSS_SKILL_WORDS,
                "cross_skill_seed": CROSS_SKILL_SEED,
                "baseline_seconds": round(baseline_seconds, 1),
                "baselines": baselines,
                "searches": searches,
            },
            indent=2,
        )
        + "\n"
    )


def table(baselines: list[dict], searches: list[dict]) -> str:
    skills = list(SKILLS)
    lines = [
        "| model | "
        + " | ".join(skills)
        + " | mean | cross-skill (rev then shift) | evaluations | wall time |",
        "| --- |" + " ---: |" * (len(skills) + 4),
    ]
    for row in baselines:
        cells = [f"{row['held_out'][s]:.3f}" for s in [*skills, "mean"]]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {row['cross_skill']:.3f} | | |")
    for row in searches:
        cells = [f"{row['held_out'][s]:.3f}" for s in [*skills, "mean"]]
        name = f"{row['label']} seed {row['seed']}, trial {row['trial']}"
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {row['cross_skill']:.3f} | {row['evaluations']} | "
            f"{row['wall_seconds'] / 60:.1f} min |"
        )
        if row["label"].startswith("evolved Pareto"):
            best = [f"{row['pareto_best_per_skill'][s]:.3f}" for s in skills]
            lines.append(
                f"| ... its {row['pareto_size']} Pareto points, best per skill (oracle) | "
                + " | ".join(best)
                + " | | | | |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
