"""The two pieces the project adds to Ray Tune's ASHA and OptunaSearch, checked on their own."""
import pytest
from ray.tune.schedulers import TrialScheduler

from tune.pruning import ResumableASHA, history_from


class Trial:  # all ASHA reads of a trial is its id
    def __init__(self, trial_id):
        self.trial_id = trial_id


def asha(history=None, stopped=None):
    s = ResumableASHA(time_attr="epoch", max_t=8, grace_period=2, reduction_factor=2, history=history,
                      stopped=stopped)
    s.set_search_properties("accuracy", "max")
    return s


def decide(s, trial_id, epoch, accuracy):
    t = Trial(trial_id)
    s.on_trial_add(None, t)
    return s.on_trial_result(None, t, {"epoch": epoch, "accuracy": accuracy})


def test_rungs_rebuilt_from_earlier_results_stop_a_trial_an_uninterrupted_search_would_stop():
    before = {"a": [(1, 0.5), (2, 0.9)], "b": [(1, 0.4), (2, 0.8)], "c": [(2, 0.85), (4, 0.9)]}
    assert decide(asha(before), "new", 2, 0.6) == TrialScheduler.STOP
    assert decide(asha(before), "new", 2, 0.95) == TrialScheduler.CONTINUE
    # without the rebuilt rungs, the first trial to reach a rung always goes on
    assert decide(asha(), "new", 2, 0.6) == TrialScheduler.CONTINUE


def test_a_resumed_trial_keeps_its_place_and_is_not_judged_twice_at_a_rung_it_passed():
    s = asha({"a": [(2, 0.9)], "b": [(2, 0.5)], "c": [(2, 0.7)]})
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
    assert history_from(tmp_path, "accuracy") == {"t1": [(1, 0.3), (2, 0.4)], "t2": [(1, 0.6)]}


@pytest.mark.parametrize("value, action", [(0.2, TrialScheduler.STOP), (0.99, TrialScheduler.CONTINUE)])
def test_rebuilt_rungs_judge_by_the_cutoff_of_every_earlier_trial(value, action):
    history = {f"t{i}": [(2, i / 10)] for i in range(1, 9)}   # 0.1 .. 0.8, cutoff at the median
    assert decide(asha(history), "new", 2, value) == action


def test_a_trial_stopped_before_the_interruption_is_stopped_again_when_it_replays_that_epoch():
    history = {"a": [(2, 0.9)], "b": [(2, 0.5)], "c": [(2, 0.7)]}
    # b's rung is recorded, so plain replay would let it go on; the study says it was stopped at 2
    assert decide(asha(history), "b", 2, 0.5) == TrialScheduler.CONTINUE
    assert decide(asha(history, stopped={"b": 2}), "b", 2, 0.5) == TrialScheduler.STOP
    assert decide(asha(history, stopped={"b": 2}), "a", 2, 0.9) == TrialScheduler.CONTINUE


def test_stopped_trials_are_read_from_the_study():
    import optuna
    from optuna.trial import TrialState
    from tune.pruning import stopped_from
    study = optuna.create_study(direction="maximize")
    for rid, values, state in (("p", [0.1, 0.2], TrialState.PRUNED), ("c", [0.3, 0.4, 0.5], TrialState.COMPLETE)):
        t = study.ask()
        t.set_user_attr("ray_trial_id", rid)
        for step, v in enumerate(values, start=1):
            t.report(v, step)
        study.tell(t, values[-1] if state == TrialState.COMPLETE else None, state=state)
    assert stopped_from(study) == {"p": 2}
