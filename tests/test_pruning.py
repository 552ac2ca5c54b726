"""The two pieces the project adds to Ray Tune's ASHA and OptunaSearch, checked on their own."""
import itertools
import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from tune.pruning import ResumableASHA
from tune.study import searcher_storage
from tune.trials import Experiment

_folders = itertools.count()


class Trial:  # all ASHA reads of a trial is its id
    def __init__(self, trial_id):
        self.trial_id = trial_id


def experiment(root: Path, history=None, stopped=None) -> Path:
    """An experiment folder as a search leaves it: each trial's result.json, and a study whose PRUNED trials
    are `stopped` ({trial_id: epoch})."""
    exp = root / f"exp{next(_folders)}"
    for trial_id, rows in (history or {}).items():
        (exp / trial_id).mkdir(parents=True)
        (exp / trial_id / "params.json").write_text("{}")
        (exp / trial_id / "result.json").write_text(
            "".join(json.dumps({"trial_id": trial_id, "epoch": e, "accuracy": a}) + "\n" for e, a in rows))
    exp.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=exp.name, storage=f"sqlite:///{exp / 'optuna.db'}", direction="maximize")
    for trial_id, epoch in (stopped or {}).items():
        t = study.ask()
        t.set_user_attr("ray_trial_id", trial_id)
        t.report(0.0, epoch)
        study.tell(t, state=TrialState.PRUNED)
    return exp


def asha(root, history=None, stopped=None):
    s = ResumableASHA(time_attr="epoch", max_t=8, grace_period=2, reduction_factor=2,
                      experiment=str(experiment(root, history, stopped)))
    s.set_search_properties("accuracy", "max")
    return s


def decide(s, trial_id, epoch, accuracy):
    t = Trial(trial_id)
    s.on_trial_add(None, t)
    return s.on_trial_result(None, t, {"epoch": epoch, "accuracy": accuracy})


def test_rungs_rebuilt_from_earlier_results_stop_a_trial_an_uninterrupted_search_would_stop(tmp_path):
    before = {"a": [(1, 0.5), (2, 0.9)], "b": [(1, 0.4), (2, 0.8)], "c": [(2, 0.85), (4, 0.9)]}
    assert decide(asha(tmp_path, before), "new", 2, 0.6) == TrialScheduler.STOP
    assert decide(asha(tmp_path, before), "new", 2, 0.95) == TrialScheduler.CONTINUE
    # without the rebuilt rungs, the first trial to reach a rung always goes on
    assert decide(asha(tmp_path), "new", 2, 0.6) == TrialScheduler.CONTINUE


def test_a_resumed_trial_keeps_its_place_and_is_not_judged_twice_at_a_rung_it_passed(tmp_path):
    s = asha(tmp_path, {"a": [(2, 0.9)], "b": [(2, 0.5)], "c": [(2, 0.7)]})
    assert decide(s, "b", 3, 0.55) == TrialScheduler.CONTINUE   # b passed rung 2 before the interruption
    assert s.on_trial_result(None, Trial("b"), {"epoch": 4, "accuracy": 0.1}) == TrialScheduler.CONTINUE
    assert decide(s, "d", 4, 0.05) == TrialScheduler.STOP       # the rung at 4 now holds b's value


def test_history_is_read_from_the_trials_result_files(tmp_path):
    (tmp_path / "t1").mkdir()
    (tmp_path / "t1" / "result.json").write_text(
        '{"trial_id": "t1", "epoch": 1, "accuracy": 0.3}\n{"trial_id": "t1", "epoch": 2, "accuracy": 0.4}\n'
        '{"trial_id": "t1", "epoch": 3, "acc')   # a line cut short by a kill
    (tmp_path / "t2").mkdir()
    (tmp_path / "t2" / "result.json").write_text('{"trial_id": "t2", "epoch": 1, "accuracy": 0.6}\n')
    (tmp_path / "t1" / "params.json").write_text("{}")
    (tmp_path / "t2" / "params.json").write_text("{}")
    (tmp_path / "t3").mkdir()
    (tmp_path / "t3" / "params.json").write_text('{"lr": 0.0')   # killed while Ray wrote it: no trial yet
    (tmp_path / "t3" / "result.json").write_text('{"trial_id": "t3", "epoch": 1, "accuracy": 0.6}\n')
    assert Experiment(tmp_path).metric_history("accuracy") == {"t1": [(1, 0.3), (2, 0.4)], "t2": [(1, 0.6)]}


@pytest.mark.parametrize("value, action", [(0.2, TrialScheduler.STOP), (0.99, TrialScheduler.CONTINUE)])
def test_rebuilt_rungs_judge_by_the_cutoff_of_every_earlier_trial(tmp_path, value, action):
    history = {f"t{i}": [(2, i / 10)] for i in range(1, 9)}   # 0.1 .. 0.8, cutoff at the median
    assert decide(asha(tmp_path, history), "new", 2, value) == action


def test_a_trial_stopped_before_the_interruption_is_stopped_again_at_its_first_result(tmp_path):
    history = {"a": [(2, 0.9)], "b": [(2, 0.5)], "c": [(2, 0.7)]}
    # b's rung is recorded, so plain replay would let it go on; the study says it was stopped at 2, and
    # its checkpoints are gone, so it comes back training from its first epoch
    assert decide(asha(tmp_path, history), "b", 2, 0.5) == TrialScheduler.CONTINUE
    assert decide(asha(tmp_path, history, stopped={"b": 2}), "b", 1, 0.3) == TrialScheduler.STOP
    assert decide(asha(tmp_path, history, stopped={"b": 2}), "a", 2, 0.9) == TrialScheduler.CONTINUE


def test_stopped_and_failed_trials_are_read_from_the_study():
    import optuna
    from optuna.trial import TrialState
    from tune.pruning import closed_in
    study = optuna.create_study(direction="maximize")
    for rid, values, state in (("p", [0.1, 0.2], TrialState.PRUNED), ("c", [0.3, 0.4, 0.5], TrialState.COMPLETE),
                               ("f", [0.2], TrialState.FAIL), ("r", [0.3], TrialState.RUNNING)):
        t = study.ask()
        t.set_user_attr("ray_trial_id", rid)
        for step, v in enumerate(values, start=1):
            t.report(v, step)
        if state != TrialState.RUNNING:
            study.tell(t, values[-1] if state == TrialState.COMPLETE else None, state=state)
    assert closed_in(study) == {"p", "f"}


def test_rungs_hold_what_the_study_saw_after_rays_last_snapshot(tmp_path):
    """A kill can come after ASHA judged a result and the study recorded it, before Ray's result file was
    synced: the rung is rebuilt from the study's intermediate value, so a trial that passed is not judged
    again and later ones are judged against it."""
    exp = experiment(tmp_path, {"a": [(2, 0.5)]})
    study = optuna.load_study(study_name=exp.name, storage=f"sqlite:///{exp / 'optuna.db'}")
    for rid, value in (("b", 0.9), ("c", 0.8)):   # in the study only: their result.json lines were not synced
        t = study.ask()
        t.set_user_attr("ray_trial_id", rid)
        t.report(value, 2)
    s = ResumableASHA(time_attr="epoch", max_t=8, grace_period=2, reduction_factor=2, experiment=str(exp))
    s.set_search_properties("accuracy", "max")
    assert decide(s, "b", 3, 0.1) == TrialScheduler.CONTINUE   # b passed rung 2 before the kill
    assert decide(s, "new", 2, 0.6) == TrialScheduler.STOP     # below b's and c's 0.9 and 0.8


def test_a_restored_search_gets_back_the_scheduler_that_rebuilds_its_rungs(tmp_path):
    """Tuner.restore unpickles the scheduler the Tuner was built with (tuner.pkl): that is how a resumed
    search gets ResumableASHA without reaching into Ray. Should Ray start replacing it, this fails."""
    from ray import tune

    import search_spaces
    from tune.search import Settings, build_tuner, restore_tuner
    space = search_spaces.load("smoke")
    s = Settings(space=space.to_dict(), space_name=space.name, name="exp", root=str(tmp_path), samples=2,
                 max_epochs=2, grace_period=1, reduction_factor=2, concurrent=1)
    s.experiment.mkdir()
    assert isinstance(build_tuner(s, {"cpu": 1, "gpu": 0}), tune.Tuner)
    restored = restore_tuner(s, {"cpu": 1, "gpu": 0})
    scheduler = restored._local_tuner._tune_config.scheduler  # private, on purpose: what Ray will run
    assert isinstance(scheduler, ResumableASHA) and scheduler._experiment == str(s.experiment)
    assert not scheduler._replayed   # as built: it reads the folder when the resumed search adds a trial


def test_a_wide_search_starts_only_the_start_up_trials_at_random_and_guides_the_rest():
    """16 slots, TPE with 3 start-up trials: 3 configs at first, the other slots wait until those 3 have
    finished (one pruned counts), then every config comes from the model."""
    from ray import tune

    from tune.pruning import TruthfulOptunaSearch
    s = TruthfulOptunaSearch(space={"lr": tune.loguniform(1e-3, 1e-1)}, metric="accuracy", mode="max",
                             sampler=optuna.samplers.TPESampler(n_startup_trials=3, seed=0), max_epochs=4,
                             startup=3)
    started = [t for t in (f"t{i}" for i in range(16)) if s.suggest(t) is not None]
    assert started == ["t0", "t1", "t2"]
    s.on_trial_complete("t0", {"accuracy": 0.5, "epoch": 4})
    s.on_trial_complete("t1", {"accuracy": 0.3, "epoch": 2})   # stopped by ASHA at epoch 2: PRUNED
    assert s.suggest("t3") is None                             # 2 of 3 finished: still held
    s.on_trial_complete("t2", {"accuracy": 0.7, "epoch": 4})
    assert all(s.suggest(f"g{i}") is not None for i in range(13))   # the model exists: all 13 at once
    guided = {t.user_attrs["ray_trial_id"]: t.user_attrs["guided"] for t in s._ot_study.trials}
    assert [k for k, v in guided.items() if not v] == ["t0", "t1", "t2"] and sum(guided.values()) == 13


@pytest.mark.parametrize("error", ["StorageInternalError", "OperationalError"])
def test_a_study_that_fails_to_record_a_trials_end_records_it_at_the_next_chance(tmp_path, error):
    """A storage error when a trial ends must neither end the search nor leave the trial RUNNING in the
    study: it is told again at the next result, and a snapshot taken meanwhile keeps it to tell. Optuna's
    RDBStorage raises StorageInternalError for a failed commit (SQLAlchemy's error is its cause)."""
    import pickle

    from optuna.exceptions import StorageInternalError
    from ray import tune
    from sqlalchemy.exc import OperationalError

    from tune.pruning import TruthfulOptunaSearch
    s = TruthfulOptunaSearch(space={"lr": tune.loguniform(1e-3, 1e-1)}, metric="accuracy", mode="max",
                             sampler=optuna.samplers.RandomSampler(seed=0), max_epochs=4,
                             storage=searcher_storage(tmp_path / 'study.db'))
    for t in ("a", "b"):
        s.suggest(t)
    disk = OperationalError("tell", {}, Exception("disk I/O error"))
    tell, failures = s._ot_study.tell, iter([StorageInternalError("commit failed") if error == "StorageInternalError"
                                             else disk])

    def flaky(*args, **kwargs):
        e = next(failures, None)
        if e:
            raise e
        return tell(*args, **kwargs)
    s._ot_study.tell = flaky
    s.on_trial_result("a", {"accuracy": 0.3, "epoch": 1})
    s.on_trial_complete("a", {"accuracy": 0.4, "epoch": 2})       # ASHA stopped it; the tell fails
    assert [t.state.name for t in s._ot_study.trials] == ["RUNNING", "RUNNING"]
    state = pickle.loads(pickle.dumps(s._untold))                  # what Ray's snapshot keeps of it
    assert list(state) == ["a"]
    s.on_trial_result("b", {"accuracy": 0.5, "epoch": 1})         # the next chance
    assert [t.state.name for t in s._ot_study.trials] == ["PRUNED", "RUNNING"] and not s._untold
    assert s._ot_study.trials[0].intermediate_values == {1: 0.3, 2: 0.4}


def test_a_trial_only_the_searchers_snapshot_knows_holds_no_start_up_slot_and_is_closed(tmp_path):
    """Ray uploads the searcher's state and its own apart, so after a kill the searcher may know a trial
    that Ray will never run again: the start-up hold must not wait for it, and it is closed as lost."""
    from ray import tune

    from tune.pruning import TruthfulOptunaSearch, close_lost
    s = TruthfulOptunaSearch(space={"lr": tune.loguniform(1e-3, 1e-1)}, metric="accuracy", mode="max",
                             sampler=optuna.samplers.TPESampler(n_startup_trials=3, seed=0), max_epochs=2,
                             startup=3, storage=searcher_storage(tmp_path / 'study.db'))
    assert all(s.suggest(t) for t in ("a", "b", "c")) and s.suggest("d") is None
    for t in ("a", "b"):
        s.on_trial_complete(t, {"accuracy": 0.5, "epoch": 2})
    snapshot = tmp_path / "searcher.pkl"
    s.save(str(snapshot))                                          # "c" is running when the driver dies
    restored = TruthfulOptunaSearch(space={"lr": tune.loguniform(1e-3, 1e-1)}, metric="accuracy", mode="max",
                                    sampler=optuna.samplers.TPESampler(n_startup_trials=3, seed=0), max_epochs=2,
                                    startup=3, storage=searcher_storage(tmp_path / 'study.db'))
    restored.restore(str(snapshot))
    # the study has 2 finished and "c" RUNNING: counting its RUNNING trials, the hold would wait for ever
    assert [t.state.name for t in restored._ot_study.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    assert restored.suggest("e") is not None                        # Ray never brought "c" back
    # when the search ends, run.py closes what Ray did not run
    lost = close_lost(restored._ot_study, lambda t: t.user_attrs["ray_trial_id"] != "c")
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in restored._ot_study.trials}
    assert lost == ["c"] and states["c"] == "FAIL" and states["e"] == "RUNNING"


def test_a_trial_ray_runs_that_the_searchers_snapshot_missed_is_claimed_back_from_the_study(tmp_path):
    from ray import tune

    from tune.pruning import TruthfulOptunaSearch

    def searcher():
        return TruthfulOptunaSearch(space={"lr": tune.loguniform(1e-3, 1e-1)}, metric="accuracy", mode="max",
                                    sampler=optuna.samplers.RandomSampler(seed=0), max_epochs=2,
                                    storage=searcher_storage(tmp_path / 'study.db'))
    s = searcher()
    s.suggest("a")
    s.save(str(tmp_path / "searcher.pkl"))
    s.suggest("b")                                   # after the searcher's snapshot, before Ray's
    restored = searcher()
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("b", {"accuracy": 0.3, "epoch": 1})
    restored.on_trial_complete("b", {"accuracy": 0.6, "epoch": 2})
    b = [t for t in restored._ot_study.trials if t.user_attrs["ray_trial_id"] == "b"][0]
    assert b.state.name == "COMPLETE" and b.value == 0.6 and b.intermediate_values == {1: 0.3, 2: 0.6}
    # the other way round: the study closed "a" after the searcher's snapshot, and Ray brings it back
    s.on_trial_complete("a", {"accuracy": 0.5, "epoch": 2})
    again = searcher()
    again.restore(str(tmp_path / "searcher.pkl"))
    again.on_trial_complete("a", {"accuracy": 0.7, "epoch": 2})    # told once only, and no error
    a = [t for t in again._ot_study.trials if t.user_attrs["ray_trial_id"] == "a"][0]
    assert a.state.name == "COMPLETE" and a.value == 0.5


def test_a_search_snapshotted_with_optunas_own_storage_resumes_with_the_searchers(tmp_path):
    """A search started before the searcher kept its study in memory (its snapshot holds a plain
    RDBStorage) resumes with the searcher's storage: the trials in memory, SQLite's fast commits."""
    from ray import tune

    from tune.pruning import TruthfulOptunaSearch
    from tune.study import SoleWriterStorage

    def searcher(storage):
        return TruthfulOptunaSearch(space={"lr": tune.loguniform(1e-3, 1e-1)}, metric="accuracy", mode="max",
                                    sampler=optuna.samplers.RandomSampler(seed=0), max_epochs=2, storage=storage)
    old = searcher(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"))
    old.suggest("a")
    old.save(str(tmp_path / "searcher.pkl"))
    restored = searcher(None)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert isinstance(restored._ot_study._storage, SoleWriterStorage)
    assert restored._storage is restored._ot_study._storage
    restored.on_trial_complete("a", {"accuracy": 0.6, "epoch": 2})
    assert restored.suggest("b") is not None
    study = optuna.load_study(study_name=restored._ot_study.study_name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [(t.user_attrs["ray_trial_id"], t.state.name) for t in study.trials] == [("a", "COMPLETE"), ("b", "RUNNING")]
    with restored._storage._backend.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
