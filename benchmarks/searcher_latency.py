"""How long the searcher takes to propose a config as a study grows: 40, 200 and 1,000 trials.

python benchmarks/searcher_latency.py [--space full] [--sizes 40 200 1000] [--asks 5]
Optuna's suggestions slow as trials accumulate (ray-project/ray#18903, #46965). This builds the search's
own searcher (tune/search.py: TPE, multivariate, constant liar, the study in SQLite, the space's
distributions), fills its study to each size with finished trials (half of them pruned at the first rung
with their per-epoch values, as ASHA leaves them), then times `suggest`, the call Ray makes for every new
trial, --asks times with that many trials running. Target: under 1% of a GPU trial's epoch (about 2 s for
xresnet50 at 128 px on an H100), so 20 ms. Writes benchmarks/results/searcher_latency.json.
"""
import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from common import save
from optuna.trial import TrialState, create_trial

import search_spaces
from tune.search import Settings, param_space, searcher

TARGET_S = 0.02


def fill(study, space, n: int, max_epochs: int, grace: int, rng: random.Random) -> None:
    """Finished trials up to n: values drawn at random, half pruned at the grace period."""
    dists = study.trials[0].distributions  # the space as the searcher's first ask declared it
    trials = []
    for _ in range(n - len(study.trials)):
        params = {k: (rng.choice(d.args) if d.kind == "choice" else
                      rng.uniform(*d.args[:2]) if d.kind in ("uniform", "loguniform") else
                      rng.randrange(d.args[0], d.args[1] + 1, d.args[2]))
                  for k, d in space.params.items()}
        pruned = rng.random() < 0.5
        epochs = grace if pruned else max_epochs
        curve = {e: rng.uniform(0.3, 0.9) * e / max_epochs for e in range(1, epochs + 1)}
        trials.append(create_trial(params=params, distributions=dists, intermediate_values=curve,
                                   state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                                   value=None if pruned else curve[epochs]))
    study.add_trials(trials)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--space", default="full")
    p.add_argument("--sizes", type=int, nargs="+", default=[40, 200, 1000])
    p.add_argument("--asks", type=int, default=5)
    args = p.parse_args()
    space = search_spaces.load(args.space)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(space=space.to_dict(), space_name=space.name, name="latency", root=tmp,
                     samples=max(args.sizes), **{k: space.search[k] for k in ("max_epochs", "grace_period",
                                                                            "reduction_factor")})
        Path(tmp, s.name).mkdir()
        alg = searcher(s)
        alg.set_search_properties("accuracy", "max", param_space(s))
        rng = random.Random(0)
        alg.suggest("seed")  # the first ask creates the study's distributions
        for n in sorted(args.sizes):
            study = alg._ot_study  # the searcher's own study: what its suggest reads
            fill(study, space, n, s.max_epochs, s.grace_period, rng)
            times = []
            for i in range(args.asks):
                t0 = time.perf_counter()
                alg.suggest(f"n{n}-{i}")   # stays RUNNING: the others ask beside it, as at width
                times.append(time.perf_counter() - t0)
            out[n] = {"median_s": statistics.median(times), "max_s": max(times), "asks": times}
            print(f"{n:>5} trials: {1000 * out[n]['median_s']:.1f} ms per suggestion (max "
                  f"{1000 * out[n]['max_s']:.1f} ms)", flush=True)
    save("searcher_latency", {"space": args.space, "sampler": "TPE multivariate, constant liar, SQLite",
                              "per_study_size": out, "target_s": TARGET_S,
                              "target_met": all(v["median_s"] < TARGET_S for v in out.values())})


if __name__ == "__main__":
    main()
