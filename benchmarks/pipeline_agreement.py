"""Do the two data paths train to the same accuracy? One config, both paths, several seeds, generated data.

python benchmarks/pipeline_agreement.py [--seeds 1 2 3] [--epochs 8]    (about 6 minutes on a 2-core CPU)
The config turns on what the tensor path must reproduce: random-resized crops, progressive resizing,
label smoothing, mixup, ImageNet normalization and TTA. The paths agree when their mean accuracies differ
by less than twice the standard error of that difference. Writes benchmarks/results/pipeline_agreement.json.
"""
import argparse
import math
import statistics

from common import label, save

from trainables.config import TrainConfig
from trainables.train import train


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--data", default="synthetic")
    args = p.parse_args()
    base = TrainConfig(data=args.data, arch="tiny", size=64, bs=32, epochs=args.epochs, lr=1e-2,
                       resize_start=48, resize_frac=0.25, label_smoothing=0.1, mixup_alpha=0.2)
    rows = {}
    for pipe in ("fastai", "tensor"):
        runs = []
        for s in args.seeds:
            r = train(base.replace(pipeline=pipe, seed=s))
            runs.append({"seed": s, "accuracy": r.accuracy, "accuracy_tta": r.accuracy_tta,
                         "train_s": sum(h["epoch_s"] for h in r.history)})
            print(f"{pipe:>7} seed {s}: accuracy {r.accuracy:.4f}, with TTA {r.accuracy_tta:.4f}, "
                  f"{runs[-1]['train_s']:.0f} s", flush=True)
        acc = [x["accuracy"] for x in runs]
        rows[pipe] = {"runs": runs, "accuracy_mean": statistics.mean(acc), "accuracy_std": statistics.stdev(acc),
                      "accuracy_tta_mean": statistics.mean(x["accuracy_tta"] for x in runs),
                      "train_s_mean": statistics.mean(x["train_s"] for x in runs)}
    f, t = rows["fastai"], rows["tensor"]
    diff = t["accuracy_mean"] - f["accuracy_mean"]
    se = math.sqrt((f["accuracy_std"] ** 2 + t["accuracy_std"] ** 2) / len(args.seeds))
    save("pipeline_agreement", {"config": {**base.to_dict(), "data": label(base.data)}, "seeds": args.seeds, "paths": rows,
                                "difference_points": 100 * diff, "standard_error_points": 100 * se,
                                "agree": abs(diff) < 2 * se,
                                "criterion": "|tensor - fastai| < 2 standard errors of the difference"})
    for name, r in rows.items():
        print(f"{name:>7}: {100 * r['accuracy_mean']:.2f}% ± {100 * r['accuracy_std']:.2f} "
              f"(TTA {100 * r['accuracy_tta_mean']:.2f}%), {r['train_s_mean']:.0f} s per run")
    print(f"tensor - fastai: {100 * diff:+.2f} points, 2 standard errors {200 * se:.2f}: "
          f"{'agree' if abs(diff) < 2 * se else 'DIFFER'}")


if __name__ == "__main__":
    main()
