"""The searcher's study storage (tune/study.py): its trials in memory are the file's, write for write; and its
sampler (tune/search.py's FixedSpaceTPE) spreads its start-up over every knob's range, suggests what
Optuna's own TPE does with the same settings after it, and keeps a wide search's first guided wave from
copying one trial."""
import pickle

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tune.study import SoleWriterStorage, searcher_storage, study_storage

SPACE = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "opt": CategoricalDistribution(["adam", "ranger"])}


def as_read(trials):
    return [(t.number, t.state, t.values, t.params, t.distributions, t.intermediate_values, t.user_attrs,
             t.system_attrs, t.datetime_start, t.datetime_complete) for t in trials]


def on_file(db):
    return optuna.load_study(study_name="s", storage=study_storage(db)).get_trials(deepcopy=False)


def drive(study):
    """What a search does to its study: past trials added, configs enqueued, asked with TPE's liar
    reading the running ones, epochs reported, trials pruned, completed and failed, attributes set."""
    study.add_trials([create_trial(params={"lr": 0.01, "opt": "adam"}, distributions=SPACE, value=0.5,
                                   intermediate_values={1: 0.4, 2: 0.5})])
    study.enqueue_trial({"lr": 0.02, "opt": "ranger"}, user_attrs={"first_from": "old"})
    running = [study.ask(SPACE) for _ in range(6)]   # the first runs the enqueued config
    for i, t in enumerate(running):
        t.set_user_attr("ray_trial_id", f"t{i}")
        t.report(0.1 * i, 1)
    study.tell(running[0], state=TrialState.PRUNED)
    study.tell(running[1], 0.9)
    study.tell(running[2], state=TrialState.FAIL)
    running[3].report(0.35, 2)
    running[3].set_user_attr("pair", (1, 2))                        # a tuple: the file gives back a list
    study._storage.set_trial_system_attr(running[3]._trial_id, "note", [1, 2])
    return running


def test_the_searchers_study_in_memory_is_what_its_file_holds(tmp_path):
    db = tmp_path / "optuna.db"
    storage = searcher_storage(db)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(n_startup_trials=2, constant_liar=True, seed=0))
    assert study._storage is storage                       # not wrapped again in Optuna's cache
    drive(study)
    memory = study.get_trials(deepcopy=False)
    assert [t.state for t in memory] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE,
                                         TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING, TrialState.RUNNING]
    assert memory[1].params == {"lr": 0.02, "opt": "ranger"} and memory[1].user_attrs["first_from"] == "old"
    assert memory[4].intermediate_values == {1: 0.30000000000000004, 2: 0.35}
    assert memory[4].system_attrs["note"] == [1, 2] and memory[4].user_attrs["pair"] == [1, 2]
    assert as_read(memory) == as_read(on_file(db))
    assert as_read([storage.get_trial(t._trial_id) for t in memory]) == as_read(memory)


def test_an_unpickled_searchers_study_reads_the_file_again(tmp_path):
    """Ray snapshots the searcher with its storage; a resume mends the file before the searcher runs
    (tune.pruning.catch_up), so the restored storage must not trust the snapshot's copy of the trials."""
    db = tmp_path / "optuna.db"
    study = optuna.create_study(study_name="s", storage=searcher_storage(db), direction="maximize")
    running = drive(study)
    snapshot = pickle.dumps(study)
    mender = optuna.load_study(study_name="s", storage=study_storage(db))   # catch_up, in another storage
    mender.tell(running[4].number, 0.8)
    restored = pickle.loads(snapshot)
    assert isinstance(restored._storage, SoleWriterStorage)
    assert restored.trials[5].state == TrialState.COMPLETE and restored.trials[5].value == 0.8
    restored.tell(running[5], 0.7)                                 # and it writes with fast commits again
    assert as_read(restored.get_trials(deepcopy=False)) == as_read(on_file(db))
    with restored._storage._backend.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_a_write_that_fails_after_the_file_took_it_leaves_memory_to_be_read_again(tmp_path):
    """The file is the record: if the trial cannot be read back after its state was written, the copy in
    memory must not keep the old state (the searcher would tell the trial again, and TPE's constant liar
    count it as running)."""
    db = tmp_path / "optuna.db"
    storage = searcher_storage(db)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask(SPACE)
    study.trials  # read: the study is in memory
    read = storage._backend.get_trial
    storage._backend.get_trial = lambda trial_id: (_ for _ in ()).throw(OSError("disk gone"))
    with pytest.raises(OSError):
        study.tell(trial, 0.6)
    storage._backend.get_trial = read
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.6
    assert as_read(study.get_trials(deepcopy=False)) == as_read(on_file(db))


@pytest.mark.filterwarnings("ignore:.*gamma:FutureWarning")   # Optuna's TPE given the same good share
def test_the_searchers_tpe_suggests_what_optunas_own_tpe_suggests():
    """After its start-up, FixedSpaceTPE (tune/search.py) takes the space as given and converts a finished
    trial's values once: both only save time, so with the same seed and trials it must suggest exactly what
    Optuna's TPE does, past trials, pruned ones and running ones (the constant liar) included."""
    import random

    from tune.search import FixedSpaceTPE, good_share
    space = {**SPACE, "eps": FloatDistribution(0.0, 0.3), "bs": optuna.distributions.IntDistribution(32, 128, step=32)}
    kw = dict(seed=3, multivariate=True, constant_liar=True, n_startup_trials=4, gamma=good_share)
    # in the order Optuna's own TPE puts the space it works out (by name): the order its draws follow
    studies = [optuna.create_study(direction="maximize", sampler=FixedSpaceTPE(dict(sorted(space.items())), **kw)),
               optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(**kw))]
    rng = random.Random(0)
    past = [create_trial(params={"lr": 10 ** rng.uniform(-4, -1), "opt": rng.choice(["adam", "ranger"]),
                                 "eps": rng.uniform(0, 0.3), "bs": rng.choice([32, 64, 96, 128])},
                         distributions=space, value=rng.random(), intermediate_values={1: 0.1}) for _ in range(6)]
    for study in studies:
        study.add_trials(past)
    asked = [[], []]
    for i in range(24):
        for study, mine in zip(studies, asked):
            t = study.ask(space)
            mine.append(t.params)
            if i % 3 == 0:
                continue                                   # left running: the liar's
            t.report(mine[-1]["eps"], 1)
            study.tell(t, mine[-1]["eps"] + (0.1 if mine[-1]["opt"] == "adam" else 0)) if i % 3 == 1 else \
                study.tell(t, state=TrialState.PRUNED)
    assert asked[0] == asked[1]
    assert len({tuple(sorted(p.items())) for p in asked[0]}) == 24


def test_a_wide_searchs_first_guided_wave_does_not_copy_its_one_completed_trial():
    """A search 16 wide asks for 12 configs at once when its 4 start-up trials have ended, and ASHA often
    lets only one of them complete. With Optuna's good share (1 trial below 11) the wave takes that
    trial's categorical values (the control below); the searcher's floor of 2 spreads it. Six waves of
    12 (sampler seeds 0-5), counted together."""
    from tune.search import FixedSpaceTPE
    space = {"lr": FloatDistribution(2e-3, 3e-2, log=True), "mixup": FloatDistribution(0, 1),
             "eps": FloatDistribution(0, 0.3), "resize": CategoricalDistribution([32, 48, 64]),
             "frac": FloatDistribution(0.2, 0.4), "norm": CategoricalDistribution(["imagenet", "dataset", "none"])}
    start = [({"lr": .01, "mixup": .3, "eps": .1, "resize": 32, "frac": .3, "norm": "imagenet"}, {4: .58, 8: .69}),
             ({"lr": .005, "mixup": .7, "eps": .2, "resize": 64, "frac": .25, "norm": "dataset"}, {4: .43}),
             ({"lr": .02, "mixup": .1, "eps": .05, "resize": 64, "frac": .35, "norm": "none"}, {4: .54}),
             ({"lr": .003, "mixup": .5, "eps": .25, "resize": 48, "frac": .22, "norm": "none"}, {4: .54})]

    def copies(seed, **gamma) -> int:
        sampler = FixedSpaceTPE(space, seed=seed, multivariate=True, constant_liar=True, n_startup_trials=4, **gamma)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.add_trials([create_trial(params=p, distributions=space, intermediate_values=iv, value=iv.get(8),
                                       state=TrialState.COMPLETE if 8 in iv else TrialState.PRUNED)
                          for p, iv in start])
        wave = [study.ask(space).params for _ in range(12)]   # all left RUNNING, as at width
        return sum((p["resize"], p["norm"]) == (32, "imagenet") for p in wave)

    optunas = sum(copies(seed, gamma=None) for seed in range(6))   # None: Optuna's own default_gamma
    assert optunas >= 48, optunas                              # at least 2 in 3 copy it
    assert (ours := sum(copies(seed) for seed in range(6))) <= 36, ours   # at most half


def test_a_warm_starts_copy_of_a_source_written_meanwhile_is_taken_again(tmp_path, monkeypatch):
    """A source search still running can write its WAL between the copies of its study and its WAL
    (tune/warm.py's copy_quiet): the copy is taken again, and a source that never stops is one line."""
    import shutil

    from tune import warm
    from tune.cli import UsageError
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    db, wal = src / "study.db", src / "study.db-wal"
    db.write_bytes(b"pages")
    wal.write_bytes(b"frame 1")
    checkpoints = 1

    def copy_while_written(a, b):   # the source's driver checkpoints just after its study file is copied
        nonlocal checkpoints
        copy(a, b)
        if a == db and checkpoints:
            checkpoints -= 1
            db.write_bytes(db.read_bytes() + b" + " + wal.read_bytes())   # the WAL's frames move into the file
            wal.write_bytes(b"frame 2")                                   # and the WAL starts again

    copy = shutil.copy2
    monkeypatch.setattr(warm.shutil, "copy2", copy_while_written)
    warm.copy_quiet([db, wal], dst, "results/old")
    # taken once, the copy would hold the study without frame 1 and a WAL without it either
    assert (dst / "study.db").read_bytes() == b"pages + frame 1"
    assert (dst / "study.db-wal").read_bytes() == b"frame 2"

    checkpoints = 3
    with pytest.raises(UsageError, match="results/old: its study changed while each of 3 copies"):
        warm.copy_quiet([db, wal], dst, "results/old", tries=3)


@pytest.mark.filterwarnings("ignore:.*gamma:FutureWarning")   # Optuna's TPE given the same good share
def test_tpes_start_up_configs_spread_over_every_knobs_range():
    """TPE's start-up trials come from a scrambled Sobol sequence: its first 8 points put one value in each
    eighth of every continuous knob's range (8 random draws do so with probability 8!/8**8, 0.2%, per knob)
    and each categorical choice at least twice. Running start-up trials draw the next points (a wide search
    asks its start-up at once), and the trial after the start-up is exactly Optuna's TPE's; a sampler
    pickled before it resumes with a random start-up."""
    import math

    from tune.search import FixedSpaceTPE, good_share
    # by name, the order Optuna's own TPE puts the space in (its draws follow it)
    space = {"eps": FloatDistribution(0, 0.3), "lr": FloatDistribution(2e-3, 3e-2, log=True),
             "mixup": FloatDistribution(0, 1), "norm": CategoricalDistribution(["imagenet", "dataset", "none"])}
    kw = dict(multivariate=True, constant_liar=True, n_startup_trials=8, gamma=good_share)
    for seed in range(3):
        study = optuna.create_study(direction="maximize", sampler=FixedSpaceTPE(space, seed=seed, **kw))
        start = [study.ask(space) for _ in range(8)]   # all running at once
        for t in start:
            study.tell(t, t.params["mixup"])
        for name, to01 in [("lr", lambda v: math.log(v / 2e-3) / math.log(15)), ("mixup", lambda v: v),
                           ("eps", lambda v: v / 0.3)]:
            assert sorted(int(8 * to01(t.params[name])) for t in start) == list(range(8)), (seed, name)
        assert all([t.params["norm"] for t in start].count(c) >= 2 for c in space["norm"].choices), seed
        # then TPE's own: what Optuna's TPE of the same seed asks given the same 8 trials, near the best
        # (the largest mixup)
        optunas = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, **kw))
        optunas.add_trials(study.trials)
        asked = study.ask(space).params
        assert asked == optunas.ask(space).params and asked["mixup"] > 0.5, seed
    # a sampler pickled in a search snapshotted before the spread start-up has none: its start-up stays random
    old = FixedSpaceTPE(space, seed=0, n_startup_trials=8)
    del old._spread
    study = optuna.create_study(sampler=pickle.loads(pickle.dumps(old)))
    assert 0 <= study.ask(space).params["mixup"] <= 1
