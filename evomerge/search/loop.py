"""The search loop: ask for a candidate, materialize it in place, score it on the search split, record it.

The optimizer (search/optimizers: a registered driver) proposes the candidates; `Search` evaluates and records
them, and holds the ledger, the budget, the progress bar and the log.

Guarantees:
- **Exact resume.** The ledger is the only state, so that a run killed at any moment can go on. A `kill -9`
  loses at most the candidate in flight; a resumed serial run evaluates the same candidates in the same order
  as an uninterrupted one and ends with the same ledger values. Each driver rebuilds its state from the ledger
  (Optuna samplers: optuna_samplers.py; pycma's replay of the recorded generations: pycma.py).
- **Failures are data.** A candidate whose merge or evaluation raises becomes a FAILED trial with its reason;
  the optimizer is told a penalty (pycma) or the failure (Optuna) and the search goes on.
  `max_consecutive_failures` failures in a row stop the run with the last reason.
- **Seeds first.** The first candidates are the template recipe with every searched parameter at the method's
  default (equal weights: the uniform merge) and then each of `seed_recipes`; CMA-ES starts from the best.
  A layer-stacking search (evomerge/stack/recipe.py) starts from each source as it is.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from evomerge.boundary import machine_fault
from evomerge.config import RunConfig
from evomerge.errors import MergeFailure, SearchFailed, UsageError
from evomerge.evaluate.tasks import Partial
from evomerge.search.faults import inject_after_record, inject_before_merge, planned_faults
from evomerge.search.held_out import record_held_out
from evomerge.search.ledger import ELAPSED_ATTR, open_study
from evomerge.search.optimizers import get_optimizer
from evomerge.search.optimizers.scalarization import fitnesses
from evomerge.search.pruning import Pruner
from evomerge.search.scoring import CandidateScorer

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass
class Outcome:
    """A scored candidate (values), a failed one (no values), or a pruned one (no values, an estimate)."""

    values: list[float] | None
    attrs: dict[str, Any] = field(default_factory=dict)
    estimate: list[float] | None = None

    @property
    def state(self) -> TrialState:
        if self.values is not None:
            return TrialState.COMPLETE
        return TrialState.PRUNED if self.estimate is not None else TrialState.FAIL


class Search:
    """One run: its config, ledger, resident models, genome and evaluator."""

    def __init__(self, config: RunConfig, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.scorer = CandidateScorer(config)
        self.genome, self.seed_recipes = self.scorer.space.genome(self.scorer.engine)
        self.seed_points = [self.genome.encode(recipe) for recipe in self.seed_recipes]
        early = config.early_stopping
        self.pruner = Pruner(config, self.scorer.evaluator.metrics()) if early.enabled else None
        self.study, self.resumed = self.open_ledger()
        self.log = _file_logger(config)
        self.started = time.monotonic()
        self.elapsed_before = float(self.study.user_attrs.get(ELAPSED_ATTR, 0.0))
        self.bar = None

    def open_ledger(self) -> tuple[optuna.Study, bool]:
        """The run's study and whether it is resumed (a shared run opens it its own way: search/worker.py)."""
        return _open_run(self.config)

    # ------------------------------------------------------------------ the loop

    def run(self) -> optuna.Study:
        self.log.info("%s run in %s", "resuming" if self.resumed else "starting", self.config.run_dir)
        with self._progress_bar():
            get_optimizer(self.config.optimizer.name).drive(self)
        self.log.info("finished: %d candidates evaluated", self.finished())
        self.check_some_candidate_scored()
        for number, scores in record_held_out(self.config, self.study, self.scorer).items():
            self.log.info("held-out scores of trial %d: %s", number, scores)
        return self.study

    # ------------------------------------------------------------------ recording

    def distributions(self) -> dict[str, FloatDistribution]:
        """The genes as Optuna parameter distributions."""
        return {
            gene.name: FloatDistribution(gene.param.low, gene.param.high, log=gene.param.log)
            for gene in self.genome.genes
        }

    def add_trial(
        self, point: dict[str, float], outcome: Outcome, attrs: dict[str, Any]
    ) -> optuna.trial.FrozenTrial:
        """Record an evaluated candidate that no trial of the study asked for (pycma's), with `attrs`."""
        trial = optuna.trial.create_trial(
            state=outcome.state,
            values=outcome.values,
            params=point,
            distributions=self.distributions(),
            user_attrs={**outcome.attrs, **attrs},
        )
        self.study.add_trial(trial)
        added = self.study.get_trials(deepcopy=False)[-1]
        self._after(added.number, outcome)
        return added

    def tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        """Record the outcome of a trial the study asked for (an Optuna sampler's)."""
        for key, value in outcome.attrs.items():
            trial.set_user_attr(key, value)
        if outcome.state == TrialState.COMPLETE:
            self.study.tell(trial, outcome.values)
        else:
            if outcome.state == TrialState.PRUNED and not self.config.multi_objective:
                trial.report(outcome.estimate[0], step=outcome.attrs["examples_scored"])
            self.study.tell(trial, state=outcome.state)
        self._after(trial.number, outcome)

    # ------------------------------------------------------------------ one candidate

    def evaluate(self, point: dict[str, float]) -> Outcome:
        """Materialize and score one candidate; any exception becomes a failed outcome with its reason."""
        recipe = self.genome.decode(point)
        attrs: dict[str, Any] = {"recipe": recipe.to_yaml()}
        try:
            if planned_faults():
                inject_before_merge(self.study.study_name, self.finished())
            started = time.perf_counter()
            self.scorer.engine.materialize(recipe, self.scorer.model)
            merged = time.perf_counter()
            if self.pruner is not None:
                partial = self._score_or_prune()
                attrs.update(merge_seconds=merged - started, eval_seconds=time.perf_counter() - merged)
                if not partial.complete:
                    estimate = self.pruner.estimate(partial)
                    scored = sum(map(partial.scored, partial.sizes))
                    attrs.update(partial_scores=partial.means(), examples_scored=scored, estimate=estimate)
                    return Outcome(None, attrs, estimate=estimate)
                scores = partial.means()
            else:
                scores = self.scorer.evaluator.score(self.scorer.model, "search")
            values = [scores[o.task][o.metric] for o in self.config.objectives]
            if not all(math.isfinite(v) for v in values):
                raise MergeFailure(f"an objective is not finite: {values}")
        except Exception as error:  # any failure of one candidate is data, not a crash: the search goes on
            if machine_fault(error) is not None:  # unless the machine failed (a full disk): all would fail
                raise
            return Outcome(None, {**attrs, "failure_reason": f"{type(error).__name__}: {error}"})
        attrs.update(scores=scores, merge_seconds=merged - started, eval_seconds=time.perf_counter() - merged)
        return Outcome(values, attrs)

    def _score_or_prune(self) -> Partial:
        """Score the target model in chunks, stopping once it cannot beat the k-th best completed one."""
        completed = [t for t in self.finished_trials() if t.state == TrialState.COMPLETE]
        chunk_size = self.config.early_stopping.chunk_size
        return self.scorer.evaluator.score_progressively(
            self.scorer.model, "search", chunk_size, self.pruner.keep_going(completed)
        )

    def _after(self, number: int, outcome: Outcome) -> None:
        self.study.set_user_attr(ELAPSED_ATTR, self.elapsed())
        if outcome.state == TrialState.PRUNED:
            self.log.info(
                "trial %d pruned after %d examples: %s",
                number,
                outcome.attrs["examples_scored"],
                outcome.attrs["partial_scores"],
            )
        elif outcome.values is None:
            self.log.warning("trial %d failed: %s", number, outcome.attrs["failure_reason"])
        else:
            self.log.info(
                "trial %d: %s (merge %.2f s, eval %.2f s)",
                number,
                ", ".join(f"{o.task}={v:.4f}" for o, v in zip(self.config.objectives, outcome.values)),
                outcome.attrs["merge_seconds"],
                outcome.attrs["eval_seconds"],
            )
        if self.bar is not None:
            self.bar.update(1)
            best = self.best_value()
            if best is not None:
                self.bar.set_postfix(best=f"{best:.4f}")
        self._stop_after_failures()
        inject_after_record(self.study.study_name, number)

    def _stop_after_failures(self) -> None:
        limit = self.config.budget.max_consecutive_failures
        trials = self.finished_trials()
        tail = trials[-limit:]
        if len(tail) == limit and all(t.state == TrialState.FAIL for t in tail):
            raise SearchFailed(
                f"stopped after {limit} failed candidates in a row; the last: "
                f"{tail[-1].user_attrs.get('failure_reason')} (see {self.config.run_dir / 'run.log'})"
            )

    def check_some_candidate_scored(self) -> None:
        """Raise SearchFailed when the search ended with every candidate failed: nothing to report, export."""
        trials = self.finished_trials()
        if trials and not any(t.state == TrialState.COMPLETE for t in trials):
            raise SearchFailed(
                f"every candidate failed ({len(trials)} of {len(trials)}); the last: "
                f"{trials[-1].user_attrs.get('failure_reason')} (see {self.config.run_dir / 'run.log'})"
            )

    # ------------------------------------------------------------------ budget and progress

    def finished_trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=FINISHED)

    def finished(self) -> int:
        return len(self.finished_trials())

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def budget_left(self) -> bool:
        budget = self.config.budget
        if budget.evaluations is not None and self.finished() >= budget.evaluations:
            return False
        return budget.wall_clock_seconds is None or self.elapsed() < budget.wall_clock_seconds

    def best_value(self) -> float | None:
        """The best scalarized objective so far, as a value to maximize (for the progress bar)."""
        completed = [t for t in self.finished_trials() if t.state == TrialState.COMPLETE]
        if not completed:
            return None
        objectives, method = self.config.objectives, self.config.optimizer.scalarization
        return -min(fitnesses(completed, completed, objectives, method))

    def _progress_bar(self):
        from contextlib import nullcontext

        if not self.progress:
            return nullcontext()
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.config.budget.evaluations,
            initial=self.finished(),
            desc="search",
            unit="candidate",
            disable=None,
        )
        return self.bar


def _open_run(config: RunConfig) -> tuple[optuna.Study, bool]:
    """Open the run's study, creating the run directory; a directory made here goes again if that fails."""
    created = not config.run_dir.exists()
    config.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return open_study(config)
    except UsageError:
        if created:
            shutil.rmtree(config.run_dir, ignore_errors=True)
        raise


def _file_logger(config: RunConfig) -> logging.Logger:
    log = logging.getLogger(f"evomerge.run.{config.run_dir.resolve()}")
    if not log.handlers:
        handler = logging.FileHandler(config.run_dir / "run.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log
