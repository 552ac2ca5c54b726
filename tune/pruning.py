"""Three things Ray Tune does not do for ASHA + Optuna, written here because no library option covers them.

- At width TPE would be random search: Optuna's TPE models only finished trials (COMPLETE, PRUNED), and
  Tune asks for a config whenever a slot is free, so with 32 slots the first 32 configs are all unguided
  start-up configs (constant_liar acts only once a model exists; ray-project/ray#52535). TruthfulOptunaSearch
  starts exactly TPE's start-up count of unguided trials and holds the other slots until that many have
  finished; every later trial is guided, and the study marks each trial `guided` or not.

- Ray tells Optuna that a trial ASHA stopped early is COMPLETE with its early value, so TPE would learn
  from 1-epoch accuracies as if they were final. TruthfulOptunaSearch tells Optuna PRUNED, with the
  trial's per-epoch intermediate values, which TPE ranks below complete trials by how far they got.
- Ray saves no scheduler state (Tuner.restore unpickles the scheduler as it was before the search began),
  so after a resume ASHA's rungs would be empty and a trial that an uninterrupted search would stop could
  run to the end. ResumableASHA reads the experiment folder when its first trial is added: it replays
  every trial's per-epoch results into its rungs (from the study too, which is ahead of Ray's files by
  up to a snapshot), and stops again, at its first result, any trial the study had closed (stopped early,
  its checkpoints deleted, or failed), should it come back from an older snapshot. On a new search the
  folder is empty.
"""
from __future__ import annotations

import shutil
import sys
import time
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch
from sqlalchemy.exc import SQLAlchemyError

from trainables.files import atomic_file
from tune.budget import Budget
from tune.study import backup_study, searcher_storage
from tune.trials import (BUDGET_FILE, DRIVER_JSON, RAY_ENDED, STEP, STUDY_FILE, Experiment, ended_as,
                         ray_snapshot)


WIDTH_EVERY_S = 5.0   # how often a cluster's width is read again (WideningLimiter)


def widening_width(slots: int, startup: int) -> int:
    """A cluster's trials at once: twice what its nodes hold now (the rest wait PENDING, for an autoscaler to
    see), at least TPE's start-up count."""
    return max(2 * slots, startup)


class WideningLimiter(ConcurrencyLimiter):
    """Ray's concurrency limit (its count of live trials, mended on a resume by tune.trials.mend_search_state),
    with the limit read again every few seconds on a cluster: twice the trials its nodes hold now, at least
    TPE's start-up count, so nodes an autoscaler adds widen the search. Ray's own is fixed at launch."""

    def __init__(self, searcher: Searcher, resources: dict, startup: int):
        self.resources, self.startup, self.read_at = resources, startup, 0.0
        super().__init__(searcher, max_concurrent=self.width())

    def width(self) -> int:
        from tune.resources import slots
        self.read_at = time.time()
        return widening_width(slots(self.resources), self.startup)

    def suggest(self, trial_id):
        if time.time() - self.read_at > WIDTH_EVERY_S:
            self.max_concurrent = self.width()
        return super().suggest(trial_id)


class TruthfulOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_epochs: int, startup: int = 0, experiment: str = "",
                 mirror: bool = False, budget: str | None = None, warm=None, **kwargs):
        """`startup`: the sampler's unguided start-up trials (TPE's n_startup_trials), 0 for a random sampler;
        `experiment`: the trials' folder or URI, where the checkpoints of trials stopped early are deleted;
        `mirror`: copy the study into each of Ray's snapshots, which Ray uploads to the URI;
        `budget`: the driver's folder of a search with a time budget: once it is spent, no trial starts;
        `warm`: the past trials a new study starts with and the configs it tries first (tune.warm.Warm)."""
        self._warm = warm
        super().__init__(*args, **kwargs)
        self.budget = budget
        self.experiment = experiment
        self.mirror = mirror
        self.max_epochs = max_epochs
        self.startup = startup
        self._untold = {}  # {trial_id: (result, error)} of trials that ended and the study has yet to record
        # the trials Ray runs: started here, or reporting since a resume. Not the study's RUNNING ones: the
        # searcher's snapshot can be newer than Ray's (they are uploaded apart), and a trial only it knows
        # would never end and hold a start-up slot for ever
        self._live = set()

    def _setup_study(self, mode):
        super()._setup_study(mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental in Optuna: optuna-dashboard names the objective by it
            self._ot_study.set_metric_names([self.metric])
        if self._warm and not self._ot_study.get_trials(deepcopy=False):   # a new study, not a resumed one
            self._ot_study.add_trials(self._warm.trials)
            for params, attrs in self._warm.first:
                self._ot_study.enqueue_trial(params, user_attrs=attrs)
        self._warm = None   # in the study now; the searcher's snapshots need not carry them

    def _finished(self) -> int:
        return len(self._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def _budget_spent(self) -> bool:
        return bool(self.budget) and Budget(self.budget).over()

    def suggest(self, trial_id):
        if self._budget_spent():
            return Searcher.FINISHED
        finished = self._finished() if self.startup else 0
        if self.startup and trial_id not in self._ot_trials and finished < self.startup:
            if finished + len(self._live) >= self.startup:
                return None  # a slot waits: Tune asks again at its next step
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # lets the study and Ray's trial folders be joined later
            ot = self._ot_trials[trial_id]
            ot.set_user_attr("ray_trial_id", trial_id)
            ot.set_user_attr("guided", bool(self.startup) and finished >= self.startup
                             and "first_from" not in ot.user_attrs)
            self._live.add(trial_id)
        return config

    def save(self, checkpoint_path: str):
        self._tell_untold()
        super().save(checkpoint_path)
        if self.mirror:  # Ray writes the snapshot into a folder it then uploads whole
            db, snapshot = Path(self._storage.url.removeprefix("sqlite:///")), Path(checkpoint_path).parent
            # whole files only: Ray may still be uploading the last snapshot's while this one is written
            atomic_file(snapshot / STUDY_FILE, lambda tmp: backup_study(db, tmp))
            if (db.parent / BUDGET_FILE).is_file():  # the time spent goes with the study: a resume elsewhere counts it
                atomic_file(snapshot / BUDGET_FILE, lambda tmp: shutil.copy2(db.parent / BUDGET_FILE, tmp))

    def restore(self, checkpoint_path: str):
        """Ray uploads its own state and the searcher's apart, so after a kill either can be the newer: a
        trial the searcher knows may never run again (run.py closes it as lost when the search ends), and
        a trial Ray runs may be unknown to the study (run.py adds it first: catch_up)."""
        super().restore(checkpoint_path)
        staging = Path(checkpoint_path).parent
        if staging.resolve() != Path(self.experiment).resolve():   # never the driver's folder itself
            # Ray's staging folder, which it copies over the experiment folder, in place, at every snapshot:
            # copies of the driver's own files there (brought down on the resume) would go back to their
            # state at the resume, and be read half-written. The study and budget a mirror needs, save writes
            for name in DRIVER_JSON:
                (staging / name).unlink(missing_ok=True)
        if isinstance(self._storage, optuna.storages.RDBStorage):   # a search snapshotted before tune/study.py
            db = Path(self._storage.url.removeprefix("sqlite:///"))
            self._storage = self._ot_study._storage = searcher_storage(db)
        self._live = set()
        # the study is the record: the pickled map from Ray's ids to its trials can be from another moment
        # (on a store the two are uploaded apart), so each trial is claimed back by its Ray id (_claim)
        self._ot_trials, self._completed_trials = {}, set()
        self._tell_untold()

    def _report(self, trial_id, result) -> bool:
        """Record an epoch in the study; False if the study had already closed the trial (a trial the
        driver was killed before saving, replaying its epochs after a resume)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a replayed epoch repeats its step
                self._ot_trials[trial_id].report(result[self.metric], result[STEP])
            return True
        except UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)
            return False

    def _claim(self, trial_id) -> None:
        """A trial Ray runs that the restored searcher does not know: take it back from the study, where
        suggest marked it with its Ray id (or take note that the study has closed it)."""
        if trial_id in self._ot_trials or trial_id in self._completed_trials:
            return
        if t := self._told(trial_id):
            if t.state == TrialState.RUNNING:
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, t._trial_id)
            else:
                self._completed_trials.add(trial_id)

    def _told(self, trial_id):
        """The study's trial of a Ray trial (suggest marked it with its Ray id), or None."""
        return next((t for t in self._ot_study.get_trials(deepcopy=False)
                     if t.user_attrs.get("ray_trial_id") == trial_id), None)

    def on_trial_result(self, trial_id, result):
        self._tell_untold()
        self._claim(trial_id)
        if trial_id in self._ot_trials and trial_id not in self._completed_trials and self.metric in result:
            self._live.add(trial_id)
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        self._claim(trial_id)
        if trial_id in self._completed_trials:  # the study had closed it: it came back after a kill, and its
            # replay may have copied a checkpoint again
            if t := self._told(trial_id):
                self._tidy(trial_id, t.state)
            return
        self._untold[trial_id] = (result, error)
        self._live.discard(trial_id)
        self._tell_untold()

    def _tell_untold(self) -> None:
        """Close in the study each trial that ended. Where the study's storage fails (a full or unreachable
        disk), the trial stays listed and is told at the next result, end, Ray snapshot or resume, instead
        of the error ending the search or (as OptunaSearch does) leaving it RUNNING in the study for ever."""
        for trial_id, (result, error) in list(self._untold.items()):
            try:
                self._claim(trial_id)
                state = self._close(trial_id, result, error)
            except (SQLAlchemyError, StorageInternalError) as e:   # Optuna wraps SQLAlchemy's errors
                print(f"warning: the study could not record the end of trial {trial_id} yet "
                      f"({type(e).__name__}); retrying", file=sys.stderr, flush=True)
                continue
            del self._untold[trial_id]
            self._tidy(trial_id, state)   # once the study knows: a resumed search stops it again, not resumes it

    def _tidy(self, trial_id: str, state: TrialState | None) -> None:
        """An ended trial's checkpoints: none for one stopped early, the newest for one completed (its last
        report's; the trainable, stopped in that report, could not drop the one before)."""
        if self.experiment and state in (TrialState.PRUNED, TrialState.COMPLETE):
            Experiment(self.experiment).delete_checkpoints(trial_id, keep_newest=state == TrialState.COMPLETE)

    def _close(self, trial_id, result, error) -> TrialState | None:
        """Tell the study how a trial ended; returns the state told (None: the study had closed it)."""
        if trial_id not in self._ot_trials:
            return None
        ot, value = self._ot_trials[trial_id], (result or {}).get(self.metric)
        if self._ot_study._storage.get_trial(ot._trial_id).state.is_finished():
            self._completed_trials.add(trial_id)  # the study, ahead of the restored searcher, had closed it
            return None
        epochs = (result or {}).get(STEP)
        if not error and result and result.get(STEP, self.max_epochs) < self.max_epochs:
            # stopped early: the result that made ASHA stop it never reached on_trial_result
            state = TrialState.PRUNED if value is None or self._report(trial_id, result) else None
            if state:
                if self._budget_spent():  # Ray's stopper, not ASHA, stops every trial that reports after it
                    ot.set_user_attr("stopped_by", "time budget")
                    ot.set_user_attr("status", f"stopped by the time budget after epoch {epochs}")
                else:
                    ot.set_user_attr("status", f"pruned by ASHA at its rung at epoch {epochs}")
                ot.set_user_attr("epochs", epochs)
                self._ot_study.tell(ot, state=state)
        else:
            state = TrialState.FAIL if error or value is None else TrialState.COMPLETE
            if state == TrialState.COMPLETE:
                self._report(trial_id, result)  # the last epoch too: it never reached on_trial_result
            ot.set_user_attr("status", "completed" if state == TrialState.COMPLETE else "errored")
            if epochs is not None:
                ot.set_user_attr("epochs", epochs)
            self._ot_study.tell(ot, value if state == TrialState.COMPLETE else None, state=state)
        self._completed_trials.add(trial_id)
        return state


def catch_up(study, location: str, metric: str, distributions: dict, max_epochs: int) -> list[str]:
    """Bring the study and the trials' logs up to Ray's snapshot of the trials, before a resume: on a store,
    a study remade from its mirror, and a trial's result.json, can be a snapshot older than Ray's state
    (they are uploaded apart). A trial Ray ended that the study has as RUNNING would stay so for ever (Ray
    does not run it again), and one the study lacks would never be recorded: each is told from its
    folder's history, and one that Ray will run again enters RUNNING, marked with its Ray id, for the
    searcher to claim. An ended trial's log gets the epochs its checkpoint has. Returns the trials mended."""
    from optuna.trial import create_trial
    told = {t.user_attrs.get("ray_trial_id"): t for t in study.get_trials(deepcopy=False)}
    exp, mended = Experiment(location), set()
    for trial_id, (ray_status, config) in ray_snapshot(location).items():
        t, ended = told.get(trial_id), ray_status in RAY_ENDED
        if ended and exp.mend_history(trial_id):   # Ray will not run it again to rewrite its log
            mended.add(trial_id)
        if t is not None and (t.state != TrialState.RUNNING or not ended):
            continue
        curve = {h[STEP]: h[metric] for h in exp.history(trial_id) if h.get(metric) is not None}
        state, value = TrialState.RUNNING, None
        if ended:
            status = ended_as(max(curve, default=0), max_epochs, failed=ray_status == "ERROR" or not curve)
            state = {"completed": TrialState.COMPLETE, "errored": TrialState.FAIL}.get(status, TrialState.PRUNED)
            value = curve[max(curve)] if state == TrialState.COMPLETE else None
        if t is None:
            attrs = {"ray_trial_id": trial_id, **({"status": status, "epochs": max(curve)} if ended and curve else {})}
            study.add_trial(create_trial(state=state, value=value, params={k: config[k] for k in distributions},
                                         distributions=distributions, intermediate_values=curve, user_attrs=attrs))
        else:
            for step in curve.keys() - t.intermediate_values.keys():
                study._storage.set_trial_intermediate_value(t._trial_id, step, curve[step])
            study._storage.set_trial_user_attr(t._trial_id, "status", status)
            study.tell(t.number, value, state=state)
        mended.add(trial_id)
    return sorted(mended)


def close_lost(study, known) -> list[str]:
    """Close (FAIL, saying why) the study's RUNNING trials for which known(trial) is false: trials started
    after the last snapshot of the search's state before it was killed, which will never report again.
    Returns their Ray trial ids."""
    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not known(t):
            study._storage.set_trial_user_attr(t._trial_id, "lost", "started after the last snapshot of the "
                                               "search's state before it was killed")
            study.tell(t.number, state=TrialState.FAIL)
            lost.append(t.user_attrs.get("ray_trial_id", f"#{t.number}"))
    return lost


class _Seen:
    """What ASHA's bracket needs of a trial: its id."""

    def __init__(self, trial_id):
        self.trial_id = trial_id


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs start from the results already in `experiment`, and which keeps the study's earlier
    stops (plain ASHA would let a trial that comes back go on: its rungs hold its own earlier values)."""

    def __init__(self, *args, experiment: str, home: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._experiment = experiment
        self._home = home
        self._stopped = {}
        self._replayed = False

    def on_trial_result(self, tune_controller, trial, result):
        if trial.trial_id in self._stopped:  # the study closed it: stopped (no checkpoints) or failed
            self._num_stopped += 1
            return self.STOP
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_add(self, tune_controller, trial):
        if not self._replayed:  # the metric's sign is only known once Tune has set the search properties
            self._replayed = True
            exp = Experiment(self._experiment, home=self._home)
            study = exp.study()
            self._stopped = closed_in(study) if study else set()
            bracket = self._brackets[0]
            for trial_id, results in rung_values(exp, study, self._metric).items():
                for step, value in sorted(results.items()):
                    bracket.on_result(_Seen(trial_id), step, self._metric_op * value)
        super().on_trial_add(tune_controller, trial)


def closed_in(study) -> set:
    """The trials a search's study had closed before it was interrupted: stopped early (PRUNED) or failed.
    Ray may bring either back from a snapshot taken before the study closed it."""
    return {t.user_attrs["ray_trial_id"] for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,
                                                                                          TrialState.FAIL))
            if "ray_trial_id" in t.user_attrs}


def rung_values(exp: Experiment, study, metric: str) -> dict:
    """{trial_id: {epoch: value}} as ASHA saw them: Ray's result files, which lag up to a snapshot, and
    the study's intermediate values, written as ASHA judged each result (the study wins where both are)."""
    values = {t: dict(rows) for t, rows in exp.metric_history(metric).items()}
    for t in (study.get_trials(deepcopy=False) if study else []):
        if "ray_trial_id" in t.user_attrs and t.intermediate_values:
            values.setdefault(t.user_attrs["ray_trial_id"], {}).update(t.intermediate_values)
    return values
