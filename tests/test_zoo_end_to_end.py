"""The commands a newcomer runs first, on the real zoo: `zoo build`, `merge configs/merge_ties.yaml`,
`demo`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.cli import main
from evomerge.config import load_config
from evomerge.families import format_matrix
from evomerge.search.scoring import CandidateScorer
from evomerge.zoo.build import read_manifest
from evomerge.zoo.check import model_accuracy

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


def test_zoo_build_prints_the_documented_matrix(zoo_dir, capsys):
    assert main(["zoo", "build", str(zoo_dir)]) == 0
    printed = capsys.readouterr().out
    assert format_matrix(read_manifest(zoo_dir)["accuracy"]["held_out"]) in printed


def test_merge_ties_recipe_gives_a_model_that_generates_and_beats_every_single_model(zoo_dir, tmp_path):
    out = tmp_path / "merged-ties"
    assert main(["merge", str(CONFIGS / "merge_ties.yaml"), "--out", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("rev abcd=", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]

    merged = mean(model_accuracy(out, zoo_dir, split="search"))
    singles = {
        name: mean(model_accuracy(zoo_dir / name, zoo_dir, split="search"))
        for name in read_manifest(zoo_dir)["models"]
    }
    assert all(merged > score for score in singles.values()), (merged, singles)


def test_demo_evolves_a_merge_that_beats_every_single_model_and_every_tuned_baseline_on_held_out_data(
    zoo_dir, tmp_path, capsys
):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text("{}")  # a previous (here: interrupted) demo's output is replaced
    (out / "stale.txt").write_text("old")
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "demo.json").read_text())["held_out"]
    evolved = next(label for label in results if label.startswith("evolved"))
    experts = [f"{name} alone" for name in read_manifest(zoo_dir)["experts"].values()]
    tuned = [label for label in results if label.startswith(("task arithmetic", "TIES", "DARE-TIES"))]
    assert set(experts) | {"uniform average"} <= set(results) and len(tuned) == 3
    assert f"| {evolved} | " in printed and "mean (held-out)" in printed
    assert all(mean(results[evolved]) > mean(results[name]) + 0.1 for name in [*experts, "uniform average"])
    assert all(mean(results[evolved]) > mean(results[name]) for name in tuned)
    config = load_config(out / "run" / "config.yaml", {"run_dir": str(out / "run")})
    exported = CandidateScorer(config).evaluator.score(
        AutoModelForCausalLM.from_pretrained(out / "evolved"), "held_out"
    )
    assert {task: metrics["exact_match"] for task, metrics in exported.items()} == results[evolved]
    assert (out / "evolved" / "README.md").is_file() and (out / "run" / "report.md").is_file()
    assert not (out / "stale.txt").exists()

    other = tmp_path / "not-a-demo"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert main(["demo", "--out", str(other)]) == 2
    assert "is not a previous demo's output" in capsys.readouterr().err
    assert (other / "mine.txt").read_text() == "keep"
