"""Export what a search found: python tune/export.py results/<name> [--metric M] [--scope last|all]

Reads only the experiment folder (trials' params.json and result.json, the Optuna study), so it works on
a finished, interrupted or resumed search, with or without Ray running. Writes best_config.json (every
config key plus provenance, ready for tune/final.py), leaderboard.csv (one row per trial) and report.md
with plots (report/*.png).
"""
from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a clone without installing

from tune.cli import Parser, UsageError, quiet, run, write_json  # noqa: E402

STATUS_OF_OPTUNA = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "errored"}


class ExportError(UsageError):
    pass


@dataclass
class Trial:
    trial_id: str
    config: dict                     # every config key, defaults filled in
    params: dict                     # the values the searcher chose
    history: list = field(default_factory=list)   # one row per epoch, as reported
    status: str = "unfinished"       # completed | pruned | errored | unfinished
    error: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.history)

    def value(self, metric: str, scope: str):
        vals = [h[metric] for h in self.history if h.get(metric) is not None]
        if not vals:
            return None
        return max(vals) if scope == "all" else (self.history[-1].get(metric))

    @property
    def train_s(self) -> float | None:
        return self.history[-1].get("time_total_s") if self.history else None


def _results(folder: Path) -> list:
    rows, seen = [], set()
    f = folder / "result.json"
    if not f.is_file():
        return rows
    for line in f.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if "epoch" in r and r["epoch"] not in seen:  # a resumed trial may repeat an epoch: keep the first
            seen.add(r["epoch"])
            rows.append(r)
    return sorted(rows, key=lambda r: r["epoch"])


def load_study(experiment: Path):
    """The search's Optuna study, or None for an experiment without one."""
    db = experiment / "optuna.db"
    if not db.is_file():
        return None
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    names = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=experiment.name if experiment.name in names else names[0],
                             storage=storage) if names else None


def load_trials(experiment: Path, study=None) -> list[Trial]:
    from trainables.config import ConfigError, TrainConfig
    from search_spaces import parse
    experiment = Path(experiment)
    if not experiment.is_dir():
        raise ExportError(f"no experiment folder at {experiment}")
    settings = json.loads((experiment / "search.json").read_text()) if (experiment / "search.json").is_file() else {}
    searched = set(parse(settings["space"], settings["space_name"]).params) if settings else set()
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in (study.trials if study else [])
              if "ray_trial_id" in t.user_attrs}
    trials = []
    for params_file in sorted(experiment.glob("*/params.json")):
        folder = params_file.parent
        raw = json.loads(params_file.read_text())
        try:
            config = TrainConfig.from_dict(raw).to_dict()
        except ConfigError as e:
            config = dict(raw, _invalid=str(e))
        t = Trial(trial_id=folder.name, config=config,
                  params={k: raw[k] for k in raw if k in searched}, history=_results(folder))
        err = folder / "error.txt"
        state = states.get(t.trial_id)
        if err.is_file() or state == "FAIL":
            t.status = "errored"
            lines = err.read_text().strip().splitlines() if err.is_file() else []
            t.error = lines[-1] if lines else "failed"
        elif state in STATUS_OF_OPTUNA:
            t.status = STATUS_OF_OPTUNA[state]
        elif t.history and t.epochs >= config.get("epochs", 0):
            t.status = "completed"
        trials.append(t)
    return trials


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


def write_leaderboard(trials: list[Trial], path: Path, metric: str = "accuracy") -> None:
    keys = sorted({k for t in trials for k in t.params})
    rows = sorted(trials, key=lambda t: -(t.value(metric, "last") or -1))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["trial_id", "status", "epochs", "accuracy", "best_accuracy", "accuracy_tta",
                    "train_s", *keys, "error"])
        for t in rows:
            w.writerow([t.trial_id, t.status, t.epochs, t.value("accuracy", "last"), t.value("accuracy", "all"),
                        t.value("accuracy_tta", "last"), t.train_s, *(t.params.get(k) for k in keys), t.error or ""])
    tmp.replace(path)


def export(experiment: Path, metric: str = "accuracy", scope: str = "last") -> dict:
    from trainables.provenance import git_commit, versions
    from tune.report import write_report
    experiment = Path(experiment).resolve()
    study = load_study(experiment)
    trials = load_trials(experiment, study)
    write_leaderboard(trials, experiment / "leaderboard.csv")  # even with no winner: it lists the errors
    best, how = pick_best(trials, metric, scope)
    counts = {s: sum(t.status == s for t in trials) for s in ("completed", "pruned", "errored", "unfinished")}
    provenance = {
        "experiment": experiment.name, "trial": best.trial_id, "metric": metric, "scope": scope,
        "value": best.value(metric, scope), "epochs_trained": best.epochs, "status": best.status,
        "chosen_from": how, "searched": best.params, "trials": counts,
        "versions": versions(), "git_commit": git_commit(), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(experiment / "best_config.json", {"config": best.config, "provenance": provenance})
    write_report(experiment, trials, best, provenance, study)
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
    p.add_argument("experiment", help="results/<name>")
    p.add_argument("--metric", default="accuracy", choices=("accuracy", "accuracy_tta"))
    p.add_argument("--scope", default="last", choices=("last", "all"),
                   help="last: the accuracy at the end of training; all: the best accuracy at any epoch")
    args = p.parse_args(argv)
    exp = Path(args.experiment).expanduser().resolve()
    print_summary(export(exp, args.metric, args.scope), exp)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
