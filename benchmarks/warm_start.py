"""Does a warm start (--warm-start) save a search's epochs? python benchmarks/warm_start.py [--seeds 0 1 2]

For each sampler seed: a source search (one the user already has: its cost is reported, not counted),
then for each transfer the target search twice with the same seed, cold and warm-started from the
source. The source is drawn with another sampler seed (100 more): with the targets' own, the cold
search's random start-up configs would be the source's first ones, so it would share the source's luck.
On real photos (a stratified subset: 500 training and 30 val/ images a class), `real_cpu`'s space. The
source is that space's own search, 32 trials, cut to at most 6 epochs (grace period 3) at 64 px; the
targets have 12 trials. Trials train on 100 images a class and are chosen on the other 400
(holdout_frac 0.8: 4,000 images, one standard error about 0.8 points at 40%). Transfers, each one a user
makes, both from the same source search:
  more-epochs: the same photos at a larger budget: 64 px, 6 -> 10 epochs (grace period 4, the space's own);
  larger-size: the real photos at one size into another, 64 px -> 96 px (as from imagenette-160 to -320);
  generated-to-real (with --transfers): the default generated data into the real photos at 64 px, its own
    source: a source whose best config need not be the target's (what a misleading source does).
A search's final best is the largest of its trials' scores, so a warm search meets the target only where
a config it runs early scores at or above the best of the cold search's 12 trials: the source is the
space's own search of 32 so that the configs it hands on are the best of more trials than that.
The anytime curve counts a trial's accuracy once it completes (benchmarks/search_efficiency.py); each
row also says how the source's best configs, which the warm search runs first, did there.
Target: in every seed the warm search reaches the cold search's final best with at most a third of the
cold search's epochs, and on average it ends no worse. Each transfer is saved as it finishes (about 19
minutes a seed on the 2-core CPU, 56 in all): benchmarks/results/warm_start.{json,png}, or --name NAME.{json,png}.
"""
import argparse
import statistics
import tempfile
from pathlib import Path

from common import REAL_DATA, RESULTS, real_subset, save
from search_efficiency import anytime, draw_curve, epochs_to_reach, run_search

from tune.trials import Experiment

SOURCE_SAMPLES, TARGET_SAMPLES = 32, 12
SOURCE_SEED = 100   # added to a target's sampler seed: the source draws its own configs
HOLDOUT = ["--set", "holdout_frac=0.8"]
SHORT = ["--max-epochs", "6", "--grace-period", "3"]
SOURCE = [*SHORT, "--set", "size=64"]   # every source search's budget, whatever its data
TRAIN, VAL = 500, 30  # images a class
# name: (what it is, source data, target flags); the target is always the real photos
TRANSFERS = {
    "more-epochs": ("real photos at 64 px, 6 -> 10 epochs", "real",
                    ["--max-epochs", "10", "--grace-period", "4", "--set", "size=64"]),
    "larger-size": ("real photos at 64 px -> 96 px", "real", [*SHORT, "--set", "size=96"]),
    "generated-to-real": ("generated data -> real photos, both at 64 px", "generated", SOURCE),
}
DEFAULT = ["more-epochs", "larger-size"]


def search(name: str, samples: int, data: str, seed: int, root: Path, extra: list) -> Path:
    """TPE + ASHA on real_cpu's space (search_efficiency's runner), named by `name`."""
    return run_search("real_cpu", samples, seed, "tpe", "asha", root, ["--data", data, *HOLDOUT, *extra],
                      tag=f"-{name}")


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
    p.add_argument("--transfers", nargs="+", choices=list(TRANSFERS), default=DEFAULT)
    p.add_argument("--name", default="warm_start", help="the results' name under benchmarks/results/")
    args = p.parse_args()
    rows, curves = [], {t: [] for t in args.transfers}
    with tempfile.TemporaryDirectory() as tmp:
        data = {"real": str(real_subset(Path(tmp) / "real", TRAIN, VAL, src=REAL_DATA)),
                "generated": f"synthetic:train={TRAIN},val={VAL},seed=41"}
        for seed in args.seeds:
            root, sources = Path(tmp) / f"seed-{seed}", {}
            for transfer in args.transfers:
                _, src_data, dst_extra = TRANSFERS[transfer]
                if src_data not in sources:   # transfers from the same photos share one source search
                    sources[src_data] = search(f"source-{src_data}", SOURCE_SAMPLES, data[src_data],
                                               SOURCE_SEED + seed, root, SOURCE)
                source = sources[src_data]
                cold = search(f"cold-{transfer}", TARGET_SAMPLES, data["real"], seed, root, dst_extra)
                warm = search(f"warm-{transfer}", TARGET_SAMPLES, data["real"], seed, root,
                              [*dst_extra, "--warm-start", str(source)])
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
                                 "source": " ".join(["--samples", str(SOURCE_SAMPLES), *HOLDOUT, *SOURCE,
                                                     f"(sampler seed: the target's + {SOURCE_SEED})"]),
                                 "target": " ".join(["--samples", str(TARGET_SAMPLES), *HOLDOUT]),
                                 "space": "real_cpu",
                                 "transfers": {t: {"what": TRANSFERS[t][0], "source data": TRANSFERS[t][1],
                                                   "target": " ".join(TRANSFERS[t][2])} for t in args.transfers},
                                 "rows": rows, "summary": summarize(rows)})
                plot({t: v for t, v in curves.items() if v}, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    main()
