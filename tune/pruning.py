"""Three things Ray Tune does not do for ASHA + Optuna, written here because no library option covers them.

- At width TPE would be random search: Optuna's TPE models only finished trials (COMPLETE, PRUNED), and
  Tune asks for a config whenever a slot is free, so with 32 slots the first 32 configs are all random
  start-up configs (constant_liar acts only once a model exists; ray-project/ray#52535). TruthfulOptunaSearch
  starts exactly TPE's start-up count of random trials and holds the other slots until that many have
  finished; every later trial is guided, and the study marks each trial `guided` or not.

- Ray tells Optuna that a trial ASHA stopped early is COMPLETE with its early value, so TPE would learn
  from 1-epoch accuracies as if they were final. TruthfulOptunaSearch tells Optuna PRUNED, with the
  trial's per-epoch intermediate values, which TPE ranks below complete trials by how far they got.
- Ray saves no scheduler state (Tuner.restore unpickles the scheduler as it was before the search began),
  so after a resume ASHA's rungs would be empty and a trial that an uninterrupted search would stop could
  run to the end. ResumableASHA reads the experiment folder when its first trial is added: it replays
  every trial's per-epoch results into its rungs, and stops again, at its first result, any trial the
  study says was stopped before the interruption, should it come back from an older snapshot (its
  checkpoints were deleted when it stopped). On a new search the folder is empty.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tune.trials import STEP, STUDY_FILE, Experiment, backup_study, fast_commits


class TruthfulOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_epochs: int, startup: int = 0, wal: bool = False, experiment: str = "",
                 mirror: bool = False, **kwargs):
        """`startup`: the sampler's random start-up trials (TPE's n_startup_trials), 0 for a random sampler;
        `wal`: the study's SQLite file is on a local disk and runs with fast commits (tune/trials.py);
        `experiment`: the trials' folder or URI, where the checkpoints of trials stopped early are deleted;
        `mirror`: copy the study into each of Ray's snapshots, which Ray uploads to the URI."""
        super().__init__(*args, **kwargs)
        self.experiment = experiment
        self.mirror = mirror
        self.max_epochs = max_epochs
        self.startup = startup
        self.wal = wal

    def _finished(self) -> int:
        return len(self._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def suggest(self, trial_id):
        finished = self._finished() if self.startup else 0
        if self.startup and trial_id not in self._ot_trials and finished < self.startup:
            running = len(self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if finished + running >= self.startup:
                return None  # a slot waits: Tune asks again at its next step
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # lets the study and Ray's trial folders be joined later
            ot = self._ot_trials[trial_id]
            ot.set_user_attr("ray_trial_id", trial_id)
            ot.set_user_attr("guided", bool(self.startup) and finished >= self.startup)
        return config

    def save(self, checkpoint_path: str):
        super().save(checkpoint_path)
        if self.mirror:  # Ray writes the snapshot into a folder it then uploads whole
            backup_study(Path(self._storage.url.removeprefix("sqlite:///")), Path(checkpoint_path).parent / STUDY_FILE)

    def restore(self, checkpoint_path: str):
        """After a kill, trials started since Ray's last snapshot are unknown to the restored search and
        will never report again: close them in the study (FAIL) instead of leaving them RUNNING."""
        super().restore(checkpoint_path)
        if self.wal:
            fast_commits(self._storage)  # the unpickled storage has a new engine without it
        known = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in known:
                self._ot_study._storage.set_trial_user_attr(t._trial_id, "lost", "started after Ray's last "
                                                            "snapshot before the search was killed")
                self._ot_study.tell(t.number, state=TrialState.FAIL)

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

    def on_trial_result(self, trial_id, result):
        if trial_id in self._ot_trials and trial_id not in self._completed_trials and self.metric in result:
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self._completed_trials:  # the study closed it already (epochs replayed after a resume)
            return
        stopped_early = (not error and result and trial_id in self._ot_trials
                         and result.get(STEP, self.max_epochs) < self.max_epochs)
        if not stopped_early:
            return super().on_trial_complete(trial_id, result=result, error=error)
        # the result that made ASHA stop the trial never reaches on_trial_result
        if result.get(self.metric) is None or self._report(trial_id, result):
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
        if self.experiment:  # after the study knows: a resumed search stops it again instead of resuming it
            Experiment(self.experiment).delete_checkpoints(trial_id)


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
        if trial.trial_id in self._stopped:  # its checkpoints went when it stopped: it would train again
            self._num_stopped += 1
            return self.STOP
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_add(self, tune_controller, trial):
        if not self._replayed:  # the metric's sign is only known once Tune has set the search properties
            self._replayed = True
            exp = Experiment(self._experiment, home=self._home)
            study = exp.study()
            self._stopped = stopped_from(study) if study else {}
            bracket = self._brackets[0]
            for trial_id, results in exp.metric_history(self._metric).items():
                for step, value in results:
                    bracket.on_result(_Seen(trial_id), step, self._metric_op * value)
        super().on_trial_add(tune_controller, trial)


def stopped_from(study) -> dict:
    """The trials a search had stopped early (PRUNED in its study) and the epoch it stopped each at."""
    return {t.user_attrs["ray_trial_id"]: max(t.intermediate_values)
            for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
            if "ray_trial_id" in t.user_attrs and t.intermediate_values}
