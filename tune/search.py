"""The Tuner: trainable + OptunaSearch (TPE or random) + ASHA + resources + storage under results/<name>/."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

# Read when Tune's controller starts: snapshot the experiment every 2 s, which bounds what a killed driver
# loses; the classic output flow, the one that takes a progress reporter (tune/progress.py); of the
# checkpoints Ray lists per trial (it deletes none: the trainable does), keep only the newest one's metrics.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
# a search started with num_to_keep (before 2026-12-06) still forces a snapshot after each checkpoint when
# resumed (Ray restores its config): Ray's warning about that says nothing a user can act on
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"   # the loggers are ours to choose: TrialBoard for TBX
# Ray caps the trials waiting to start at a custom searcher's concurrency limit as it was at launch, which
# would hold a cluster's WideningLimiter to the nodes there then; the limiter alone bounds live trials
os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "1000")

import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
from ray import tune  # noqa: E402
from ray.train._internal.checkpoint_manager import _CheckpointManager  # noqa: E402
from ray.tune import Callback  # noqa: E402
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, LoggerCallback  # noqa: E402
from ray.tune.schedulers import FIFOScheduler  # noqa: E402

from search_spaces import Space, parse  # noqa: E402
from trainables.board import log_epoch, log_session  # noqa: E402
from trainables.files import write_json, write_text  # noqa: E402
from trainables.tune_report import tune_trainable  # noqa: E402
from tune import resources  # noqa: E402
from tune.budget import Budget, BudgetStopper  # noqa: E402
from tune.progress import SearchProgress  # noqa: E402
from tune.cli import UsageError  # noqa: E402
from tune.pruning import ResumableASHA, TruthfulOptunaSearch, WideningLimiter, widening_width  # noqa: E402
from tune.trials import (PROGRESS_FILE, RESULT_FILE, SETTINGS_FILE, STEP, STUDY_FILE, checkpoint_state,  # noqa: E402
                         ended_as, location_of, read_text, trial_dirname, with_history)
from tune.study import searcher_storage  # noqa: E402

METRIC, MODE = "accuracy", "max"
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Settings:
    """Everything a search needs; saved in results/<name>/search.json so that --resume needs nothing else."""
    space: dict                  # the space in its file format (search_spaces.Space.to_dict)
    space_name: str
    name: str
    root: str                    # absolute results root; Ray's storage_path
    samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: int
    seed: int = 0
    searcher: str = "tpe"        # tpe | random
    scheduler: str = "asha"      # asha | none
    concurrent: int | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    retries: int = 0
    address: str | None = None
    storage: str | None = None   # where the trials go: a shared folder or a URI; None: in root too
    datasets: dict | None = None  # {data: {split: fingerprint of the files that split reads}}
    time_budget_s: float | None = None  # the driver's running time the search may take (tune/budget.py)
    warm_start: list | None = None   # the past searches whose trials the study started with (tune/warm.py)

    @property
    def experiment(self) -> Path:
        """The driver's folder: search.json, the study, the export (and the trials, without a URI)."""
        return Path(self.root) / self.name

    @property
    def location(self) -> str:
        """Where Ray keeps the trials and its state (tune/trials.py)."""
        return location_of(self.root, self.name, self.storage)

    @property
    def startup(self) -> int:
        """The sampler's random start-up trials: TPE's, none for a random sampler."""
        return startup_trials(self.samples) if self.searcher == "tpe" else 0

    def parsed_space(self) -> Space:
        # a search saved before spaces chose on the holdout scored its trials on val/: it resumes so
        return parse({"split": "val", **self.space}, self.space_name)

    def save(self) -> None:
        write_json(self.experiment / SETTINGS_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, experiment: Path) -> "Settings":
        f = Path(experiment) / SETTINGS_FILE
        if not f.is_file():
            raise UsageError(f"{experiment} is not a search started by tune/run.py (no {SETTINGS_FILE})")
        s = cls(**json.loads(f.read_text()))
        if s.experiment.resolve() != Path(experiment).resolve():  # Ray's and Optuna's state name the old place
            raise UsageError(f"{experiment} was started at {s.experiment}; resume it there (a moved search "
                             "cannot be resumed)")
        return s


def domain(dist):
    """A space distribution as a Ray Tune domain (OptunaSearch turns these into Optuna distributions)."""
    if dist.kind == "uniform":
        return tune.uniform(*dist.args)
    if dist.kind == "loguniform":
        return tune.loguniform(*dist.args)
    if dist.kind == "int":
        lo, hi, step = dist.args
        return tune.qrandint(lo, hi, step)  # upper bound included
    return tune.choice(list(dist.args))


def param_space(s: Settings) -> dict:
    space = s.parsed_space()
    return {**space.fixed, "epochs": s.max_epochs, **{k: domain(d) for k, d in space.params.items()}}


def startup_trials(samples: int) -> int:
    """TPE's random start-up trials: a quarter of the search, 3 to 10, whatever the width."""
    return min(10, max(3, samples // 4))


def width_note(searcher: str, samples: int, width: int) -> str | None:
    """A line for a TPE search whose trials are too few for its width: TPE learns only from finished trials,
    so a wide search of few trials starts many of its guided ones before any of them has finished."""
    guided = samples - startup_trials(samples)
    if searcher != "tpe" or samples >= 4 * width or guided <= 0:
        return None
    return (f"note: {samples} trials, up to {width} at once: TPE learns only from finished trials, and the first "
            f"{min(width, guided)} of its {guided} guided ones start before any of them has finished; give it about "
            f"4 times as many trials as run at once (--samples {4 * width}; what that buys: README, Width)")


def good_share(n: int) -> int:
    """How many of n finished trials TPE models as good: Optuna's tenth (at most 25), but at least 2. With
    Optuna's 1 (below 11 finished trials, at any width) the configs a wide search asks for at once after its
    start-up took that one trial's categorical values: in multivariate TPE a RUNNING trial (the constant
    liar's) weighs only near its own continuous values, so it does not keep a wave's categorical choices
    apart (benchmarks/first_wave.py). The second good trial is the next completed one, else the pruned one
    that got furthest (then the most accurate there). A search snapshotted before this share resumes with
    Optuna's (its pickled sampler has none set)."""
    return max(2, min(math.ceil(0.1 * n), 25))   # Optuna's default_gamma (not exported there), floored


class FixedSpaceTPE(optuna.samplers.TPESampler):
    """TPE over the one space every trial of a search shares (Ray's OptunaSearch asks each trial with the
    same distributions; past trials enter with them too). Optuna works that space out again from every
    trial at each suggestion: at 1,000 trials a suggestion took 50 ms with that, 36 ms without (side by side).
    It also converts every trial's values to its internal scale twice per suggestion; a finished trial's
    are converted once here (at 1,000 trials, about a sixth of a suggestion's time)."""

    def __init__(self, space: dict, gamma=good_share, seed=None, **kwargs):
        with warnings.catch_warnings():
            # deprecated in Optuna 4.9, kept until 6 (pyproject: <6)
            warnings.filterwarnings("ignore", message=".*`gamma`", category=FutureWarning)
            super().__init__(gamma=gamma, seed=seed, **kwargs)
            # the start-up trials spread over every knob's range (a scrambled Sobol sequence), not at random:
            # 10 random configs can leave a range untried, and TPE rarely goes where no finished trial is
            # (README, Width). QMCSampler is marked experimental in Optuna since 3.0.
            warnings.filterwarnings("ignore", message="QMCSampler", category=optuna.exceptions.ExperimentalWarning)
            self._spread = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                                      warn_asynchronous_seeding=False)
        self._space = {k: d for k, d in space.items() if not d.single()}
        self._internal = {}   # {trial id: its values in the space's internal scale, or None}

    def _sample_relative(self, study, trial, search_space) -> dict:
        finished = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED), use_cache=True)
        spread = getattr(self, "_spread", None)   # None in a search snapshotted before it: a random start-up
        # Optuna's own start-up test, where it would return {} and draw each knob at random
        if spread and search_space and len(finished) < self._n_startup_trials:
            return spread.sample_relative(study, trial, search_space)
        return super()._sample_relative(study, trial, search_space)

    def infer_relative_search_space(self, study, trial) -> dict:
        return dict(self._space)

    def _get_internal_repr(self, trials, search_space, study):
        if search_space != self._space:   # one parameter sampled on its own
            return super()._get_internal_repr(trials, search_space, study)
        rows = []
        for t in trials:
            if not t.state.is_finished():
                row = self._internal_row(t, study)
            elif (row := self._internal.get(t._trial_id, False)) is False:
                row = self._internal[t._trial_id] = self._internal_row(t, study)
            if row is not None:
                rows.append(row)
        columns = list(zip(*rows)) if rows else [[] for _ in self._space]
        return {k: np.asarray(c) for k, c in zip(self._space, columns)}

    def _internal_row(self, trial, study):
        params = self._get_params(trial, study)
        if self._space.keys() <= params.keys():
            return tuple(d.to_internal_repr(params[k]) for k, d in self._space.items())
        return None


def searcher(s: Settings, warm=None) -> TruthfulOptunaSearch:
    if s.searcher == "tpe":
        from tune.warm import space_distributions
        # constant_liar keeps concurrent trials apart; multivariate models the knobs' interactions
        sampler = FixedSpaceTPE(space_distributions(param_space(s)), seed=s.seed, multivariate=True,
                                constant_liar=True, n_startup_trials=s.startup)
    else:
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    # the study stays on the driver's disk (SQLite's locks and WAL do not work on NFS), mirrored to --storage
    storage = searcher_storage(s.experiment / STUDY_FILE)
    return TruthfulOptunaSearch(sampler=sampler, study_name=s.name, storage=storage, max_epochs=s.max_epochs,
                                startup=s.startup, experiment=s.location, mirror=bool(s.storage),
                                budget=str(s.experiment) if s.time_budget_s else None, warm=warm)


def scheduler(s: Settings):
    if s.scheduler == "none":
        return FIFOScheduler()
    return ResumableASHA(time_attr=STEP, max_t=s.max_epochs, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, experiment=s.location, home=str(s.experiment))


class TrialBoard(LoggerCallback):
    """Each trial's TensorBoard events in its folder: the metrics a person compares under plain names, and
    its HParams row when it ends (trainables/board.py). In place of Ray's TBXLoggerCallback, which logs
    every key of a result under ray/tune/, Ray's bookkeeping included, and calls every trial a success."""

    def __init__(self, max_epochs: int, budget: str | None):
        self.max_epochs, self.budget = max_epochs, budget
        self._writers, self._rows, self._started = {}, {}, {}

    def log_trial_start(self, trial):
        from torch.utils.tensorboard import SummaryWriter
        if trial in self._writers:
            self._writers[trial].close()
        trial.init_local_path()
        self._writers[trial] = SummaryWriter(trial.local_path, flush_secs=30)
        self._rows.setdefault(trial, [])
        self._started.setdefault(trial, time.time())

    def log_trial_result(self, iteration, trial, result):
        if trial not in self._writers:
            self.log_trial_start(trial)
        if STEP in result:
            log_epoch(self._writers[trial], result)
            self._rows[trial].append(result)

    def log_trial_end(self, trial, failed=False):
        if trial not in self._writers:
            self.log_trial_start(trial)
        rows = self._rows.pop(trial, [])
        epochs = rows[-1][STEP] if rows else 0
        status = ended_as(epochs, self.max_epochs, failed, bool(self.budget) and Budget(self.budget).over())
        log_session(self._writers[trial], trial.config, status, rows,
                    rows[-1].get("time_total_s") if rows else None, self._started.pop(trial, time.time()))
        self._writers.pop(trial).close()


class RestartedTrials(Callback):
    """Mends what Ray gets wrong about a trial that starts again after a kill. Listed before Ray's loggers,
    which open the trial's files at the same call.
    - Its checkpoint: Ray restores it from the checkpoint its last snapshot names. After a kill that one can
      be gone: the trainable keeps only its newest, and may have reported the next and deleted it after the
      last snapshot. The trial then starts without it (Ray has no setting for this), and tune_trainable
      takes the newest whole checkpoint in its folder.
    - Its logs: Ray's loggers append to result.json and progress.csv in the driver's staging folder, which Ray
      copies over the storage's; a new driver's staging folder can lack them (Ray brings down only the .json
      and .pkl files at the experiment folder's top),
      so the rows from before the kill would be lost. They are brought down first, and the epochs Ray will
      not be told again (up to its checkpoint's) that the storage lacks (its copy can be older than Ray's
      snapshot) are written from the checkpoint's history."""

    def on_trial_start(self, iteration, trials, trial, **info):
        named, fs = trial.latest_checkpoint_result, trial.storage.storage_filesystem
        told = checkpoint_state(fs, named.checkpoint.path) if named else None
        kept = trial.run_metadata.checkpoint_manager
        if kept.checkpoint_config.num_to_keep:   # a search started when Ray deleted checkpoints itself: on
            # one the trial already deleted it raises, and the trial's checkpoint numbering stops advancing
            kept._checkpoint_config = tune.CheckpointConfig()
        if named and fs.get_file_info(named.checkpoint.path).type == pafs.FileType.NotFound:
            trial.run_metadata.checkpoint_manager = _CheckpointManager(kept.checkpoint_config)
        local = Path(trial.local_path)
        for name in (RESULT_FILE, PROGRESS_FILE):
            if not (local / name).exists() and (text := read_text(fs, f"{trial.path}/{name}")):
                write_text(local / name, text)
        f = local / RESULT_FILE
        if told and (text := with_history(f.read_text() if f.exists() else None, told["history"])):
            write_text(f, text)


def board_columns(s: Settings) -> dict:
    """{searched key: (kind, args)}: the HParams table's parameter columns (trainables/board.py)."""
    return {k: (d.kind, d.args) for k, d in s.parsed_space().params.items()}


def progress(s: Settings) -> SearchProgress:
    return SearchProgress(s.name, s.samples, s.max_epochs, list(s.parsed_space().params),
                          budget=str(s.experiment) if s.time_budget_s else None)


def trainable(res: dict):
    return tune.with_resources(tune_trainable, res)


def trials_at_once(s: Settings, res: dict, shape: list[dict] | None = None) -> int | None:
    """--concurrent, else as many trials as the machine holds (`shape`: its nodes, default this Ray's); None
    on a cluster, whose width follows its nodes."""
    return None if s.address and not s.concurrent else s.concurrent or resources.slots(res, shape)


def launch_note(s: Settings, res: dict, warm=None, shape: list[dict] | None = None) -> str | None:
    """width_note for a new search, at the width it starts with (on a cluster, WideningLimiter's from the
    nodes there now). None for a warm start: its study holds finished trials, so its first wave is not
    guided by the start-up trials alone, and more of its trials are guided than width_note counts."""
    if warm and warm.trials:
        return None
    width = trials_at_once(s, res, shape) or widening_width(resources.slots(res, shape), s.startup)
    return width_note(s.searcher, s.samples, width)


def build_tuner(s: Settings, res: dict, warm=None) -> tune.Tuner:
    """A new search; `res` is one trial's resources (tune.resources.per_trial). On one machine as many trials
    run at once as it holds. On a cluster up to twice what its nodes hold, read again as nodes join (at
    least TPE's start-up count; WideningLimiter): Ray places what it can and the rest wait PENDING, which is
    what an autoscaler scales on, while waiting trials do not hold configs drawn long before they run.
    `warm`: the past trials the study starts with (tune/warm.py)."""
    alg = searcher(s, warm)
    if (concurrent := trials_at_once(s, res)) is None:
        alg = WideningLimiter(alg, res, alg.startup)
    return tune.Tuner(
        trainable(res),
        param_space=param_space(s),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=alg, scheduler=scheduler(s),
                                    num_samples=s.samples, max_concurrent_trials=concurrent,
                                    # a trial's process runs the next one (seconds of start-up saved), but
                                    # Ray caches a stopped trial's process with its thread still waiting in
                                    # report, the learner held until the next trial: on a GPU that memory
                                    # is freed at once by giving each trial its own process
                                    reuse_actors=not res["gpu"], trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=s.name, storage_path=s.storage or s.root, progress_reporter=progress(s), verbose=1,
            # no num_to_keep: with it Ray deletes old checkpoints from the driver's thread and, after each
            # checkpoint, blocks the driver until the whole driver folder is uploaded again (ray#31613; on
            # S3 at 16 at once results waited up to 5 s, benchmarks/driver_loop.py); the trainable keeps
            # the newest whole one itself (trainables/tune_report.drop_stale)
            checkpoint_config=tune.CheckpointConfig(),
            failure_config=tune.FailureConfig(max_failures=s.retries),
            callbacks=[RestartedTrials(), JsonLoggerCallback(), CSVLoggerCallback(),
                       TrialBoard(s.max_epochs, str(s.experiment) if s.time_budget_s else None)],
            stop=BudgetStopper(str(s.experiment)) if s.time_budget_s else None),
    )


def restore_tuner(s: Settings, res: dict) -> tune.Tuner:
    """The interrupted search: finished and errored trials kept as they are, unfinished ones resumed from
    their last checkpoint, the searcher and its Optuna study continued; the scheduler, unpickled as it was
    built, rebuilds ASHA's rungs from the folder (tune/pruning.py)."""
    return tune.Tuner.restore(s.location, trainable(res))
