"""What the search finds on real photos, against fastbook chapter 7's hand-made ladder at the same budget.

python benchmarks/real_quality.py [--quick] [--data PATH] [--seeds 1 2 3] [--space real_cpu] [--gpus-per-trial G]
                                  [--samples N] [--rungs K]
The protocol is clean: everything is chosen on a holdout of train/ (split=holdout, 20% of each class,
holdout_seed 0) and val/ is the test, read only after the choice, by runs trained on all of train/.
1. the ladder: baseline, + normalization, + progressive resizing, + label smoothing, + mixup (each rung
   adds to the one before, as in the chapter); each rung trained with the same seeds on the holdout
   split (to choose the ladder's best rung) and on all of train/ (to test it on val/);
2. a search (`tune/run.py --space real_cpu`, on the holdout) on the same budget per trial, its best config
   exported, trained with the same seeds on the holdout split (the winner's curse: its holdout accuracy
   in the search against its retrained one) and on all of train/ for the test;
3. every rung against the searched config seed by seed on val/ (the paired difference, its mean and 95%
   interval), with and without TTA: benchmarks/results/real_quality.{json,md}, and the search's report,
   leaderboard and best config in benchmarks/results/real_quality_search/.
About 55 minutes on a 2-core CPU; --quick (a subset, 3 epochs, 4 trials) runs in a few minutes.
The budget (arch, size, batch, data path, epochs) is the space's: `--space leaderboard --gpus-per-trial 0.25`
is the leaderboard's 128 px / 5 epochs cell on a GPU, written as real_quality-leaderboard.* with GPU-hours.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import REAL_DATA, RESULTS, ROOT, label, real_subset, save

from search_spaces import load
from trainables.config import TrainConfig
from trainables.data import DataError, prepare
from trainables.provenance import machine
from trainables.train import train
from tune.stats import interval, paired

PROTOCOL = {"selection": "split=holdout: 20% of each class of train/ (holdout_seed 0); the search's trials and "
                         "the ladder's choice of rung see only it",
            "test": "val/, read once per config and seed after the choice, by runs trained on all of train/"}


def ladder(size: int) -> list[tuple[str, dict]]:
    """fastbook chapter 7's recipe, each rung adding one technique; resizing keeps its 128 -> 224 ratio and
    its 4 of 9 epochs at the start size."""
    return [
        ("baseline", {"normalize": "none"}),
        ("+ normalization", {"normalize": "imagenet"}),
        ("+ progressive resizing", {"resize_start": max(8, 8 * round(size * 128 / 224 / 8)), "resize_frac": 4 / 9}),
        ("+ label smoothing", {"label_smoothing": 0.1}),
        ("+ mixup", {"mixup_alpha": 0.4}),
    ]


def budget(space_name: str, quick: bool) -> dict:
    """The per-run budget both sides share: the space's fixed keys (arch, size, batch, data path, ...) but
    its data, and the epochs of a trial that completes."""
    space = load(space_name)
    defaults = TrainConfig()
    out = {k: space.fixed.get(k, getattr(defaults, k)) for k in ("arch", "size", "bs", "pipeline")}
    out.update({k: v for k, v in space.fixed.items() if k != "data"})
    out["epochs"] = 3 if quick else space.search.get("max_epochs", space.fixed.get("epochs", defaults.epochs))
    return out


def summarize(name: str, kind: str, held: list[dict], test: list[dict], config: dict) -> dict:
    """A config's holdout accuracy (the selection) and its val/ accuracy with and without TTA (the test)."""
    acc, tta, hold = ([r[k] for r in runs] for runs, k in ((test, "accuracy"), (test, "accuracy_tta"),
                                                             (held, "accuracy")))
    return {"name": name, "kind": kind, "seeds": [r["seed"] for r in test],
            "holdout_accuracy": hold, "holdout_mean": statistics.mean(hold),
            "accuracy": acc, "accuracy_mean": statistics.mean(acc), "accuracy_ci95": ci(acc),
            "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "accuracy_tta": tta, "accuracy_tta_mean": statistics.mean(tta), "accuracy_tta_ci95": ci(tta),
            "accuracy_tta_std": statistics.stdev(tta) if len(tta) > 1 else 0.0, "config": config}


def ci(xs: list[float]) -> list | None:
    iv = interval(xs)
    return None if iv["low"] is None else [iv["low"], iv["high"]]


def compare(searched: dict, row: dict) -> dict:
    """Searched minus a rung, seed by seed on val/, without and with TTA."""
    out = {}
    for key in ("accuracy", "accuracy_tta"):
        d = paired(dict(zip(searched["seeds"], searched[key])), dict(zip(row["seeds"], row[key])))
        out[key] = {k: d[k] for k in ("mean", "std", "low", "high", "diffs", "seeds", "excludes_zero")}
    return out


def train_seeds(cfg: TrainConfig, seeds, split: str) -> list[dict]:
    """One run per seed on `split`: holdout (trained on train/ less the holdout, scored on it, no TTA: the
    search's metric) or val (trained on all of train/, tested on val/ with and without TTA)."""
    out = []
    for s in seeds:
        t0 = time.perf_counter()
        r = train(cfg.replace(seed=s, split=split, tta=split == "val"))
        out.append({"seed": s, "accuracy": r.accuracy, "accuracy_tta": r.accuracy_tta,
                    "seconds": time.perf_counter() - t0})
        tta = f", with TTA {r.accuracy_tta:.4f}" if r.accuracy_tta is not None else ""
        print(f"    {split} seed {s}: accuracy {r.accuracy:.4f}{tta} ({out[-1]['seconds']:.0f} s)", flush=True)
    return out


def search(space: str, data: str, quick: bool, results: Path, extra: list) -> tuple[dict, float]:
    extra = extra + (["--samples", "4", "--max-epochs", "3", "--grace-period", "1"] if quick else [])
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), "--space", space, "--data", data,
                        "--results", str(results), "--name", "real_quality", "--seed", "0", *extra],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"search failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads((results / "real_quality" / "best_config.json").read_text()), time.perf_counter() - t0


def shown_path(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def epoch_and_checkpoint_s(exp: Path) -> dict:
    """The search's median epoch against what a checkpoint added to its epoch's report: Ray marks the
    results that carried one (checkpoint_dir_name); each report's time_this_iter_s beyond its epoch_s is
    the round trip, plus the checkpoint's write and copy where there was one."""
    from tune.trials import Experiment
    rows = [r for t in Experiment(exp).trials() for r in t.history if "epoch_s" in r and "time_this_iter_s" in r]
    extra = {True: [], False: []}
    for r in rows:
        extra[bool(r.get("checkpoint_dir_name"))].append(r["time_this_iter_s"] - r["epoch_s"])
    med = (lambda xs: statistics.median(xs) if xs else None)
    with_ck, without = med(extra[True]), med(extra[False])
    return {"epoch_s_median": med([r["epoch_s"] for r in rows]),
            "checkpoint_s_median": None if with_ck is None else with_ck - (without or 0.0),
            "epochs_with_checkpoint": len(extra[True]), "epochs_without": len(extra[False])}


def portable(text: str, data: str, tmp: str, name: str) -> str:
    """This machine's paths out of what is committed: the data folder (an absolute path) by `name`, the
    temporary search by its results/ name."""
    return text.replace(str(Path(tmp) / "results"), "results").replace(data, name)


def past_ladder(name: str, rungs: list, seeds: list, data_label: str, short: str) -> list[dict] | None:
    """The ladder's rows of this benchmark's last results, if they were trained as these would be: the same
    protocol, data, seeds and rung configs (the runs are seeded, so training them again gives the same)."""
    try:
        past = json.loads((RESULTS / f"{name}.json").read_text())
    except (OSError, ValueError):
        past = {}
    rows = [r for r in past.get("rows", []) if r["kind"] == "ladder"]
    wanted = [(rung, {**cfg.replace(split="val").to_dict(), "data": short}) for rung, cfg in rungs]
    if (past.get("protocol") != PROTOCOL or past.get("budget", {}).get("data") != data_label
            or past["budget"].get("seeds") != seeds or [(r["name"], r["config"]) for r in rows] != wanted):
        print("--reuse-ladder: the last results' ladder was not trained as this one would be; training it", flush=True)
        return None
    print(f"ladder: reused from benchmarks/results/{name}.json (same protocol, data, seeds and configs)", flush=True)
    return [{**{k: v for k, v in r.items() if k not in ("best_rung", "vs_searched")},
             "reused_from_commit": r.get("reused_from_commit", past.get("git_commit"))} for r in rows]


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| config | holdout (choice) | val/ accuracy | val/ with TTA | searched − this on val/ "
             "(95% CI) | with TTA |", "|---|---|---|---|---|---|"]
    for r in rows:
        held = f"{100 * r['holdout_mean']:.2f}%"
        if "holdout_in_search" in r:
            held += f" (in the search: {100 * r['holdout_in_search']:.2f}%)"
        diff = ["", ""] if "vs_searched" not in r else [
            f"{100 * d['mean']:+.2f} ({100 * d['low']:+.2f} to {100 * d['high']:+.2f})" if d["low"] is not None
            else f"{100 * d['mean']:+.2f}" for d in (r["vs_searched"][k] for k in ("accuracy", "accuracy_tta"))]
        lines.append(f"| {r['name']}{' (best rung)' if r.get('best_rung') else ''} | {held} "
                     f"| {100 * r['accuracy_mean']:.2f}% ± {100 * r['accuracy_std']:.2f} "
                     f"| {100 * r['accuracy_tta_mean']:.2f}% ± {100 * r['accuracy_tta_std']:.2f} | {diff[0]} | {diff[1]} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--quick", action="store_true", help="a subset, 3 epochs, 2 seeds, 4 trials: a few minutes")
    p.add_argument("--data", help="Imagenette-layout folder (default: the real photos beside the project)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of every rung and of the searched config")
    p.add_argument("--space", default="real_cpu", help="the search space; its fixed keys are every run's budget")
    p.add_argument("--gpus-per-trial", type=float, help="passed to the search (e.g. 0.25: four trials per GPU)")
    p.add_argument("--samples", type=int, help="the search's trials (default: the space's)")
    p.add_argument("--rungs", type=int, help="only the ladder's first N rungs (a session too short for all five)")
    p.add_argument("--reuse-ladder", action="store_true",
                   help="take the ladder's rows from the last results of this benchmark when their budget, seeds "
                        "and protocol are these (the ladder is seeded: it trains the same again)")
    args = p.parse_args()
    seeds = args.seeds or ([1, 2] if args.quick else [1, 2, 3])
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:   # a folder or a dataset name, as --data takes it everywhere; absolute from here on
            source = data = str(prepare(args.data or str(REAL_DATA)))
        except DataError as e:
            sys.exit(f"error: {e}")
        short = ("real-photos" if Path(data) == REAL_DATA.resolve() else Path(data).name) + \
            ("-subset" if args.quick else "")
        if args.quick:
            data = str(real_subset(Path(tmp) / "subset", 100, 30, src=Path(data)))
        b = budget(args.space, args.quick)
        base = TrainConfig(data=data, **b)
        name = "real_quality" + ("" if args.space == "real_cpu" else f"-{Path(args.space).stem}") + \
            ("_quick" if args.quick else "")
        rungs, cfg = [], base
        for rung, change in ladder(b["size"])[:args.rungs]:
            cfg = cfg.replace(**change)
            rungs.append((rung, cfg))
        rows = (past_ladder(name, rungs, seeds, label(source) + (" subset" if args.quick else ""), short)
                if args.reuse_ladder else None) or []
        for rung, cfg in ([] if rows else rungs):
            print(f"ladder: {rung}", flush=True)
            rows.append(summarize(rung, "ladder", train_seeds(cfg, seeds, "holdout"), train_seeds(cfg, seeds, "val"),
                                  cfg.replace(split="val").to_dict()))

        print(f"search: tune/run.py --space {args.space}", flush=True)
        extra = ([] if args.gpus_per_trial is None else ["--gpus-per-trial", str(args.gpus_per_trial)]) + \
            ([] if args.samples is None else ["--samples", str(args.samples)])
        best, search_s = search(args.space, data, args.quick, Path(tmp) / "results", extra)
        timing = epoch_and_checkpoint_s(Path(tmp) / "results" / "real_quality")
        assert best["provenance"]["chosen_on"]["split"] == "holdout", "the search must choose on the holdout"
        searched = TrainConfig.from_dict({**best["config"], "epochs": b["epochs"]})
        print(f"searched config (trial {best['provenance']['trial']}): {best['provenance']['searched']}", flush=True)
        rows.append(summarize("searched (TPE + ASHA)", "searched", train_seeds(searched, seeds, "holdout"),
                              train_seeds(searched, seeds, "val"), searched.replace(split="val").to_dict()))
        rows[-1]["holdout_in_search"] = best["provenance"]["value"]
        for r in rows:
            r["config"]["data"] = short

        out_dir = RESULTS / f"{name}_search"
        shutil.rmtree(out_dir, ignore_errors=True)
        exp = Path(tmp) / "results" / "real_quality"
        out_dir.mkdir(parents=True)
        for f in ("report.md", "leaderboard.csv", "best_config.json"):
            (out_dir / f).write_text(portable((exp / f).read_text(), data, tmp, short))
        shutil.copytree(exp / "report", out_dir / "report")

    # the ladder's best rung is the one the holdout picks, as the search's config is: picking it on val/
    # would favour the ladder
    best_ladder = max((r for r in rows if r["kind"] == "ladder"), key=lambda r: r["holdout_mean"])
    best_ladder["best_rung"] = True
    s = rows[-1]
    for r in rows[:-1]:
        r["vs_searched"] = compare(s, r)
    d = best_ladder["vs_searched"]["accuracy"]
    verdict = {"best_ladder_rung": best_ladder["name"], "chosen_on": "holdout", "gain_points": 100 * d["mean"],
               "gain_ci95_points": [100 * d["low"], 100 * d["high"]] if d["low"] is not None else None,
               "target": "searched minus best rung on val/ >= 2 points, its 95% interval above zero",
               "target_met": d["mean"] >= 0.02 and bool(d["excludes_zero"]) and d["low"] > 0}
    total_s, gpus = time.perf_counter() - t_start, torch.cuda.device_count()
    budget_info = {**b, "data": label(source) + (" subset" if args.quick else ""),
                   "seeds": seeds, "space": Path(args.space).stem, "gpus_per_trial": args.gpus_per_trial,
                   "search_trials": 4 if args.quick else args.samples or load(args.space).search["samples"],
                   "ladder_rungs": len(rungs), **timing,
                   "search_s": search_s, "total_s": total_s,
                   "gpus": gpus, "search_gpu_hours": search_s * gpus / 3600, "total_gpu_hours": total_s * gpus / 3600}
    save(name, {"protocol": PROTOCOL, "budget": budget_info, "rows": rows, "verdict": verdict,
                "search_report": str(shown_path(out_dir))})
    md = table(rows, f"# Real photos: fastbook's ladder against the searched config\n\nBudget per run: "
                     f"{b['arch']} at {b['size']} px, {b['epochs']} epochs, batch {b['bs']}, {b['pipeline']} data "
                     f"path; seeds {seeds}.\n\nProtocol: chosen on a holdout (split=holdout, 20% of each class of "
                     f"train/; the search's trials and the ladder's best rung), then tested once on val/ by runs "
                     f"trained on all of train/. The difference column is paired: the same seed on both sides, its "
                     f"mean and 95% interval."
                     + (f" The ladder's rows are those trained at commit {rows[0]['reused_from_commit'][:7]} "
                        "(--reuse-ladder: same protocol, data, seeds and configs)." if "reused_from_commit" in rows[0]
                        else "") + f"\n\nMachine: {machine()}; search "
                     f"{search_s / 60:.0f} min, whole benchmark {total_s / 60:.0f} min"
                     + (f", {total_s * gpus / 3600:.2f} GPU-hours." if gpus else "."))
    ci_text = "" if verdict["gain_ci95_points"] is None else \
        f" (95% CI {verdict['gain_ci95_points'][0]:+.2f} to {verdict['gain_ci95_points'][1]:+.2f})"
    md += (f"\nSearched minus the best rung on the holdout ({best_ladder['name']}), on val/: "
           f"{verdict['gain_points']:+.2f} points{ci_text}; target (at least +2 points, interval above zero) "
           f"met: {verdict['target_met']}.\n"
           f"The search's report: `{shown_path(out_dir)}/report.md`.\n")
    (RESULTS / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
