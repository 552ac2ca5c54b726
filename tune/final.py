"""Train one config without Ray: python tune/final.py [CONFIG.json] [--set key=value ...] [--out DIR]

The same train(config) the search's trials run, with progress on the terminal, TensorBoard events and
metrics.json in DIR, the exported fastai learner (load_learner) and the model weights. --repeats K trains
K seeds (seed, seed+1, ...) and reports the mean and standard deviation.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a clone without installing

from trainables.files import write_json  # noqa: E402
from tune.cli import Parser, UsageError, free_folder, quiet, run  # noqa: E402


def parse_args(argv):
    from trainables.config import FIELDS
    keys = "\n".join(f"  {k:<16} {f.metadata['help']} (default: {f.default})" for k, f in FIELDS.items())
    p = Parser(
        prog="tune/final.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=f"config keys:\n{keys}")
    p.add_argument("config", nargs="?", help="JSON file of config keys, e.g. results/<name>/best_config.json "
                   "(defaults when omitted)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key")
    p.add_argument("--epochs", type=int, help="shorthand for --set epochs=N")
    p.add_argument("--repeats", type=int, default=1, help="train this many seeds and report mean ± std")
    p.add_argument("--out", help="output folder (default: <config's folder>/final, or results/final-<time>)")
    p.add_argument("--force", action="store_true", help="write into an output folder that is not empty")
    p.add_argument("--quiet", action="store_true", help="no progress bars, only a line per epoch")
    return p.parse_args(argv)


def resolve_config(args):
    from trainables.config import TrainConfig, load_config_file, parse_overrides
    values = load_config_file(args.config) if args.config else {}
    values.update(parse_overrides(args.set))
    if args.epochs is not None:
        values["epochs"] = args.epochs
    return TrainConfig.from_dict(values)


def default_out(config_path) -> Path:
    if config_path:
        return Path(config_path).resolve().parent / "final"
    return Path("results") / time.strftime("final-%Y%m%d-%H%M%S")


def train_one(cfg, out: Path, progress: bool) -> dict:
    from trainables.learner import export_learner
    from trainables.provenance import machine, versions
    from trainables.reporting import ConsoleReporter, TensorBoardReporter
    from trainables.train import train

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = train(cfg, [ConsoleReporter(), TensorBoardReporter(out, cfg.to_dict())], progress=progress)
    summary = {**res.summary(), "train_s": round(time.time() - t0, 1), "machine": machine(), "versions": versions()}
    export_learner(res.learn, cfg, out / "learner.pkl")  # load_learner(...) for prediction on new images
    res.learn.save((out / "model").resolve(), with_opt=False)  # plain state_dict in model.pth
    write_json(out / "metrics.json", summary)
    return summary


def main(argv=None):
    quiet()
    args = parse_args(argv)
    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    cfg = resolve_config(args)
    from trainables.data import index, prepare
    from trainables.learner import resolve_precision
    resolve_precision(cfg.precision)  # what this machine cannot run stops here, before anything is written
    index(prepare(cfg.data))          # so does a dataset without readable images
    out = free_folder(Path(args.out) if args.out else default_out(args.config), args.force, "output folder")
    progress = not args.quiet and sys.stdout.isatty()

    if args.repeats == 1:
        s = train_one(cfg, out, progress=progress)
        tta = f", with TTA {s['accuracy_tta']:.4f}" if s["accuracy_tta"] is not None else ""
        print(f"accuracy {s['accuracy']:.4f}{tta}; wrote {out}/metrics.json, learner.pkl, model.pth "
              f"(tensorboard --logdir {out})")
        return 0

    runs = []
    for k in range(args.repeats):
        seed_cfg = cfg.replace(seed=cfg.seed + k)
        print(f"--- seed {seed_cfg.seed} ({k + 1}/{args.repeats})", flush=True)
        s = train_one(seed_cfg, out / f"seed-{seed_cfg.seed}", progress=progress)
        runs.append({"seed": seed_cfg.seed, "accuracy": s["accuracy"], "accuracy_tta": s["accuracy_tta"],
                     "dir": f"seed-{seed_cfg.seed}"})
    agg = {"config": cfg.to_dict(), "repeats": args.repeats, "runs": runs}
    for key in ("accuracy", "accuracy_tta"):
        vals = [r[key] for r in runs if r[key] is not None]
        if vals:
            agg[f"{key}_mean"], agg[f"{key}_std"] = statistics.mean(vals), statistics.stdev(vals)
    write_json(out / "metrics.json", agg)
    line = f"accuracy {agg['accuracy_mean']:.4f} ± {agg['accuracy_std']:.4f}"
    if "accuracy_tta_mean" in agg:
        line += f", with TTA {agg['accuracy_tta_mean']:.4f} ± {agg['accuracy_tta_std']:.4f}"
    print(f"{line} over {args.repeats} seeds; wrote {out}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
