"""How long the searcher takes to propose a config as a study grows: 40, 200 and 1,000 trials.

python benchmarks/searcher_latency.py [--space full] [--sizes 40 200 1000] [--running 31] [--asks 5]
Optuna's suggestions slow as trials accumulate (ray-project/ray#18903, #46965). This builds the search's
own searcher (tune/search.py: TPE, multivariate, constant liar, the study in SQLite, the space's
distributions), fills its study to each size with finished trials (half of them pruned at the first rung
with their per-epoch values, as ASHA leaves them), asks --running trials that stay RUNNING (a search 32
wide asks with 31 others running), then times `suggest`, the call Ray makes for every new trial, --asks
times. Side by side, the same searcher with the study behind Optuna's own cache (what a plain RDBStorage
gets), which reads every running trial back from SQLite at each read. Target: under 1% of a GPU trial's
epoch (about 2 s for xresnet50 at 128 px on an H100), so 20 ms. Writes benchmarks/results/searcher_latency.json.
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
from optuna.storages._cached_storage import _CachedStorage

from tune.search import Settings, param_space, searcher
from tune.study import SoleWriterStorage

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


def optunas_cache(alg) -> None:
    """The searcher's study behind Optuna's own cache of the same SQLite file, in place of the search's."""
    alg._storage = _CachedStorage(alg._storage._backend)
    alg._ot_study._storage = alg._storage


def latencies(storage: str, space, sizes, running: int, asks: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(space=space.to_dict(), space_name=space.name, name="latency", root=tmp,
                     samples=max(sizes) + running + asks * len(sizes),
                     **{k: space.search[k] for k in ("max_epochs", "grace_period", "reduction_factor")})
        Path(tmp, s.name).mkdir()
        alg = searcher(s)
        alg.set_search_properties("accuracy", "max", param_space(s))
        assert isinstance(alg._storage, SoleWriterStorage)
        if storage == "optuna":
            optunas_cache(alg)
        rng = random.Random(0)
        alg.suggest("seed")  # the first ask creates the study's distributions
        for n in sorted(sizes):
            study = alg._ot_study  # the searcher's own study: what its suggest reads
            fill(study, space, n, s.max_epochs, s.grace_period, rng)
            for i in range(running - len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))):
                alg.suggest(f"n{n}-running-{i}")
            times = []
            for i in range(asks):
                t0 = time.perf_counter()
                alg.suggest(f"n{n}-{i}")   # stays RUNNING: the others ask beside it, as at width
                times.append(time.perf_counter() - t0)
            out[n] = {"median_s": statistics.median(times), "max_s": max(times), "asks": times}
            print(f"{storage:>12}: {n:>5} trials, {running} running: {1000 * out[n]['median_s']:.1f} ms per "
                  f"suggestion (max {1000 * out[n]['max_s']:.1f} ms)", flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--space", default="full")
    p.add_argument("--sizes", type=int, nargs="+", default=[40, 200, 1000])
    p.add_argument("--running", type=int, default=31)
    p.add_argument("--asks", type=int, default=5)
    args = p.parse_args()
    space = search_spaces.load(args.space)
    # alternated so that neither storage gets the quieter moments of a busy machine
    runs = {k: [] for k in ("sole_writer", "optuna")}
    for _ in range(2):
        for k in runs:
            runs[k].append(latencies(k, space, args.sizes, args.running, args.asks))
    out = {k: {n: {"median_s": statistics.median([a for r in rs for a in r[n]["asks"]]),
                   "max_s": max(a for r in rs for a in r[n]["asks"]),
                   "asks": [a for r in rs for a in r[n]["asks"]]} for n in args.sizes} for k, rs in runs.items()}
    ours = out["sole_writer"]
    save("searcher_latency", {"space": args.space, "running": args.running,
                              "sampler": "TPE multivariate, constant liar, SQLite in WAL mode",
                              "storages": {"sole_writer": "the search's (tune/study.py): trials read once, "
                                           "kept in memory, every write to SQLite first",
                                           "optuna": "Optuna's own cache: running trials read back at each read"},
                              "per_study_size": ours, "optunas_cache": out["optuna"],
                              "speedup": {n: out["optuna"][n]["median_s"] / ours[n]["median_s"] for n in args.sizes},
                              "target_s": TARGET_S,
                              "target_met": all(v["median_s"] < TARGET_S for v in ours.values())})


if __name__ == "__main__":
    main()
