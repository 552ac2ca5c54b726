"""What the search finds on real photos, against fastbook chapter 7's hand-made ladder at the same budget.

python benchmarks/real_quality.py [--quick] [--data PATH] [--seeds 1 2 3] [--space real_cpu] [--gpus-per-trial G]
1. the ladder: baseline, + normalization, + progressive resizing, + label smoothing, + mixup (each rung
   adds to the one before, as in the chapter), every rung trained with the same seeds;
2. a search (`tune/run.py --space real_cpu`) on the same budget per trial, its best config exported and
   retrained with the same seeds;
3. mean ± std accuracy with and without TTA: benchmarks/results/real_quality.{json,md}, and the search's
   report, leaderboard and best config in benchmarks/results/real_quality_search/.
About 40 minutes on a 2-core CPU; --quick (a subset, 3 epochs, 4 trials) runs in a few minutes.
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


def summarize(name: str, kind: str, runs: list[dict], config: dict) -> dict:
    acc = [r["accuracy"] for r in runs]
    tta = [r["accuracy_tta"] for r in runs]
    return {"name": name, "kind": kind, "accuracy_mean": statistics.mean(acc),
            "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "accuracy_tta_mean": statistics.mean(tta),
            "accuracy_tta_std": statistics.stdev(tta) if len(tta) > 1 else 0.0,
            "seeds": [r["seed"] for r in runs], "accuracy": acc, "accuracy_tta": tta, "config": config}


def train_seeds(cfg: TrainConfig, seeds) -> list[dict]:
    out = []
    for s in seeds:
        t0 = time.perf_counter()
        r = train(cfg.replace(seed=s, tta=True))
        out.append({"seed": s, "accuracy": r.accuracy, "accuracy_tta": r.accuracy_tta,
                    "seconds": time.perf_counter() - t0})
        print(f"    seed {s}: accuracy {r.accuracy:.4f}, with TTA {r.accuracy_tta:.4f} "
              f"({out[-1]['seconds']:.0f} s)", flush=True)
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


def portable(text: str, data: str, tmp: str, name: str) -> str:
    """This machine's paths out of what is committed: the data folder (an absolute path) by `name`, the
    temporary search by its results/ name."""
    return text.replace(str(Path(tmp) / "results"), "results").replace(data, name)


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| config | kind | accuracy | accuracy with TTA | seeds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['kind']} | {100 * r['accuracy_mean']:.2f}% ± {100 * r['accuracy_std']:.2f} "
                     f"| {100 * r['accuracy_tta_mean']:.2f}% ± {100 * r['accuracy_tta_std']:.2f} "
                     f"| {', '.join(map(str, r['seeds']))} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a subset, 3 epochs, 2 seeds, 4 trials: a few minutes")
    p.add_argument("--data", help="Imagenette-layout folder (default: the real photos beside the project)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of every rung and of the searched config")
    p.add_argument("--space", default="real_cpu", help="the search space; its fixed keys are every run's budget")
    p.add_argument("--gpus-per-trial", type=float, help="passed to the search (e.g. 0.25: four trials per GPU)")
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
        rows, cfg = [], base
        for name, change in ladder(b["size"]):
            cfg = cfg.replace(**change)
            print(f"ladder: {name}", flush=True)
            rows.append(summarize(name, "ladder", train_seeds(cfg, seeds), cfg.to_dict()))

        print(f"search: tune/run.py --space {args.space}", flush=True)
        extra = [] if args.gpus_per_trial is None else ["--gpus-per-trial", str(args.gpus_per_trial)]
        best, search_s = search(args.space, data, args.quick, Path(tmp) / "results", extra)
        searched = TrainConfig.from_dict({**best["config"], "epochs": b["epochs"]})
        print(f"searched config (trial {best['provenance']['trial']}): {best['provenance']['searched']}", flush=True)
        rows.append(summarize("searched (TPE + ASHA)", "searched", train_seeds(searched, seeds), searched.to_dict()))
        for r in rows:
            r["config"]["data"] = short

        name = "real_quality" + ("" if args.space == "real_cpu" else f"-{Path(args.space).stem}") + \
            ("_quick" if args.quick else "")
        out_dir = RESULTS / f"{name}_search"
        shutil.rmtree(out_dir, ignore_errors=True)
        exp = Path(tmp) / "results" / "real_quality"
        out_dir.mkdir(parents=True)
        for f in ("report.md", "leaderboard.csv", "best_config.json"):
            (out_dir / f).write_text(portable((exp / f).read_text(), data, tmp, short))
        shutil.copytree(exp / "report", out_dir / "report")

    best_ladder = max((r for r in rows if r["kind"] == "ladder"), key=lambda r: r["accuracy_mean"])
    s = rows[-1]
    gain = s["accuracy_mean"] - best_ladder["accuracy_mean"]
    spread = max(s["accuracy_std"], best_ladder["accuracy_std"])
    verdict = {"best_ladder_rung": best_ladder["name"], "gain_points": 100 * gain, "spread_points": 100 * spread,
               "target_met": gain >= 0.02 and gain > spread}
    total_s, gpus = time.perf_counter() - t_start, torch.cuda.device_count()
    budget_info = {**b, "data": label(source) + (" subset" if args.quick else ""),
                   "seeds": seeds, "space": Path(args.space).stem, "gpus_per_trial": args.gpus_per_trial,
                   "search_trials": 4 if args.quick else load(args.space).search["samples"],
                   "search_s": search_s, "total_s": total_s,
                   "gpus": gpus, "search_gpu_hours": search_s * gpus / 3600, "total_gpu_hours": total_s * gpus / 3600}
    save(name, {"budget": budget_info, "rows": rows, "verdict": verdict,
                "search_report": str(out_dir.relative_to(ROOT))})
    md = table(rows, f"# Real photos: fastbook's ladder against the searched config\n\nBudget per run: "
                     f"{b['arch']} at {b['size']} px, {b['epochs']} epochs, batch {b['bs']}, {b['pipeline']} data "
                     f"path; seeds {seeds}; validation on val/.\n\nMachine: {machine()}; search "
                     f"{search_s / 60:.0f} min, whole benchmark {total_s / 60:.0f} min"
                     + (f", {total_s * gpus / 3600:.2f} GPU-hours." if gpus else "."))
    md += (f"\nSearched minus best rung ({best_ladder['name']}): {100 * gain:+.2f} points "
           f"(seed spread {100 * spread:.2f}); target met: {verdict['target_met']}.\n"
           f"The search's report: `{out_dir.relative_to(ROOT)}/report.md`.\n")
    (RESULTS / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
