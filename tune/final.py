"""Train one config without Ray: python tune/final.py [CONFIG.json] [--set key=value ...] [--out DIR]

The same train(config) the search's trials run, with progress on the terminal, TensorBoard events and
metrics.json in DIR, the exported fastai learner (load_learner) and the model weights. --repeats K trains
K seeds (seed, seed+1, ...) and reports the mean, the standard deviation and a 95% interval.

A config a search chose on its holdout (split=holdout) trains here on all of train/, holdout included, and
is tested once on val/; metrics.json puts the search's holdout accuracy beside that test accuracy.
"""
from __future__ import annotations

import argparse
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
    p.add_argument("--repeats", type=int, default=1, help="train this many seeds: mean, std and a 95%% interval")
    p.add_argument("--out", help="output folder (default: <config's folder>/final, or results/final-<time>)")
    p.add_argument("--force", action="store_true", help="write into an output folder that is not empty")
    p.add_argument("--quiet", action="store_true", help="no progress bars, only a line per epoch")
    return p.parse_args(argv)


def resolve_config(args):
    """(config, the search's provenance or None): a config chosen on a holdout is tested on val/."""
    from trainables.config import TrainConfig, load_config_file, parse_overrides
    values, provenance = load_config_file(args.config) if args.config else ({}, None)
    overrides = parse_overrides(args.set)
    if values.get("split") == "holdout" and "split" not in overrides:
        print("the search chose this config on a holdout of train/: this run trains on all of train/ and "
              "tests on val/ (keep the holdout with --set split=holdout)", flush=True)
        values["split"] = "val"
    values.update(overrides)
    if args.epochs is not None:
        values["epochs"] = args.epochs
    return TrainConfig.from_dict(values), provenance


def searched(provenance: dict | None) -> dict | None:
    """What the search said of this config, for metrics.json beside what this run measures."""
    if not provenance:
        return None
    keys = ("experiment", "trial", "metric", "scope", "value", "chosen_on", "epochs_trained", "git_commit")
    return {k: provenance.get(k) for k in keys if k in provenance}


def check_same_data(cfg, search: dict | None) -> None:
    """One line when train/ is not the files the search read (another copy, size or version of the data)."""
    from trainables.data import index, prepare
    chosen = (search or {}).get("chosen_on") or {}
    if chosen.get("split") != "holdout" or "fingerprint" not in chosen:
        return
    if index(prepare(cfg.data), ("train",)).fingerprint != chosen["fingerprint"]:
        print(f"warning: the train/ images of {cfg.data} are not those the search chose on (other names or "
              "sizes): its holdout accuracy is not this data's", flush=True)


def default_out(config_path) -> Path:
    if config_path:
        return Path(config_path).resolve().parent / "final"
    return Path("results") / time.strftime("final-%Y%m%d-%H%M%S")


def train_one(cfg, out: Path, progress: bool, search: dict | None) -> dict:
    from trainables.learner import export_learner
    from trainables.provenance import machine, versions
    from trainables.reporting import ConsoleReporter, TensorBoardReporter
    from trainables.train import train

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = train(cfg, [ConsoleReporter(), TensorBoardReporter(out, cfg.to_dict())], progress=progress)
    summary = {**res.summary(), "tested_on": tested_on(cfg), "search": search, "train_s": round(time.time() - t0, 1),
               "machine": machine(), "versions": versions()}
    export_learner(res.learn, cfg, out / "learner.pkl")  # load_learner(...) for prediction on new images
    res.learn.save((out / "model").resolve(), with_opt=False)  # plain state_dict in model.pth
    write_json(out / "metrics.json", summary)
    return summary


def tested_on(cfg) -> str:
    from trainables.data import TEST_FRAC, is_name, layout
    own = not is_name(cfg.data) and layout(Path(cfg.data)) == "classes"
    val = f"its test split (a seeded {TEST_FRAC:.0%} of each class)" if own else "val/"
    return {"val": val, "holdout": "a holdout of train/", "random": "a random 20% of all images"}[cfg.split]


def versus_search(search: dict | None, measured: dict) -> str:
    """What the search promised for this config beside what this run measured, in the search's metric."""
    if not search or search.get("value") is None or measured.get(search["metric"]) is None:
        return ""
    where = "holdout" if (search.get("chosen_on") or {}).get("split") == "holdout" else "validation"
    return (f"; in the search, {search['metric']} on its {where}: {search['value']:.4f} "
            f"({100 * (measured[search['metric']] - search['value']):+.2f} points here)")


def reexport(out: Path, search: dict | None) -> str:
    """The export's report lists the final runs in its folder: say how to add this one."""
    exp = out.resolve().parent
    if not search or exp.name != search.get("experiment") or not out.name.startswith("final"):
        return ""
    return f"\nto add it to the search's report.md: python tune/export.py {exp}"


def main(argv=None):
    quiet()
    args = parse_args(argv)
    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    cfg, provenance = resolve_config(args)
    from trainables.data import describe_folder, folders_for, index, prepare
    from trainables.learner import resolve_precision
    from tune.stats import describe, interval
    resolve_precision(cfg.precision)  # what this machine cannot run stops here, before anything is written
    index(prepare(cfg.data), folders_for(cfg.split))  # so does a dataset without readable images
    if found := describe_folder(cfg.data):
        print(found, flush=True)
    search = searched(provenance)
    check_same_data(cfg, search)
    if cfg.resize_start is not None and cfg.resize_start < cfg.size and not cfg.progressive:
        print(f"note: progressive resizing is off in this run: resize_frac={cfg.resize_frac:g} of {cfg.epochs} "
              f"epoch(s) rounds to no epoch at resize_start={cfg.resize_start}; every epoch trains at size="
              f"{cfg.size} (more --epochs, or a larger resize_frac, keeps it)", flush=True)
    out = free_folder(Path(args.out) if args.out else default_out(args.config), args.force, "output folder")
    progress = not args.quiet and sys.stdout.isatty()

    if args.repeats == 1:
        s = train_one(cfg, out, progress, search)
        tta = f", with TTA {s['accuracy_tta']:.4f}" if s["accuracy_tta"] is not None else ""
        print(f"accuracy on {s['tested_on']} {s['accuracy']:.4f}{tta}{versus_search(search, s)}\n"
              f"wrote {out}/metrics.json, learner.pkl, model.pth (tensorboard --logdir {out}){reexport(out, search)}")
        return 0

    runs = []
    for k in range(args.repeats):
        seed_cfg = cfg.replace(seed=cfg.seed + k)
        print(f"--- seed {seed_cfg.seed} ({k + 1}/{args.repeats})", flush=True)
        s = train_one(seed_cfg, out / f"seed-{seed_cfg.seed}", progress, search)
        runs.append({"seed": seed_cfg.seed, "accuracy": s["accuracy"], "accuracy_tta": s["accuracy_tta"],
                     "dir": f"seed-{seed_cfg.seed}"})
    agg = {"config": cfg.to_dict(), "tested_on": tested_on(cfg), "search": search, "repeats": args.repeats,
           "runs": runs}
    ivs = {}
    for key in ("accuracy", "accuracy_tta"):
        vals = [r[key] for r in runs if r[key] is not None]
        if vals:
            iv = ivs[key] = interval(vals)
            agg[f"{key}_mean"], agg[f"{key}_std"], agg[f"{key}_ci95"] = iv["mean"], iv["std"], [iv["low"], iv["high"]]
    write_json(out / "metrics.json", agg)
    line = f"accuracy on {agg['tested_on']} {describe(ivs['accuracy'], unit='%')}"
    if "accuracy_tta" in ivs:
        line += f", with TTA {describe(ivs['accuracy_tta'], unit='%')}"
    print(f"{line} over {args.repeats} seeds{versus_search(search, {k: agg.get(f'{k}_mean') for k in ('accuracy', 'accuracy_tta')})}\n"
          f"wrote {out}/metrics.json{reexport(out, search)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
