"""Layer-stacking runs through the search loop and after it: the ledger, exact resume, held-out scores,
status, report, export (as a checkpoint and as a mergekit config), bad input."""

from __future__ import annotations

import os
import subprocess
from operator import itemgetter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import save_tiny_llama
from optuna.trial import TrialState
from runs import PNG_MAGIC, ledger_rows, run_search, write_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from evomerge.cli import main
from evomerge.config import config_from_dict
from evomerge.errors import UsageError
from evomerge.output.mergekit import stack_mergekit_config
from evomerge.search.ledger import load_run_study
from evomerge.search.results import best_trial, held_out_scores, trial_recipe
from evomerge.search.scoring import CandidateScorer
from evomerge.stack.engine import folded_factors
from evomerge.stack.recipe import load_stack, stack_from_dict


def stack_config(tiny_models, task_dir, run_dir, optimizer="cmaes", evaluations=8, **stack):
    return {
        "stack": {
            "sources": [str(tiny_models["a"]), str(tiny_models["b"])],
            "repeats": 2,
            "max_depth": 5,
            "scale_low": 0.5,
            "scale_high": 1.5,
            **stack,
        },
        "tasks": {"t": {"data": str(task_dir), "limit": 4}},
        "objectives": [{"task": "t", "metric": "exact_match"}],
        "optimizer": {"name": optimizer, "population_size": 4},
        "budget": {"evaluations": evaluations},
        "run_dir": str(run_dir),
    }


def test_a_stack_run_starts_from_each_source_and_records_stack_recipes(tiny_models, task_dir, tmp_path):
    study = run_search(stack_config(tiny_models, task_dir, tmp_path / "run"))
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    first, second = (yaml.safe_load(t.user_attrs["recipe"])["layers"] for t in trials[:2])
    assert first == [[0, 0, 1.0], [0, 1, 1.0]] and second == [[1, 0, 1.0], [1, 1, 1.0]]
    depths = {len(yaml.safe_load(t.user_attrs["recipe"])["layers"]) for t in trials}
    assert max(depths) <= 5 and len(depths) > 1
    assert set(trials[2].params) == {f"slot{i}.{gene}" for i in range(8) for gene in ("include", "scale")}


@pytest.mark.parametrize("optimizer", ["cmaes", "tpe"])
def test_a_stopped_and_resumed_stack_run_ends_as_an_uninterrupted_one(
    optimizer, tiny_models, task_dir, tmp_path
):
    whole = run_search(stack_config(tiny_models, task_dir, tmp_path / "whole", optimizer))
    run_search(stack_config(tiny_models, task_dir, tmp_path / "parts", optimizer, evaluations=3))
    resumed = run_search(stack_config(tiny_models, task_dir, tmp_path / "parts", optimizer))
    assert ledger_rows(resumed) == ledger_rows(whole)


@pytest.fixture(scope="module")
def stack_run(tiny_models, task_dir, tmp_path_factory) -> Path:
    """A finished two-objective stack run (NSGA-II, 6 candidates) through the CLI, every scale 1 so that its
    exports compute exactly the stacks the ledger scored. The perplexity objective differs from candidate to
    candidate even on random models."""
    root = tmp_path_factory.mktemp("stack")
    data = stack_config(tiny_models, task_dir, root / "run", "nsga2", 6, scale_low=1.0, scale_high=1.0)
    data["tasks"]["p"] = {
        "kind": "perplexity",
        "data": str(task_dir),
        "template": "{prompt}{answer}",
        "limit": 4,
    }
    data["objectives"].append({"task": "p"})
    assert main(["run", str(write_config(root / "c.yaml", data))]) == 0
    return root / "run"


def stored(run_dir: Path):
    """The run's config and study as `evomerge report` and `export` read them."""
    config = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    return config, load_run_study(config)


def test_the_best_stack_exports_as_a_checkpoint_that_scores_what_the_ledger_recorded(stack_run, tmp_path):
    out = tmp_path / "best"
    assert main(["export", str(stack_run), "--out", str(out)]) == 0
    config, study = stored(stack_run)
    best = best_trial(config, [t for t in study.get_trials() if t.state == TrialState.COMPLETE])
    stack = load_stack(out / "recipe.yaml")
    assert stack == trial_recipe(best) and stack.to_yaml() == best.user_attrs["recipe"]
    exported = AutoModelForCausalLM.from_pretrained(out).to(torch.float32)
    assert exported.config.num_hidden_layers == len(stack.layers)

    scorer = CandidateScorer(config)
    assert scorer.evaluator.score(exported, "held_out") == held_out_scores(study)[best.number]
    scorer.engine.materialize(stack, scorer.model)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, scorer.model(ids).logits)

    card = (out / "README.md").read_text()
    assert f"Layer stack of 2 models ({len(stack.layers)} layers)" in card and "Every scale is 1" in card
    for index, layer in enumerate(stack.layers):
        assert f"| {index} | {layer.source} | {layer.layer} | 1.0000 | 1 |" in card
    assert "repeated 2 times" in card and "| p | nll |" in card

    again = tmp_path / "again"
    assert main(["merge", str(out / "recipe.yaml"), "--out", str(again)]) == 0
    written, rebuilt = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert written.keys() == rebuilt.keys() and all(torch.equal(written[k], rebuilt[k]) for k in written)

    other = next(t for t in study.get_trials() if t.state == TrialState.COMPLETE and t.number != best.number)
    assert main(["export", str(stack_run), "--out", str(out), "--trial", str(other.number), "--force"]) == 0
    assert (out / "recipe.yaml").read_text() == other.user_attrs["recipe"]
    assert other.number in held_out_scores(study)  # computed for the export if the run had not, and stored


def test_the_report_of_a_stack_run_compares_each_source_alone_and_draws_the_best_stack(stack_run):
    assert main(["report", str(stack_run)]) == 0
    text = (stack_run / "report.md").read_text()
    for expected in (
        "- layer stack of: source 0",
        "## Results on the held-out split",
        "a alone (trial 0)",
        "b alone (trial 1)",
        "pareto:1",
        "found at evaluation",
        "## Best stack recipe",
        "layers:",
    ):
        assert expected in text, expected
    for plot in ("progress.png", "pareto.png", "best_stack.png"):
        assert (stack_run / plot).read_bytes()[:8] == PNG_MAGIC
        assert f"]({plot})" in text
    assert not (stack_run / "best_recipe.png").exists()
    _, study = stored(stack_run)
    assert {0, 1} <= held_out_scores(study).keys()  # each source alone, scored for its held-out column


def test_bad_export_of_a_stack_run_gets_one_line_and_exit_2_and_writes_nothing(stack_run, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "e"
    assert main(["export", str(stack_run), "--out", str(out), "--pick", "pareto:9"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "pareto:K with K from 1 to" in error and not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", str(stack_run), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "already exists" in error
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert main(["baselines", str(stack_run)]) == 2
    assert "does not handle layer-stacking (stack:) runs" in capsys.readouterr().err


@pytest.fixture(scope="module")
def scaled_stack(tiny_models, task_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A stack run with searched scales (CMA-ES, 5 candidates) and the export, with its mergekit config, of
    its deepest candidate whose scales are not all 1: (run directory, export directory)."""
    root = tmp_path_factory.mktemp("scaled")
    config = write_config(root / "c.yaml", stack_config(tiny_models, task_dir, root / "run", evaluations=5))
    assert main(["run", str(config)]) == 0
    _, study = stored(root / "run")
    scaled = [t for t in study.get_trials() if any(s != 1.0 for s in map(itemgetter(2), recorded_layers(t)))]
    chosen = max(scaled, key=lambda t: len(recorded_layers(t)))
    out = root / "export"
    assert (
        main(
            [
                "export",
                str(root / "run"),
                "--out",
                str(out),
                "--trial",
                str(chosen.number),
                "--format",
                "mergekit",
            ]
        )
        == 0
    )
    return root / "run", out


def recorded_layers(trial) -> list[list]:
    return yaml.safe_load(trial.user_attrs["recipe"])["layers"]


def test_a_scaled_stack_exports_with_its_scales_folded_and_says_so(scaled_stack, capsys):
    run_dir, out = scaled_stack
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    status = capsys.readouterr().out
    assert "progress: 5/5" in status and "each source alone" in status and "uniform" not in status
    stack = load_stack(out / "recipe.yaml")
    card = (out / "README.md").read_text()
    assert "folded into the weights" in card and "exactly up to RMSNorm's epsilon" in card
    for index, (layer, factor) in enumerate(zip(stack.layers, folded_factors(stack))):
        assert f"| {index} | {layer.source} | {layer.layer} | {layer.scale:.4f} | {factor:.6g} |" in card
    config, _ = stored(run_dir)
    scorer = CandidateScorer(config)
    scorer.engine.materialize(stack, scorer.model)
    exported = AutoModelForCausalLM.from_pretrained(out).to(torch.float32)
    # The fold is exact but for the epsilon inside RMSNorm, which is not small beside the mean square of these
    # random models' hidden states (about 1e-4): without it, the two agree to float32 rounding.
    for model in (exported, *(source.model for source in scorer.engine.sources)):
        for module in model.modules():
            if hasattr(module, "variance_epsilon"):
                module.variance_epsilon = 0.0
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, scorer.model(ids).logits, rtol=1e-5, atol=1e-6)
    mergekit = yaml.safe_load((out / "mergekit.yaml").read_text())
    assert mergekit["merge_method"] == "passthrough" and len(mergekit["slices"]) == len(stack.layers) + 2


def test_mergekit_writes_the_same_tensors_as_the_stack_export(scaled_stack, tmp_path):
    default = Path(__file__).parents[1] / ".mergekit-venv" / "bin" / "mergekit-yaml"
    mergekit_yaml = Path(os.environ.get("MERGEKIT_YAML", default))
    if not mergekit_yaml.is_file():
        pytest.skip(f"no mergekit at {mergekit_yaml} (see experiments/setup_mergekit.sh, or MERGEKIT_YAML)")
    _, out = scaled_stack
    subprocess.run(
        [str(mergekit_yaml), str(out / "mergekit.yaml"), str(tmp_path / "mk")],
        check=True,
        capture_output=True,
    )
    ours, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "mk" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_mergekit_cannot_read_a_stack_over_an_inline_merge(tiny_models):
    merge = {"method": "linear", "sources": [{"model": str(tiny_models[name])} for name in ("a", "b")]}
    stack = stack_from_dict({"sources": [str(tiny_models["a"]), merge], "layers": [[1, 0, 1.0]]})
    with pytest.raises(UsageError, match="mergekit cannot read stack source 1, an inline merge"):
        stack_mergekit_config(stack)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"repeats": 0}, "stack.repeats: Input should be greater than or equal to 1"),
        ({"min_depth": 6, "max_depth": 5}, "max_depth 5 < min_depth 6"),
        ({"min_depth": 9, "max_depth": 9}, "min_depth 9 is more than the 8 slots"),
        ({"sources": ["WIDE"]}, "cannot be stacked"),
    ],
)
def test_bad_stack_configs_get_one_line_and_exit_2_before_anything_is_written(
    change, message, tiny_models, task_dir, tmp_path, capsys
):
    if change.get("sources") == ["WIDE"]:
        change = {
            "sources": [
                str(tiny_models["a"]),
                str(save_tiny_llama(tmp_path / "wide", 3, num_attention_heads=4)),
            ]
        }
    data = stack_config(tiny_models, task_dir, tmp_path / "run", **change)
    assert main(["run", str(write_config(tmp_path / "c.yaml", data))]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "run").exists()
