"""What the search itself adds: TPE + ASHA against random search and against the default config.

python benchmarks/search_efficiency.py [--space small] [--samples 16] [--seeds 0 1 2] [--asha 4:2 2:3]
For each sampler seed, searches of the same space and number of trials: random search with every trial
trained to the end (`--searcher random --scheduler none`), and TPE + ASHA at each grace-period:reduction-
factor pair of --asha (default: the space's own, and an aggressive 2:3). The anytime curve is the best
final accuracy of any completed trial against the epochs consumed so far by all trials. The target:
TPE + ASHA reaches random search's final best with at most a third of random search's epochs. The
space's default config (its fixed keys, every other knob at the config's default) is trained once per
seed as the reference line. About 25 minutes on a 2-core CPU with the defaults.
Writes benchmarks/results/search_efficiency.{json,png} (search_efficiency-N-trials.* for other --samples,
--name NAME.* to keep an earlier run's results, e.g. when more seeds are added in a separate run).
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, ROOT, save

from search_spaces import load
from trainables.config import TrainConfig
from trainables.train import train
from tune.trials import Experiment


def run_search(space, samples, seed, searcher, scheduler, root: Path, extra, tag="") -> Path:
    name = f"{searcher}-{scheduler}{tag}-{seed}"
    cmd = [sys.executable, str(ROOT / "tune" / "run.py"), "--space", space, "--samples", str(samples),
           "--seed", str(seed), "--searcher", searcher, "--scheduler", scheduler, "--results", str(root),
           "--name", name, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"search {name} failed:\n{r.stderr[-3000:]}")
    return root / name


def grace_factor(text: str) -> str:
    """--asha's `4:3`, checked before the first search (run.py would refuse a bad one only after random search ran)."""
    g, _, f = text.partition(":")
    if not (g.isdigit() and f.isdigit() and int(g) >= 1 and int(f) >= 2):
        raise argparse.ArgumentTypeError(f"{text!r}: expected GRACE:FACTOR, a grace period of at least 1 and a "
                                         "reduction factor of at least 2, such as 4:3")
    return f"{int(g)}:{int(f)}"


def asha_args(setting: str) -> list[str]:
    """run.py's options for a GRACE:FACTOR setting."""
    grace, factor = setting.split(":")
    return ["--grace-period", grace, "--reduction-factor", factor]


def anytime(exp: Path) -> list[tuple[int, float | None]]:
    """[(epochs consumed, best completed accuracy so far)] in wall-clock order of every epoch's end.

    An epoch ends at its trial's start plus the trial's reported running time; a trial's accuracy counts
    once it has completed its schedule (Optuna's COMPLETE), never at an epoch where ASHA stopped it.
    """
    experiment = Experiment(exp)
    events = []
    for t in experiment.trials(experiment.study()):
        rows = t.history
        if not rows:
            continue
        start = rows[0]["timestamp"] - rows[0]["time_total_s"]
        for r in rows:
            last = r is rows[-1] and t.status == "completed"
            events.append((start + r["time_total_s"], r["accuracy"] if last else None))
    curve, best = [], None
    for n, (_, done) in enumerate(sorted(events, key=lambda e: e[0]), start=1):
        if done is not None:
            best = done if best is None else max(best, done)
        curve.append((n, best))
    return curve


def epochs_to_reach(curve, target: float) -> int | None:
    return next((e for e, b in curve if b is not None and b >= target - 1e-9), None)


def draw_curve(ax, curve, **style) -> None:
    """An anytime curve as steps, from the first completed trial on."""
    xs = [e for e, b in curve if b is not None]
    ys = [b for e, b in curve if b is not None]
    ax.step(xs, ys, where="post", alpha=0.8, **style)


RANDOM = "random search, no early stopping"


def plot(results: dict, default_acc: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = dict(zip(results, ["tab:gray", "tab:blue", "tab:green", "tab:purple"]))
    for method, per_seed in results.items():
        for i, curve in enumerate(per_seed):
            draw_curve(ax, curve, color=colours[method], label=method if i == 0 else None)
    ax.axhline(default_acc, color="tab:red", ls="--", label=f"default config ({default_acc:.3f})")
    ax.set(xlabel="epochs consumed by all trials", ylabel="best final validation accuracy so far",
           title="Anytime performance: one line per sampler seed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--space", default="small")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--name", help="results file name (default: search_efficiency[-N-trials])")
    p.add_argument("--asha", nargs="+", metavar="GRACE:FACTOR", type=grace_factor,
                   help="TPE + ASHA settings to compare (default: the space's own, and 2:3)")
    args = p.parse_args()
    space = load(args.space)
    own = f"{space.search['grace_period']}:{space.search['reduction_factor']}"
    settings = args.asha or list(dict.fromkeys([own, "2:3"]))
    methods = {"TPE + ASHA (grace {}, factor {})".format(*a.split(":")): asha_args(a) for a in settings}
    results = {RANDOM: [], **{m: [] for m in methods}}
    rows = []
    name = args.name or "search_efficiency" + ("" if args.samples == 16 else f"-{args.samples}-trials")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rnd = anytime(run_search(args.space, args.samples, seed, "random", "none", Path(tmp), []))
            results[RANDOM].append(rnd)
            target, total = rnd[-1][1], rnd[-1][0]
            for k, (method, asha) in enumerate(methods.items()):
                tpe = anytime(run_search(args.space, args.samples, seed, "tpe", "asha", Path(tmp), asha, tag=str(k)))
                results[method].append(tpe)
                reach = epochs_to_reach(tpe, target)
                rows.append({"seed": seed, "method": method, "random_best": target, "random_epochs": total,
                             "tpe_asha_best": tpe[-1][1], "tpe_asha_epochs": tpe[-1][0],
                             "tpe_asha_epochs_to_random_best": reach,
                             "fraction_of_random_epochs": None if reach is None else reach / total})
                print(json.dumps(rows[-1]), flush=True)
            # an interrupted run keeps the seeds it finished (hours of CPU at 32 trials)
            save(name, payload(args, space, methods, rows, results, None, name))
    default_cfg = TrainConfig.from_dict({**space.fixed, "epochs": space.search["max_epochs"]})
    default_accs = [train(default_cfg.replace(seed=42 + s, tta=False)).accuracy for s in args.seeds]
    final = payload(args, space, methods, rows, results, default_accs, name)
    for method, m in final["summary"].items():
        print(f"{method}: reached random search's final best in {m['seeds_reaching_random_best']} seeds, using "
              f"{', '.join('never' if f is None else f'{f:.0%}' for f in m['fractions_of_random_epochs'])} "
              "of its epochs")
    plot(results, statistics.mean(default_accs), RESULTS / f"{name}.png")
    save(name, final)


def mean_of(values):
    """The mean of the searches that completed a trial (None where none did)."""
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def payload(args, space, methods, rows, results, default_accs, name) -> dict:
    summary = {}
    for method in methods:
        fractions = [r["fraction_of_random_epochs"] for r in rows if r["method"] == method]
        reached = [f for f in fractions if f is not None]
        summary[method] = {
            "fractions_of_random_epochs": fractions,
            "seeds_reaching_random_best": f"{len(reached)} of {len(fractions)}",
            "seeds_within_a_third": sum(f <= 1 / 3 for f in reached),
            "mean_final_best": mean_of(r["tpe_asha_best"] for r in rows if r["method"] == method),
            "mean_epochs": statistics.mean(r["tpe_asha_epochs"] for r in rows if r["method"] == method)}
    return {
        "space": Path(args.space).stem, "samples": args.samples, "max_epochs": space.search["max_epochs"],
        "seeds": sorted({r["seed"] for r in rows}), "complete": default_accs is not None,
        "summary": summary, "per_seed": rows,
        "random_mean_final_best": mean_of(c[-1][1] for c in results[RANDOM]),
        "default_config_accuracy": default_accs,
        "target": "TPE + ASHA reaches random search's final best within 1/3 of its epochs",
        "curves": results, "plot": f"{name}.png" if default_accs is not None else None}


if __name__ == "__main__":
    main()
