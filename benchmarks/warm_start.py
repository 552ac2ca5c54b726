"""Does a warm start (--warm-start) save a search's epochs? python benchmarks/warm_start.py [--seeds 0 1 2]

For each sampler seed and transfer: a source search (one the user already has: its cost is reported,
not counted), then the target search twice with the same seed, cold and warm-started from the source.
Both transfers are ones a user makes, on real photos (a stratified subset: 500 training and 30 val/
images a class) with `real_cpu`'s space cut to 12 trials of at most 6 epochs (grace period 3). Trials
train on 100 images a class and are chosen on the other 400 (holdout_frac 0.8: 4,000 images, one
standard error about 0.8 points at 40%). A search's final best is the largest of its trials' scores, so
the noisier each score, the more the bar sits above what its best config truly reaches: with the
default 20% of 100 a class (200 images, 3.5 points), and still with 1,000 images (1.6 points), a config
truly as good matched it only by luck.
  same-photos: the same photos at a larger size, 64 px -> 96 px;
  generated-to-real: the default generated data (at the subset's size) -> the real photos at 64 px, a
    source whose best config need not be the target's (what a misleading source does).
The anytime curve counts a trial's accuracy once it completes (benchmarks/search_efficiency.py); each
row also says how the source's best configs, which the warm search runs first, did there.
Target: in every seed the warm search reaches the cold search's final best with at most a third of the
cold search's epochs, and on average ends no worse. Each seed is saved as it finishes (about 8 minutes a
seed per transfer on the 2-core CPU, 49 minutes in all): benchmarks/results/warm_start.{json,png}, or
--name NAME.{json,png}.
"""
import argparse
import statistics
import tempfile
from pathlib import Path

from common import REAL_DATA, RESULTS, real_subset, save
from search_efficiency import anytime, draw_curve, epochs_to_reach, run_search

from tune.trials import Experiment

SAMPLES, BUDGET = 12, ["--max-epochs", "6", "--grace-period", "3", "--set", "holdout_frac=0.8"]
TRAIN, VAL = 500, 30  # images a class
TRANSFERS = {
    "same-photos": ("real photos at 64 px -> the same at 96 px", ["--set", "size=64"], ["--set", "size=96"]),
    "generated-to-real": ("generated data -> real photos, both at 64 px", ["--set", "size=64"], ["--set", "size=64"]),
}


def search(name: str, data: str, seed: int, root: Path, extra: list) -> Path:
    """TPE + ASHA on real_cpu's space at BUDGET (search_efficiency's runner), named by `name`."""
    return run_search("real_cpu", SAMPLES, seed, "tpe", "asha", root, ["--data", data, *BUDGET, *extra], tag=f"-{name}")


def tried_first(exp: Path) -> list[dict]:
    """How the source's best configs, which a warm search runs first (tune/warm.py), did there."""
    e = Experiment(exp)
    study = e.study()
    first = {t.user_attrs["ray_trial_id"]: t.user_attrs["source_trial"] for t in study.trials
             if "first_from" in t.user_attrs}
    return [{"source_trial": first[t.trial_id], "status": t.status, "epochs": t.epochs,
             "accuracy": t.value("accuracy")} for t in e.trials(study) if t.trial_id in first]


def summarize(rows: list[dict]) -> dict:
    out = {}
    for transfer in TRANSFERS:
        mine = [r for r in rows if r["transfer"] == transfer]
        if not mine:
            continue
        fr = [r["warm_fraction_of_cold_epochs"] for r in mine]
        out[transfer] = {
            "seeds": [r["seed"] for r in mine], "warm_fractions_of_cold_epochs": fr,
            "seeds_within_a_third": sum(f is not None and f <= 1 / 3 for f in fr),
            "cold_final_best_mean": statistics.mean(r["cold_final_best"] for r in mine),
            "warm_final_best_mean": statistics.mean(r["warm_final_best"] for r in mine),
            "source_epochs_mean": statistics.mean(r["source_epochs"] for r in mine),
            "target_met": all(f is not None and f <= 1 / 3 for f in fr) and statistics.mean(
                r["warm_final_best"] for r in mine) >= statistics.mean(r["cold_final_best"] for r in mine)}
    return out


def plot(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(curves), figsize=(6.5 * len(curves), 4.5), squeeze=False)
    for ax, (transfer, runs) in zip(axes[0], curves.items()):
        for i, (kind, curve) in enumerate(runs):
            draw_curve(ax, curve, color="tab:blue" if kind == "cold" else "tab:orange", label=kind if i < 2 else None)
        ax.set(xlabel="epochs of the target search", ylabel="best completed accuracy (holdout)",
               title=TRANSFERS[transfer][0])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--transfers", nargs="+", choices=list(TRANSFERS), default=list(TRANSFERS))
    p.add_argument("--name", default="warm_start", help="the results' name under benchmarks/results/")
    args = p.parse_args()
    rows, curves = [], {t: [] for t in args.transfers}
    with tempfile.TemporaryDirectory() as tmp:
        real = str(real_subset(Path(tmp) / "real", TRAIN, VAL, src=REAL_DATA))
        generated = f"synthetic:train={TRAIN},val={VAL},seed=41"
        for seed in args.seeds:
            for transfer in args.transfers:
                _, src_extra, dst_extra = TRANSFERS[transfer]
                root = Path(tmp) / f"{transfer}-{seed}"
                source = search("source", generated if transfer == "generated-to-real" else real, seed, root,
                                src_extra)
                cold = search("cold", real, seed, root, dst_extra)
                warm = search("warm", real, seed, root, [*dst_extra, "--warm-start", str(source)])
                s, c, w = anytime(source), anytime(cold), anytime(warm)
                target = c[-1][1]
                reach = epochs_to_reach(w, target)
                rows.append({"seed": seed, "transfer": transfer, "source_epochs": s[-1][0], "source_best": s[-1][1],
                             "cold_epochs": c[-1][0], "cold_final_best": target, "warm_epochs": w[-1][0],
                             "warm_final_best": w[-1][1], "warm_epochs_to_cold_best": reach,
                             "warm_fraction_of_cold_epochs": None if reach is None else reach / c[-1][0],
                             "tried_first": tried_first(warm)})
                curves[transfer] += [("cold", c), ("warm", w)]
                print(rows[-1], flush=True)
                save(args.name, {"subset": f"real photos, {TRAIN} train + {VAL} val/ images a class",
                                    "budget": " ".join(["--samples", str(SAMPLES), *BUDGET]), "space": "real_cpu",
                                    "transfers": {t: TRANSFERS[t][0] for t in args.transfers},
                                    "rows": rows, "summary": summarize(rows)})
                plot({t: v for t, v in curves.items() if v}, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    main()
