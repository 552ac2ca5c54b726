"""Search spaces: named ones load, user files are checked against the config before anything starts."""
import json

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

import search_spaces
from search_spaces import SpaceError, load, parse


@pytest.mark.parametrize("name", ["smoke", "small", "full"])
def test_named_spaces_load_and_describe(name):
    space = load(name)
    text = search_spaces.describe(space)
    assert name in text and space.search["samples"] >= 1
    for key in ("lr", "mixup_alpha", "label_smoothing", "resize_start", "resize_frac"):
        assert key in space.params, key


def test_full_space_covers_off_and_gives_late_techniques_a_fair_rung():
    s = load("full")
    assert s.params["mixup_alpha"].args == (0.0, 1.0)
    assert s.params["label_smoothing"].args[0] == 0.0 and s.params["label_smoothing"].args[1] >= 0.3
    assert s.fixed["size"] in s.params["resize_start"].args          # resize_start = size: resizing off
    assert s.params["lr"].kind == "loguniform"
    assert s.search["grace_period"] >= s.search["max_epochs"] // 2   # first rung after the one-cycle peak
    assert "lr_schedule" not in s.params   # flat-cos would be judged before it anneals


@pytest.mark.parametrize("name", search_spaces.named())
def test_no_named_space_judges_a_progressive_resizing_trial_before_it_reaches_the_final_size(name):
    s = load(name)
    assert search_spaces.judged_before_switch(s, s.search["max_epochs"], s.search["grace_period"]) is None


def test_a_space_that_would_judge_trials_at_their_small_size_is_named():
    s = parse({"size": 64, "resize_start": {"choice": [32, 64]}, "resize_frac": {"uniform": [0.2, 0.75]}}, "late")
    why = search_spaces.judged_before_switch(s, 8, 4)
    assert "resize_frac up to 0.75 trains 6 of 8 epochs" in why and "epoch 4" in why
    assert search_spaces.judged_before_switch(s, 8, 7) is None            # a later rung is fair
    off = parse({"size": 64, "resize_frac": {"uniform": [0.2, 0.75]}}, "off")   # no resizing at all
    assert search_spaces.judged_before_switch(off, 8, 4) is None


def test_user_yaml_with_every_kind(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("""
description: mine
search: {samples: 3, max_epochs: 2}
arch: tiny
size: 64
lr: {loguniform: [1.0e-4, 1.0e-2]}
mixup_alpha: {uniform: [0, 0.5]}
resize_start: {int: [32, 64, 16]}
normalize: {choice: [imagenet, none]}
""")
    s = load(str(f))
    assert s.name == "mine" and s.fixed == {"arch": "tiny", "size": 64, "split": "holdout"}
    assert s.params["resize_start"].args == (32, 64, 16)
    assert s.params["normalize"].args == ("imagenet", "none")
    assert parse(s.to_dict(), "again").params == s.params      # saved with a search, read back on resume


def test_user_json_space(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"lr": {"loguniform": [1e-4, 1e-2]}, "epochs": 3}))
    assert load(str(f)).fixed["epochs"] == 3


@pytest.mark.parametrize("body, words", [
    ({"lerning_rate": {"uniform": [0, 1]}}, "unknown config key 'lerning_rate'"),
    ({"lr": {"uniform": [0.1, 0.01]}}, "impossible range"),
    ({"lr": {"loguniform": [0, 0.01]}}, "loguniform needs low > 0"),
    ({"label_smoothing": {"uniform": [0, 1.5]}}, "label_smoothing"),
    ({"mixup_alpha": {"uniform": [-1, 1]}}, "mixup_alpha"),
    ({"size": {"uniform": [64, 128]}}, "integer"),
    ({"resize_start": {"int": [32, 64, 10]}}, "step"),
    ({"arch": {"choice": ["tiny", "resnet9"]}}, "arch"),
    ({"arch": {"uniform": [0, 1]}}, "use choice"),
    ({"epochs": {"int": [2, 8]}}, "epochs must be fixed"),
    ({"size": 64, "resize_start": {"choice": [32, 96]}}, "resize_start can reach 96"),
    ({"lr": {"normal": [0, 1]}}, "expected one of"),
    ({"lr": 0}, "lr"),
    ({"search": {"samples": 0}}, "samples"),
    ({"search": {"trials": 3}}, "unknown search option"),
])
def test_bad_spaces_name_key_and_problem(body, words):
    with pytest.raises(SpaceError, match=words):
        parse(body, "bad")


def test_unknown_space_and_malformed_file(tmp_path):
    with pytest.raises(SpaceError, match="unknown space 'huge'"):
        load("huge")
    f = tmp_path / "broken.yaml"
    f.write_text("lr: {loguniform: [1e-4, \n")
    with pytest.raises(SpaceError, match="malformed"):
        load(str(f))


def test_space_becomes_the_same_optuna_distributions(tmp_path):
    from tune.search import param_space, Settings
    space = parse({"lr": {"loguniform": [1e-4, 1e-2]}, "resize_start": {"int": [32, 64, 16]},
                   "normalize": {"choice": ["imagenet", "none"]}, "mixup_alpha": {"uniform": [0, 1]},
                   "size": 64}, "t")
    s = Settings(space=space.to_dict(), space_name="t", name="x", root=str(tmp_path), samples=1, max_epochs=2,
                 grace_period=1, reduction_factor=2)
    searcher = OptunaSearch(metric="accuracy", mode="max")
    assert searcher.set_search_properties("accuracy", "max", param_space(s))
    dists = dict(searcher._space)
    assert dists["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["resize_start"] == optuna.distributions.IntDistribution(32, 64, step=16)
    assert dists["normalize"] == optuna.distributions.CategoricalDistribution(["imagenet", "none"])
    assert dists["mixup_alpha"] == optuna.distributions.FloatDistribution(0, 1)


def test_a_search_chooses_on_the_holdout_unless_the_space_says_otherwise():
    assert load("smoke").fixed["split"] == "holdout"
    assert parse({"arch": "tiny", "split": "val"}, "old").fixed["split"] == "val"   # today's behaviour, on request


def test_a_search_saved_before_the_holdout_resumes_on_val():
    from tune.search import Settings
    old = {"description": "", "search": {}, "arch": "tiny", "lr": {"loguniform": [1e-3, 1e-2]}}
    s = Settings(space=old, space_name="old", name="old", root="/r", samples=2, max_epochs=2, grace_period=1,
                 reduction_factor=2)
    assert s.parsed_space().fixed["split"] == "val"    # its trials were scored on val/, as Ray will rerun them
    s.space = {**old, "split": "holdout"}
    assert s.parsed_space().fixed["split"] == "holdout"
