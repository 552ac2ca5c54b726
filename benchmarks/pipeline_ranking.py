"""Do the two data paths rank configs the same? Eight configs, both paths, seeds 1-3, generated data.

python benchmarks/pipeline_ranking.py [--seeds 1 2 3] [--epochs 8] [--fresh]   (about 30 minutes on a 2-core CPU)
The tensor path's augmentation is its own (trainables/tensor_pipeline.py says how it differs from fastai's),
so a config found on one path could mean something else on the other. This trains eight configs that move
the knobs a search moves (learning rate, mixup, label smoothing, crop scale, progressive resizing) on both
paths and compares the rankings of their mean accuracies with Kendall's tau. The noise floor beside it is
the tau between seed 1 and the mean of the other seeds on one path: two paths agree as well as that when
their tau is as high. Each run is saved as it ends, so a stopped run continues where it was (--fresh starts
over). Writes benchmarks/results/pipeline_ranking.json.
"""
import argparse
import json
import statistics

from common import RESULTS, label, save
from scipy.stats import kendalltau

from trainables.config import TrainConfig
from trainables.train import train

NAME = "pipeline_ranking"
CONFIGS = {  # each moves one knob from the first, the last moves several (fastbook's ladder at once)
    "lr 1e-2": {},
    "lr 3e-3": {"lr": 3e-3},
    "lr 3e-2": {"lr": 3e-2},
    "mixup 0.4": {"mixup_alpha": 0.4},
    "label smoothing 0.2": {"label_smoothing": 0.2},
    "min_scale 0.35": {"min_scale": 0.35},
    "min_scale 1.0": {"min_scale": 1.0},
    "resize 40->64, ls 0.1, mixup 0.2": {"resize_start": 40, "resize_frac": 0.5, "label_smoothing": 0.1,
                                         "mixup_alpha": 0.2},
}
PATHS = ("fastai", "tensor")


def tau(a: dict, b: dict) -> float:
    keys = sorted(set(a) & set(b))
    return float(kendalltau([a[k] for k in keys], [b[k] for k in keys]).statistic)


def summary(runs: list, seeds: list) -> dict:
    acc = {(r["config"], r["pipeline"], r["seed"]): r["accuracy"] for r in runs}
    done = [c for c in CONFIGS if all((c, p, s) in acc for p in PATHS for s in seeds)]
    if len(done) < 3:
        return {}
    mean = {p: {c: statistics.mean(acc[c, p, s] for s in seeds) for c in done} for p in PATHS}
    out = {"configs_complete": len(done), "mean_accuracy": mean,
           "kendall_tau_of_means": tau(mean["fastai"], mean["tensor"]),
           "kendall_tau_per_seed": {s: tau({c: acc[c, "fastai", s] for c in done},
                                           {c: acc[c, "tensor", s] for c in done}) for s in seeds},
           "best_config": {p: max(mean[p], key=mean[p].get) for p in PATHS}}
    if len(seeds) > 1:  # how well one path agrees with itself: seed 1 against the mean of the others
        rest = seeds[1:]
        out["noise_floor_tau"] = {p: tau({c: acc[c, p, seeds[0]] for c in done},
                                         {c: statistics.mean(acc[c, p, s] for s in rest) for c in done})
                                  for p in PATHS}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--data", default="synthetic")
    p.add_argument("--fresh", action="store_true", help="ignore the runs an earlier, stopped run saved")
    args = p.parse_args()
    base = TrainConfig(data=args.data, arch="tiny", size=64, bs=32, epochs=args.epochs, lr=1e-2, tta=False)
    saved = RESULTS / f"{NAME}.json"
    runs = []
    if saved.is_file() and not args.fresh:
        old = json.loads(saved.read_text())
        if old.get("epochs") == args.epochs and old.get("base") == {**base.to_dict(), "data": label(base.data)}:
            runs = old["runs"]
    for seed in args.seeds:
        for name, change in CONFIGS.items():
            for pipe in PATHS:
                if any(r["config"] == name and r["pipeline"] == pipe and r["seed"] == seed for r in runs):
                    continue
                r = train(base.replace(pipeline=pipe, seed=seed, **change))
                runs.append({"config": name, "pipeline": pipe, "seed": seed, "accuracy": r.accuracy,
                             "train_s": sum(h["epoch_s"] for h in r.history)})
                print(f"seed {seed} {name:<34} {pipe:>7}: {r.accuracy:.4f} ({runs[-1]['train_s']:.0f} s)", flush=True)
                save(NAME, {"base": {**base.to_dict(), "data": label(base.data)}, "epochs": args.epochs,
                            "seeds": args.seeds, "configs": CONFIGS, "runs": runs, **summary(runs, args.seeds)})
    s = summary(runs, args.seeds)
    print(f"Kendall's tau of the mean accuracies, fastai against tensor: {s['kendall_tau_of_means']:.2f} "
          f"over {s['configs_complete']} configs; per seed "
          + ", ".join(f"{v:.2f}" for v in s["kendall_tau_per_seed"].values())
          + ("; noise floor (seed 1 against the others) "
             + ", ".join(f"{k} {v:.2f}" for k, v in s["noise_floor_tau"].items()) if "noise_floor_tau" in s else "")
          + f"; best: fastai {s['best_config']['fastai']!r}, tensor {s['best_config']['tensor']!r}")


if __name__ == "__main__":
    main()
