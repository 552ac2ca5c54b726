"""What the first guided wave of a wide search is drawn from: the configs TPE asks for at once after its start-up.

python benchmarks/first_wave.py [--space small] [--samples 16] [--width 8] [--seed 2] [--wave 12]
Runs the search as benchmarks/search_width.py does (TPE + ASHA, W trials at once on W logical CPUs), keeps
its TPE start-up trials as they ended (completed, or stopped by ASHA at a rung with their per-epoch values),
and asks the search's sampler (FixedSpaceTPE, same seed and settings) for a wave of configs at once in a
study of those trials alone, as a wide search does when its start-up ends: as the search asks (its good
share, tune.search.good_share, models at least 2 trials as good), without the constant liar, and with
Optuna's good share (a tenth, so 1 trial below 11), with the liar and without. Reports, per setting, how
many of the wave's configs share each value of each categorical parameter. Seed 2 at 8 at once is the
search_width run that ended below random + ASHA with Optuna's good share. About 3 minutes. Writes
benchmarks/results/first_wave.json.
"""
import argparse
import collections
import json
import tempfile
from pathlib import Path

import optuna
from common import save
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial
from search_width import search

from tune.search import FixedSpaceTPE, startup_trials
from tune.trials import Experiment

TENTH = {"gamma": None}   # Optuna's own default_gamma: a tenth, so 1 trial below 11
SETTINGS = {
    "as the search runs it (good: at least 2)": {},
    "no constant liar": {"constant_liar": False},
    "Optuna's good share (a tenth)": TENTH,
    "Optuna's good share, no constant liar": {**TENTH, "constant_liar": False},
}


def wave(start, seed: int, size: int, startup: int, **changes) -> list[dict]:
    space = start[0].distributions
    kw = {**dict(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=startup), **changes}
    study = optuna.create_study(direction="maximize", sampler=FixedSpaceTPE(space, **kw))
    for t in start:
        study.add_trial(create_trial(params=t.params, distributions=space, state=t.state, value=t.value,
                                     intermediate_values=t.intermediate_values))
    return [study.ask(space).params for _ in range(size)]   # each stays RUNNING: the liar's, as at width


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--space", default="small")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--wave", type=int, default=12)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    startup = startup_trials(args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        exp, _ = search(args.space, args.samples, args.seed, "tpe", "asha", args.width, Path(tmp))
        trials = sorted(Experiment(exp).study().trials, key=lambda t: t.number)
    start = [t for t in trials if not t.user_attrs.get("guided")][:startup]
    categorical = [k for k, d in start[0].distributions.items() if isinstance(d, CategoricalDistribution)]
    out = {"start_up": [{"state": t.state.name, "epochs": max(t.intermediate_values, default=0),
                         "accuracy": t.intermediate_values.get(max(t.intermediate_values, default=0)),
                         **{k: t.params[k] for k in categorical}} for t in start],
           "search_guided": {k: dict(collections.Counter(str(t.params[k]) for t in trials
                                                         if t.user_attrs.get("guided"))) for k in categorical}}
    print(f"start-up: {json.dumps(out['start_up'])}\nthe search's guided trials: {out['search_guided']}")
    out["waves"] = {}
    for name, changes in SETTINGS.items():
        asked = wave(start, args.seed, args.wave, startup, **changes)
        out["waves"][name] = {k: dict(collections.Counter(str(a[k]) for a in asked)) for k in categorical}
        print(f"{name:>36}: {out['waves'][name]}", flush=True)
    save("first_wave", {"space": args.space, "samples": args.samples, "width": args.width, "seed": args.seed,
                        "wave": args.wave, **out})


if __name__ == "__main__":
    main()
