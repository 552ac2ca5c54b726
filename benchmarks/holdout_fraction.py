"""How big must the holdout be to choose well? Configs ranked on holdouts of 5-20% of train/ against val/.

python benchmarks/holdout_fraction.py [--data PATH] [--configs 8] [--draws 500] [--epochs N]
The configs are those a real search compares: trials of a `real_cpu` search on the real photos
(`--leaderboard`; the measurement saved used that search's leaderboard of commit 48dd81e, ranked on val/
before searches chose on the holdout), its top four and four spread below them. Each
is trained once as a search's trial is (tiny, 64 px, 10 epochs) on train/ less a 20% holdout, and its
predictions on every holdout image and every val/ image are kept. A holdout of fraction f <= 20% is then
a stratified draw of f/20% of each class of that 20%, drawn `--draws` times. Per fraction: Spearman's rank
correlation of holdout accuracy with val/ accuracy, and the regret of choosing on it (val/ accuracy of the
best config on val/ minus that of the config the holdout picks, in points). Every fraction's trials here
train on the same 80%; a smaller holdout would give them a little more data, which moves all configs
alike and is measured by the final run, which trains on all of train/.
Saves benchmarks/results/holdout_fraction.json.
"""
import argparse
import csv
import os
import random
import statistics
import time

import numpy as np
import torch
from common import REAL_DATA, RESULTS, label, save
from scipy.stats import spearmanr

from search_spaces import load
from trainables.config import TrainConfig, coerce
from trainables.data import folders_for, index, prepare
from trainables.learner import build_dls
from trainables.train import train

FRACTIONS = (0.05, 0.1, 0.15, 0.2)
TRAINED_FRAC = 0.2


def configs(n: int, leaderboard: str) -> list[tuple[str, dict]]:
    """(trial id, searched keys) of the real search's leaderboard: its top four, then n - 4 spread below."""
    with open(leaderboard) as f:
        rows = [r for r in csv.DictReader(f) if r["accuracy"]]
    space = load("real_cpu")
    picks = rows[:4] + [rows[i] for i in np.linspace(4, len(rows) - 1, n - 4).round().astype(int)]
    out = []
    for r in picks:
        out.append((r["trial_id"], {k: coerce(k, r[k]) for k in space.params}))
    return out


def correct(learn, dl) -> np.ndarray:
    preds, targets = learn.get_preds(dl=dl)
    return (preds.argmax(1) == targets).numpy()


def draw(labels: np.ndarray, frac: float, rng: random.Random) -> np.ndarray:
    """A stratified subset: frac / TRAINED_FRAC of each class of the trained holdout."""
    keep = []
    for c in np.unique(labels):
        members = list(np.flatnonzero(labels == c))
        keep += rng.sample(members, round(len(members) * frac / TRAINED_FRAC))
    return np.array(sorted(keep))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--data", default=str(REAL_DATA))
    p.add_argument("--configs", type=int, default=8)
    p.add_argument("--leaderboard", default=str(RESULTS / "real_quality_search" / "leaderboard.csv"),
                   help="a real_cpu search's leaderboard.csv, whose trials' configs are ranked")
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--epochs", type=int, help="per config (default: the real_cpu search's 10)")
    args = p.parse_args()
    space = load("real_cpu")
    base = TrainConfig.from_dict({**space.fixed, "data": str(prepare(args.data)), "epochs": args.epochs or space.search["max_epochs"],
                                  "split": "holdout", "holdout_frac": TRAINED_FRAC, "tta": False})
    full_idx = index(prepare(base.data), folders_for("val"))
    held, val, ids, t0 = [], [], [], time.perf_counter()
    for trial, keys in configs(args.configs, args.leaderboard):
        cfg = base.replace(**keys)
        t = time.perf_counter()
        res = train(cfg)
        held.append(correct(res.learn, res.learn.dls.valid))
        # val/ through the config's own loader (its normalization), from the index that lists val/
        val.append(correct(res.learn, build_dls(cfg.replace(split="val"), full_idx, torch.device("cpu"))[0].valid))
        ids.append(trial)
        print(f"{trial}: holdout {held[-1].mean():.4f}, val/ {val[-1].mean():.4f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    held, val = np.stack(held), np.stack(val)
    val_acc = val.mean(1)
    hold_labels = np.array([c for c in res.learn.dls.valid.dataset.labels.tolist()])
    rows = []
    for frac in FRACTIONS:
        rng = random.Random(0)
        rhos, regrets, top = [], [], []
        for _ in range(args.draws):
            sub = draw(hold_labels, frac, rng)
            acc = held[:, sub].mean(1)
            if len(set(acc)) > 1:  # all tied: no ranking to correlate
                rhos.append(spearmanr(acc, val_acc).statistic)
            pick = int(np.argmax(acc))
            regrets.append(100 * (val_acc.max() - val_acc[pick]))
            top.append(pick == int(np.argmax(val_acc)))
        rows.append({"fraction": frac, "holdout_images": len(sub), "spearman_mean": statistics.mean(rhos),
                     "spearman_p10": float(np.percentile(rhos, 10)), "regret_points_mean": statistics.mean(regrets),
                     "regret_points_p90": float(np.percentile(regrets, 90)), "picks_val_best": statistics.mean(top)})
        r = rows[-1]
        print(f"holdout {frac:.0%} ({r['holdout_images']} images): Spearman {r['spearman_mean']:.2f} "
              f"(p10 {r['spearman_p10']:.2f}), regret {r['regret_points_mean']:.2f} points (p90 "
              f"{r['regret_points_p90']:.2f}), picks val/'s best {100 * r['picks_val_best']:.0f}% of draws", flush=True)
    save("holdout_fraction", {
        "data": label(args.data), "budget": {k: getattr(base, k) for k in ("arch", "size", "bs", "pipeline", "epochs")},
        "trained_on": f"train/ less a stratified {TRAINED_FRAC:.0%} holdout (holdout_seed 0)", "draws": args.draws,
        "configs": [{"trial": i, "holdout_accuracy": float(h.mean()), "val_accuracy": float(v)}
                    for i, h, v in zip(ids, held, val_acc)],
        "val_images": int(val.shape[1]), "rows": rows, "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
