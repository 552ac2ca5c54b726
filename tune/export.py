"""Export what a search found: python tune/export.py results/<name> [--metric M] [--scope last|all]

Reads only the experiment folder (through tune/trials.py), so it works on a finished, interrupted or
resumed search, with or without Ray running. Writes best_config.json (every config key plus provenance,
ready for tune/final.py), leaderboard.csv (one row per trial) and report.md with plots (report/*.png).
"""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a clone without installing

from trainables.files import atomic_file, write_json  # noqa: E402
from tune.cli import Parser, UsageError, quiet, run  # noqa: E402
from tune.trials import EXPORT_FILES, Experiment, Trial, upload  # noqa: E402


class ExportError(UsageError):
    pass


def pick_best(trials: list[Trial], metric: str, scope: str) -> tuple[Trial, str]:
    """The best completed trial; with none completed, the best of those that trained longest."""
    scored = [t for t in trials if t.value(metric, scope) is not None]
    if not scored:
        raise ExportError(f"no trial reported '{metric}' yet" + (
            f" ({sum(t.status == 'errored' for t in trials)} of {len(trials)} errored)" if trials else
            " (the experiment has no trials)"))
    done = [t for t in scored if t.status == "completed"]
    if done:
        return max(done, key=lambda t: t.value(metric, scope)), "completed"
    longest = max(t.epochs for t in scored)
    pool = [t for t in scored if t.epochs == longest]
    return max(pool, key=lambda t: t.value(metric, scope)), f"no trial completed; best of those at {longest} epochs"


def chosen_on(config: dict, settings: dict | None) -> dict:
    """Which images the trials were scored on: the split, the holdout's draw, and the fingerprint of the
    files (names and sizes) the search read, so a final run can tell whether its data is the same."""
    split = config.get("split", "val")
    out = {"data": config.get("data"), "split": split}
    if split == "holdout":
        out.update(holdout_frac=config.get("holdout_frac"), holdout_seed=config.get("holdout_seed"))
    prints = ((settings or {}).get("datasets") or {}).get(config.get("data")) or {}
    if split in prints:
        out["fingerprint"] = prints[split]
    return out


def write_leaderboard(trials: list[Trial], path: Path, metric: str = "accuracy") -> None:
    keys = sorted({k for t in trials for k in t.params})
    rows = sorted(trials, key=lambda t: -(t.value(metric, "last") or -1))

    def build(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["trial_id", "status", "epochs", "accuracy", "best_accuracy", "accuracy_tta",
                        "train_s", *keys, "error"])
            for t in rows:
                w.writerow([t.trial_id, t.status, t.epochs, t.value("accuracy", "last"), t.value("accuracy", "all"),
                            t.value("accuracy_tta", "last"), t.train_s, *(t.params.get(k) for k in keys),
                            t.error or ""])
    atomic_file(path, build)


def export(exp: Experiment, metric: str = "accuracy", scope: str = "last") -> dict:
    """Writes the export into the experiment's home folder, and mirrors it where the trials are."""
    from trainables.provenance import git_commit, versions
    from tune.report import kinds_of, write_report
    from tune.warm import source_names
    if not exp.exists():
        raise ExportError(f"no experiment at {exp.location}")
    experiment = exp.home
    study = exp.study()
    trials = exp.trials(study)
    write_leaderboard(trials, experiment / "leaderboard.csv")  # even with no winner: it lists the errors
    best, how = pick_best(trials, metric, scope)
    counts = {s: sum(t.status == s for t in trials) for s in ("completed", "pruned", "errored", "unfinished")}
    provenance = {
        "experiment": experiment.name, "trial": best.trial_id, "metric": metric, "scope": scope,
        "value": best.value(metric, scope), "chosen_on": chosen_on(best.config, exp.settings()),
        "epochs_trained": best.epochs, "status": best.status,
        "chosen_from": how, "searched": best.params, "trials": counts,
        "warm_start": list(source_names((exp.settings() or {}).get("warm_start") or []).values()),
        "versions": versions(), "git_commit": git_commit(), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(experiment / "best_config.json", {"config": best.config, "provenance": provenance})
    write_report(experiment, trials, best, provenance, study, kinds_of(exp.settings()))
    if experiment != Path(exp.path):  # the trials are elsewhere (--storage): mirror it there
        upload(experiment, exp.fs, exp.path, EXPORT_FILES)
    return {"best": best, "provenance": provenance, "trials": trials}


def print_summary(summary: dict, experiment: Path) -> None:
    p, best = summary["provenance"], summary["best"]
    counts = ", ".join(f"{n} {s}" for s, n in p["trials"].items() if n)
    print(f"\n{sum(p['trials'].values())} trials ({counts}); best: {best.trial_id} with {p['metric']} "
          f"{p['value']:.4f} after {p['epochs_trained']} epochs ({p['chosen_from']})")
    for k, v in sorted(best.params.items()):
        print(f"  {k:<16} {v:.4g}" if isinstance(v, float) else f"  {k:<16} {v}")
    print(f"wrote {experiment}/best_config.json, leaderboard.csv and report.md\n"
          f"train it longer: python tune/final.py {experiment}/best_config.json --epochs N\n"
          f"compare trials:  tensorboard --logdir {experiment}", flush=True)


def main(argv=None):
    quiet()
    p = Parser(prog="tune/export.py", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", help="results/<name>, or where --storage put it (s3://bucket/prefix/<name>)")
    p.add_argument("--results", default="results",
                   help="for a URI: the local folder the export goes in, as <results>/<name> (default results/)")
    p.add_argument("--metric", default="accuracy", choices=("accuracy", "accuracy_tta"))
    p.add_argument("--scope", default="last", choices=("last", "all"),
                   help="last: the accuracy at the end of training; all: the best accuracy at any epoch")
    args = p.parse_args(argv)
    if "://" in args.experiment:
        name = args.experiment.rstrip("/").rsplit("/", 1)[-1]
        home = Path(args.results).expanduser().resolve() / name
        home.mkdir(parents=True, exist_ok=True)
        exp = Experiment(args.experiment.rstrip("/"), home=home)
    else:
        exp = Experiment(Path(args.experiment).expanduser().resolve())
    print_summary(export(exp, args.metric, args.scope), exp.home)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
