"""A shared search: any number of worker processes, on one machine or many, serve one study.

`evomerge run CONFIG --storage URL --study NAME` creates the study (or joins it), `evomerge worker --storage
URL --study NAME` joins it with the config stored in it. Each worker holds its own resident models on its own
device and loops: claim a candidate, materialize and score it, tell. Optuna's RDB storage is the only shared
state; there is no scheduler process.

Why the budget ends with exactly N evaluated candidates, none evaluated twice:

1. A worker claims under the study lock (`storage.study_lock`). First it fails the RUNNING trials of dead
   workers (heartbeat older than the grace period); Optuna's retry callback enqueues each one's parameters
   again as a WAITING trial. Then it counts evaluated (`ledger.counts_toward_budget`) + RUNNING trials, and
   asks only while that is below N. `ask` takes a WAITING trial first (a seed, or a retry), else samples.
   Before it lets the lock go, the trial has all its parameters, its first heartbeat and the worker's name.
2. A RUNNING trial ends either evaluated or lost (failed without a reason, and enqueued again, both under the
   lock). So evaluated + RUNNING never exceeds N, and workers stop when evaluated reaches N; a worker that
   finds the budget fully claimed waits for the others and watches for dead ones.
3. A worker whose trial was given up while it was still evaluating it (it missed heartbeats for the whole
   grace period: a stalled node) finds its trial finished when it tells; its result is dropped and the retry
   counts.
4. Every database step is repeated after a lost connection (`storage.patiently`); each is safe to repeat: a
   claim that died after `ask` leaves a RUNNING trial without a worker name, which the next claim fails and
   enqueues again once it is older than the grace period. One that died inside `ask` leaves it with some of
   its parameters or none; its retry draws the others, seeded by its own trial number like every trial.

Unlike a one-process run, a shared run is not reproducible trial for trial: which worker asks when depends on
timing. Samplers are still seeded per trial number. pycma's CMA-ES (`cmaes`) is refused: it needs each
generation told at once in one process; the shareable optimizers are those registered `shareable`
(search/optimizers).
"""

from __future__ import annotations

import copy
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from evomerge.config import RunConfig, config_from_dict
from evomerge.errors import UsageError
from evomerge.search.faults import inject_after_claim
from evomerge.search.held_out import record_held_out
from evomerge.search.ledger import (
    CONFIG_ATTR,
    HEARTBEAT_ATTR,
    counts_toward_budget,
    create_study,
    load_checked_study,
    run_place,
    unknown_study,
)
from evomerge.search.loop import Search
from evomerge.search.optimizers import get_optimizer, optimizers
from evomerge.search.optimizers.optuna_samplers import OptunaSampler, finish_trial, trial_seed
from evomerge.search.storage import Heartbeat, open_storage, patiently, quietly, study_lock, study_names
from evomerge.search.timing import GRACE_HEARTBEATS, HEARTBEAT_SECONDS, PATIENCE_SECONDS

T = TypeVar("T")
WORKER_ATTR = "worker"
#: A trial lost this many times (its worker died each time: out of memory, a lost node) is not retried again.
MAX_RETRIES = 2


class RetryUnclaimed(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a lost trial, less the name of the worker that lost it: the retry is nobody's until a
    worker claims it, so a claim that died before naming its worker shows (see `_fail_lost_trials`)."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        unclaimed = copy.copy(trial)
        unclaimed.user_attrs = {key: value for key, value in trial.user_attrs.items() if key != WORKER_ATTR}
        super().__call__(study, unclaimed)


class SharedSearch(Search):
    """One worker of a shared study. `heartbeat_seconds` applies when this worker creates the study; a study
    that exists keeps its own."""

    def __init__(
        self,
        config: RunConfig,
        heartbeat_seconds: int = HEARTBEAT_SECONDS,
        patience: float = PATIENCE_SECONDS,
        progress: bool = True,
    ) -> None:
        self.optimizer = shareable_optimizer(config)
        self.heartbeat_seconds, self.patience = heartbeat_seconds, patience
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # A bad URL, password or model file is refused here, before minutes of loading models.
        storage = open_storage(config.storage_url)
        if config.study in study_names(storage):
            load_checked_study(storage, config, shared=True)
        super().__init__(config, progress)

    def open_ledger(self) -> tuple[optuna.Study, bool]:
        """Create the study with its seeds enqueued, or join it; then reopen it with heartbeats on."""
        config = self.config
        storage = open_storage(config.storage_url)
        with study_lock(storage, config.study):
            resumed = config.study in study_names(storage)
            if resumed:
                study = load_checked_study(storage, config, shared=True)
            else:
                study = create_study(storage, config, self.heartbeat_seconds)
                for point in self.seed_points:
                    study.enqueue_trial(point)
        retry = quietly(RetryUnclaimed, max_retry=MAX_RETRIES)
        self.storage = open_storage(config.storage_url, study.user_attrs[HEARTBEAT_ATTR], retry)
        config.run_dir.mkdir(parents=True, exist_ok=True)
        return optuna.load_study(study_name=config.study, storage=self.storage), resumed

    # ------------------------------------------------------------------ the loop

    def run(self) -> optuna.Study:
        joins = "joins" if self.resumed else "starts"
        self.log.info("worker %s %s %s", self.name, joins, run_place(self.config))
        with self._progress_bar():
            while True:
                trial = self._patiently(self._claim)
                if trial is not None:
                    self._evaluate_claimed(trial)
                elif self._patiently(self._budget_spent):
                    break
                else:  # the budget is fully claimed by running trials: wait for them, or for their retries
                    time.sleep(min(self.storage.heartbeat_interval, 5))
        self.log.info("worker %s finished: %d candidates evaluated in the study", self.name, self.finished())
        self.check_some_candidate_scored()
        # The first worker done scores the reported trials on held-out data; the others find them scored.
        with study_lock(self.storage, self.config.study):
            for number, scores in record_held_out(self.config, self.study, self.scorer).items():
                self.log.info("held-out scores of trial %d: %s", number, scores)
        return self.study

    def _claim(self) -> optuna.Trial | None:
        """A RUNNING trial for this worker, or None while the budget allows no more (module docstring)."""
        with study_lock(self.storage, self.config.study):
            self._fail_lost_trials()
            trials = self.study.get_trials(deepcopy=False)
            claimed = sum(counts_toward_budget(t) or t.state == TrialState.RUNNING for t in trials)
            evaluations, wall_clock = self._budget()
            if (evaluations is not None and claimed >= evaluations) or (
                wall_clock is not None and self.elapsed() >= wall_clock
            ):
                return None
            # Seeded by the number of the trial `ask` returns: the first WAITING one, else a new one. A retry
            # of a claim that died inside `ask` draws the parameters it lacks; with the seed of the next new
            # trial, that trial would draw the same candidate again.
            number = next((t.number for t in trials if t.state == TrialState.WAITING), len(trials))
            seed = trial_seed(self.config.seed, number)
            self.study.sampler = self.optimizer.sampler(self.config.optimizer, seed, shared=True)
            with warnings.catch_warnings():  # Optuna expects heartbeats with study.optimize; we keep our own
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = self.study.ask(self.distributions())
            self.storage.record_heartbeat(trial._trial_id)
            trial.set_user_attr(WORKER_ATTR, self.name)
            return trial

    def _fail_lost_trials(self) -> None:
        """Fail (and so enqueue again) the trials of dead workers: those whose heartbeat stopped, and those
        whose claim died before its first heartbeat (no worker name, older than the grace period)."""
        quietly(optuna.storages.fail_stale_trials, self.study)
        grace = timedelta(seconds=GRACE_HEARTBEATS * self.storage.heartbeat_interval)
        retry = self.storage.get_heartbeat_stale_trial_callback()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if WORKER_ATTR not in trial.user_attrs and datetime.now() - trial.datetime_start > grace:
                if self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                    retry(self.study, self.study.get_trials(deepcopy=False)[trial.number])

    def _evaluate_claimed(self, trial: optuna.Trial) -> None:
        inject_after_claim()
        try:
            with Heartbeat(self.storage, trial._trial_id):
                self._patiently(lambda: finish_trial(self, trial))
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            frozen = self._patiently(lambda: self.study.get_trials(deepcopy=False)[trial.number])
            if not frozen.state.is_finished():
                raise
            if not counts_toward_budget(frozen):
                self.log.warning(
                    "trial %d was given up as lost while worker %s evaluated it (no heartbeat for %d s); its "
                    "result is dropped and its retry counts",
                    trial.number,
                    self.name,
                    GRACE_HEARTBEATS * self.storage.heartbeat_interval,
                )

    # ------------------------------------------------------------------ budget and storage

    def _budget(self) -> tuple[int | None, float | None]:
        """The budget as the study holds it now (a run that joins with a larger one extends it for all)."""
        budget = self.study.user_attrs[CONFIG_ATTR]["budget"]
        return budget["evaluations"], budget["wall_clock_seconds"]

    def _budget_spent(self) -> bool:
        evaluations, wall_clock = self._budget()
        if wall_clock is not None and self.elapsed() >= wall_clock:
            return True
        return evaluations is not None and self.finished() >= evaluations

    def finished_trials(self) -> list[optuna.trial.FrozenTrial]:
        """The evaluated trials, not those lost with a dead worker (their retries are evaluated instead)."""
        return [t for t in super().finished_trials() if counts_toward_budget(t)]

    def _patiently(self, step: Callable[[], T]) -> T:
        def say(message: str) -> None:
            self.log.warning("worker %s: %s", self.name, message)
            print(f"evomerge: {message}", file=sys.stderr)

        return patiently(step, self.config.storage_url, self.patience, say)


def shareable_optimizer(config: RunConfig) -> OptunaSampler:
    """The config's optimizer, which workers share by asking it through the study: an Optuna sampler."""
    optimizer = get_optimizer(config.optimizer.name)
    if not optimizer.shareable:
        shareable = [o.name for o in optimizers() if o.shareable]
        raise UsageError(
            f"optimizer '{optimizer.name}' ({optimizer.title}) runs in one process and cannot be shared by "
            f"workers; for a shared run use one of: {', '.join(shareable)} (tpe runs with constant liar)"
        )
    assert isinstance(optimizer, OptunaSampler), f"a shareable optimizer is an Optuna sampler: {optimizer}"
    return optimizer


def joined_config(
    url: str, study_name: str, device: str | None = None, run_dir: str | None = None, worker: bool = True
) -> RunConfig:
    """The config stored in a study, to run here (on this storage URL, device and run directory) as a
    `worker`, which only a shared study takes, or to read the study (status)."""
    storage = open_storage(url)
    names = study_names(storage)
    if study_name not in names:
        raise UsageError(unknown_study(study_name, url, names))
    attrs = optuna.load_study(study_name=study_name, storage=storage).user_attrs
    if CONFIG_ATTR not in attrs:
        raise UsageError(f"the study '{study_name}' was not made by evomerge")
    if worker and HEARTBEAT_ATTR not in attrs:
        raise UsageError(
            f"the study '{study_name}' is a one-process run (started without --storage); workers can only "
            "join a study started with: evomerge run CONFIG --storage URL --study NAME"
        )
    stored = attrs[CONFIG_ATTR]
    # The study's seeds were enqueued when it was made: a worker needs neither them nor their files.
    place = {"storage": url, "study": study_name, "seed_recipes": []}
    place.update({key: value for key, value in {"device": device, "run_dir": run_dir}.items() if value})
    return config_from_dict({**stored, **place}, origin=f"the config stored in the study '{study_name}'")


def is_shared(config: RunConfig) -> bool:
    """Whether the config's study exists and is shared (so resuming it means joining it as a worker)."""
    if config.storage is None:
        return False
    storage = open_storage(config.storage)
    if config.study not in study_names(storage):
        return False
    return HEARTBEAT_ATTR in optuna.load_study(study_name=config.study, storage=storage).user_attrs
