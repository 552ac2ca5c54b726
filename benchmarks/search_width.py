"""Does the search stay guided when it is wide? TPE + ASHA, random + ASHA and random search at 2, 8, 16 at once.

python benchmarks/search_width.py [--space small] [--samples 16] [--widths 2 8 16] [--seeds 0 1 2]
                                  [--methods tpe random] [--set KEY=VALUE ...] [--asha GRACE:FACTOR]
                                  [--name NAME]
Each search is `tune/run.py` as a user runs it, with real Ray, Optuna and fastai, on a local Ray given
W logical CPUs (RAY_OVERRIDE_RESOURCES, Ray's own switch) and one per trial, so W trials run at once on
this machine's cores: slower per trial, but epochs are what count here. Random search (every trial to
the end) depends on no width: its configs and their accuracies are the same at any width, so it runs
once per seed and sets the bar. Per width and seed: the epochs TPE + ASHA and random + ASHA need to
reach random search's final best (as a fraction of random search's epochs; the anytime curve of
benchmarks/search_efficiency.py), their final best, and how many of TPE's trials were guided (chosen by
the model rather than at random; the study's `guided` attribute). Targets: at 16 at once TPE + ASHA
reaches random search's final best within half of its epochs, and it never ends below random + ASHA.
Saves benchmarks/results/search_width.json (or NAME.json) after every search; the rows this run does not
make (other seeds, widths, or methods left out with --methods) are kept from the saved file, each row
with the date, commit and machine of its own run, so a long run can be split into parts; a file of
another space, number of trials, --set or --asha is refused, not written over. --set passes run.py's
--set to every search (a quieter protocol: `--set holdout_frac=0.5` scores trials on 1,500 images rather
than 600); --asha gives both ASHA methods another grace period and reduction factor than the space's own.
A seed the file already has a row of takes random search's final best from it instead of running it
again, so that all of its rows are measured against one bar (start a new NAME to redo it); only on the
machine that measured it, as CPU models round differently.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, save
from search_efficiency import anytime, asha_args, epochs_to_reach, grace_factor

from tune.trials import Experiment

NAME = "search_width"


def search(space, samples, seed, searcher, scheduler, width, root: Path, sets=(), asha=None) -> tuple[Path, float]:
    name = f"{searcher}-{scheduler}-w{width}-s{seed}"
    cmd = [sys.executable, str(ROOT / "tune" / "run.py"), "--space", space, "--samples", str(samples),
           *(a for kv in sets for a in ("--set", kv)),
           *(asha_args(asha) if asha else ()),
           "--seed", str(seed), "--searcher", searcher, "--scheduler", scheduler, "--concurrent", str(width),
           "--cpus-per-trial", "1", "--gpus-per-trial", "0", "--results", str(root), "--name", name]
    env = {**os.environ, "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": max(width, 2)})}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"search {name} failed:\n{r.stderr[-3000:]}")
    return root / name, time.perf_counter() - t0


def guided(exp: Path) -> int:
    return sum(bool(t.user_attrs.get("guided")) for t in Experiment(exp).study().trials)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--space", default="small")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--widths", type=int, nargs="+", default=[2, 8, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=["tpe", "random"], default=["tpe", "random"],
                   help="the searchers run with ASHA (the others' rows are kept)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help="run.py's --set for every search, such as holdout_frac=0.5")
    p.add_argument("--asha", metavar="GRACE:FACTOR", type=grace_factor,
                   help="ASHA's grace period and reduction factor (default: the space's)")
    p.add_argument("--name", default=NAME, help="the results' name, to keep an earlier run's")
    args = p.parse_args()
    rows, saved = [], saved_rows(args)
    t_all = time.perf_counter()
    from trainables.provenance import git_commit, machine
    run = {"date": time.strftime("%Y-%m-%d"), "git_commit": git_commit(), "machine": machine()}
    other_cpu(saved, args.seeds, run["machine"], args.name)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            # the seed's saved rows were measured against its random search: reuse that bar
            if kept := [r for r in saved if r["seed"] == seed]:
                target, total = kept[0]["random_best"], kept[0]["random_epochs"]
                print(f"seed {seed}: random search {target:.4f} after {total} epochs (saved)", flush=True)
            else:
                exp, wall = search(args.space, args.samples, seed, "random", "none", 2, Path(tmp), args.sets)
                rnd = anytime(exp)
                target, total = rnd[-1][1], rnd[-1][0]
                print(f"seed {seed}: random search {target:.4f} after {total} epochs ({wall:.0f} s)", flush=True)
            for width in args.widths:
                for searcher in args.methods:
                    exp, wall = search(args.space, args.samples, seed, searcher, "asha", width, Path(tmp), args.sets,
                                       args.asha)
                    curve = anytime(exp)
                    reach = epochs_to_reach(curve, target)
                    rows.append({"seed": seed, "width": width, "method": f"{searcher} + ASHA",
                                 "random_best": target, "random_epochs": total, "final_best": curve[-1][1],
                                 "epochs": curve[-1][0], "epochs_to_random_best": reach,
                                 "fraction_of_random_epochs": None if reach is None else reach / total,
                                 "guided_trials": guided(exp), "wall_s": wall, "run": run})
                    print(json.dumps(rows[-1]), flush=True)
                    save(args.name, payload(args, merged(saved, rows), time.perf_counter() - t_all))


def other_cpu(saved: list, seeds: list, here: str, name: str) -> None:
    """Refuses to measure against a bar from another machine: a CPU run is repeatable on one CPU model, but
    its floating point differs between models, so a seed's random search can end elsewhere."""
    for seed in seeds:
        bar = next((r["run"].get("machine") for r in saved if r["seed"] == seed), here)
        if bar != here:
            sys.exit(f"seed {seed}'s random search in {name}.json ran on {bar or 'a machine it does not name'}, "
                     f"this is {here}: its best can differ here (CPU models round differently), so measure "
                     "against a bar of this machine: give another --name")


def key(row) -> tuple:
    return row["seed"], row["width"], row["method"]


def saved_rows(args) -> list:
    """The saved rows of a run of the same space and trials, each with the date and commit of its run."""
    f = RESULTS / f"{args.name}.json"
    if not f.is_file():
        return []
    old = json.loads(f.read_text())
    # another protocol's rows would be written over
    if (old["space"], old["samples"], old.get("set", []), old.get("asha")) != (args.space, args.samples, args.sets,
                                                                              args.asha):
        sys.exit(f"{f} holds a search of `{old['space']}` with {old['samples']} trials, --set {old.get('set', [])} "
                 f"and --asha {old.get('asha')}: give this one another --name")
    return [{**r, "run": r.get("run") or {"date": old["date"], "git_commit": old["git_commit"]}}
            for r in old["per_seed"]]


def merged(saved: list, rows: list) -> list:
    """This run's rows in place of the saved ones they redo (the others stay, so a run cut short loses
    nothing), in the order of seed, width and method."""
    new = {key(r) for r in rows}
    return sorted([r for r in saved if key(r) not in new] + rows, key=key)


def payload(args, rows, wall) -> dict:
    summary, widths = {}, sorted({r["width"] for r in rows})
    for width in widths:
        for method in ("tpe + ASHA", "random + ASHA"):
            mine = [r for r in rows if r["width"] == width and r["method"] == method]
            if not mine:
                continue
            fractions = [r["fraction_of_random_epochs"] for r in mine]
            summary[f"{method} at {width}"] = {
                "fractions_of_random_epochs": fractions,
                "seeds_within_half": sum(f is not None and f <= 0.5 for f in fractions),
                "mean_final_best": statistics.mean(r["final_best"] for r in mine if r["final_best"] is not None),
                "guided_trials": [r["guided_trials"] for r in mine],
                "mean_wall_s": statistics.mean(r["wall_s"] for r in mine)}
    return {"space": args.space, "samples": args.samples, "set": args.sets, "asha": args.asha, "widths": widths,
            "seeds": sorted({r["seed"] for r in rows}), "summary": summary, "per_seed": rows,
            "benchmark_wall_s": wall, "benchmark_wall_s_covers": "the seeds of this run only",
            "targets": "at 16 at once TPE + ASHA reaches random search's final best within half of its epochs; "
                       "it never ends below random + ASHA at any width"}


if __name__ == "__main__":
    main()
