"""`evomerge demo`: the whole workflow on the tiny zoo, in one command.

It takes the zoo shipped with the package, evolves a per-layer DARE merge of its three experts with
`configs/demo.yaml`, scores the usual merges (`evomerge baselines`), writes the run's report, exports the
evolved model and prints every model's held-out scores. `demo.json` in the output directory marks it as a
demo's, so that the next demo may replace it and nothing else is ever deleted.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from evomerge.errors import UsageError
from evomerge.extras import require

#: The demo's run config, shipped inside the package: a wheel has no `configs/` (configs/demo.yaml is a copy).
DEMO_CONFIG = resources.files("evomerge") / "configs" / "demo.yaml"
DEMO_MARKER = "demo.json"


def run_demo(out: Path) -> None:
    """Run the demo into `out` (a previous demo's output there is replaced) and print its results table."""
    from evomerge.config import load_config
    from evomerge.output.export import export_candidate, pick_trial
    from evomerge.output.report import results_table, write_report
    from evomerge.search.baselines import baseline_rows, run_baselines
    from evomerge.search.ledger import load_run_study
    from evomerge.search.loop import Search
    from evomerge.search.results import Row, held_out_scores, objective_values
    from evomerge.search.runs import write_run_config
    from evomerge.zoo.build import ensure_zoo

    require("matplotlib", "plots", "the demo's report")  # before minutes of search
    if out.exists():
        if not (out / DEMO_MARKER).is_file():
            raise UsageError(f"'{out}' exists and is not a previous demo's output; choose another --out")
        shutil.rmtree(out)
    zoo = ensure_zoo()
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text(json.dumps({"zoo": str(zoo), "finished": False}) + "\n")
    with resources.as_file(DEMO_CONFIG) as demo_config:
        config = load_config(demo_config, {"run_dir": str(out / "run")})
    print(
        f"searching per-layer DARE weights and drop rates ({config.budget.evaluations} candidates, "
        "CMA-ES) ..."
    )
    write_run_config(config)
    Search(config).run()
    print("merging the experts the usual ways (baselines, each tuned on the search split) ...")
    baselines = run_baselines(config)
    report = write_report(config)
    study = load_run_study(config)
    best, chosen_as = pick_trial(config, study, None, "best")
    export_candidate(config, study, best, chosen_as, out / "evolved")
    evolved = Row(
        f"evolved (CMA-ES, trial {best.number})",
        list(best.values),
        objective_values(config, held_out_scores(study)[best.number]),
    )
    rows = [*baseline_rows(config, baselines), evolved]
    table = {row.name: dict(zip((o.task for o in config.objectives), row.held_out)) for row in rows}
    (out / DEMO_MARKER).write_text(
        json.dumps({"zoo": str(zoo), "finished": True, "held_out": table}, indent=2) + "\n"
    )
    print(
        "\nexact match on the held-out split (the search and the baselines' grids saw only the search split):"
    )
    print(results_table(config, rows))
    print(f"\nreport: {report}; the evolved model (with recipe.yaml and README.md): {out / 'evolved'}")
