"""report.md with plots: what the search tried, what won, and which knobs mattered.

Optuna draws the study's plots (optimization history, accuracy against each parameter, parallel
coordinates, parameter importance); the learning curves come from the trials' own per-epoch results,
which hold every epoch (Optuna's intermediate values miss a completed trial's last one).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.visualization import matplotlib as ovm  # noqa: E402

from trainables.files import write_text  # noqa: E402
from tune.cli import shown  # noqa: E402

PLOTS = {
    "optimization_history": ("Accuracy of each trial in the order they ran, and the best so far",
                             lambda study: ovm.plot_optimization_history(study)),
    "accuracy_by_parameter": ("Final accuracy against each tuned parameter (completed trials)",
                              lambda study: ovm.plot_slice(study)),
    "parallel_coordinates": ("Every completed trial across all tuned parameters",
                             lambda study: ovm.plot_parallel_coordinate(study)),
    "parameter_importance": ("How much each parameter explains the final accuracy (Optuna's PED-ANOVA)",
                             lambda study: ovm.plot_param_importances(study)),
}


def _save(ax_or_axes, path: Path) -> None:
    ax = ax_or_axes.flat[0] if hasattr(ax_or_axes, "flat") else ax_or_axes
    fig = ax.figure
    fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def scored_on(chosen: dict | None) -> str:
    """What a trial's accuracy was measured on, in words."""
    chosen = chosen or {}
    if chosen.get("split") == "holdout":
        return (f"a holdout of train/ ({chosen.get('holdout_frac', 0):.0%} of each class, drawn with seed "
                f"{chosen.get('holdout_seed')}); val/ was not read")
    if chosen.get("split") == "random":
        return "a random 20% of all images"
    return "val/, which the final run also tests on: its test accuracy was seen while choosing"


def final_runs(experiment: Path) -> list[str]:
    """The final runs of this export (tune/final.py into <experiment>/final*), test beside search accuracy."""
    from tune.trials import final_runs as runs
    rows = []
    for name, m in runs(experiment):
        search = m.get("search") or {}
        if search.get("experiment") != experiment.name:
            continue
        metric = search.get("metric", "accuracy")  # the same metric on both sides: with TTA or without
        test = m.get(f"{metric}_mean", m.get(metric))
        if test is None or search.get("value") is None:
            continue
        ci = m.get(f"{metric}_ci95")
        spread = f" (95% CI {100 * ci[0]:.2f} to {100 * ci[1]:.2f}, {m['repeats']} seeds)" if ci else ""
        rows.append(f"| {name} | {m['config']['epochs']} | {100 * search['value']:.2f}% | "
                    f"{100 * test:.2f}%{spread} on {m.get('tested_on', '?')} | {100 * (test - search['value']):+.2f} |")
    if not rows:
        return []
    return ["## Final runs", "", "Each final run's test accuracy beside what the search measured for its config "
            "(the search's metric on both sides).", "",
            "| run | epochs | in the search | tested | gap (points) |", "|---|---|---|---|---|",
            *rows, ""]


def learning_curves(trials, path: Path, ylabel: str, top: int = 5) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    ranked = sorted((t for t in trials if t.history), key=lambda t: -(t.value("accuracy", "last") or 0))
    for t in ranked[top:]:
        ax.plot([h["epoch"] for h in t.history], [h["accuracy"] for h in t.history], color="0.8", lw=1)
    for t in ranked[:top]:
        ax.plot([h["epoch"] for h in t.history], [h["accuracy"] for h in t.history], marker="o", lw=2,
                label=f"{t.trial_id} ({t.status}) {t.history[-1]['accuracy']:.3f}")
    ax.set(xlabel="epoch", ylabel=ylabel,
           title=f"Learning curves: the top {min(top, len(ranked))} trials, the others in grey")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(trials, keys, n=10) -> list[str]:
    rows = sorted(trials, key=lambda t: -(t.value("accuracy", "last") or -1))[:n]
    head = ["trial", "status", "epochs", "accuracy", "accuracy_tta", *keys]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(v):
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    for t in rows:
        cells = [t.trial_id, t.status, t.epochs, t.value("accuracy", "last"), t.value("accuracy_tta", "last"),
                 *(t.params.get(k) for k in keys)]
        out.append("| " + " | ".join(fmt(c) for c in cells) + " |")
    return out


def write_report(experiment: Path, trials, best, provenance: dict, study: optuna.Study | None) -> Path:
    folder = experiment / "report"
    folder.mkdir(exist_ok=True)
    keys = sorted({k for t in trials for k in t.params})
    counts = ", ".join(f"{n} {s}" for s, n in provenance["trials"].items() if n)
    lines = [f"# Search {experiment.name}", "",
             f"{len(trials)} trials ({counts}). Best: trial `{best.trial_id}` with {provenance['metric']} "
             f"{provenance['value']:.4f} after {best.epochs} epochs ({provenance['chosen_from']}).", "",
             f"Every trial's accuracy is measured on {scored_on(provenance.get('chosen_on'))}.", "",
             "Train it longer:", "", "```bash",
             f"python tune/final.py {shown(experiment)}/best_config.json --epochs N", "```", "",
             "## Best config (searched keys)", ""]
    lines += [f"- `{k}` = {v:.4g}" if isinstance(v, float) else f"- `{k}` = {v}"
              for k, v in sorted(best.params.items())]
    lines += ["", "## Leaderboard (top 10)", "", *_table(trials, keys), "", *final_runs(experiment)]

    holdout = (provenance.get("chosen_on") or {}).get("split") == "holdout"
    learning_curves(trials, folder / "learning_curves.png", "holdout accuracy" if holdout else "validation accuracy")
    lines += ["## Learning curves", "", "![learning curves](report/learning_curves.png)", ""]
    for name, (caption, draw) in PLOTS.items():
        lines += [f"## {caption}", ""]
        if study is None:
            lines += ["(no Optuna study in this experiment)", ""]
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                _save(draw(study), folder / f"{name}.png")
            lines += [f"![{name}](report/{name}.png)", ""]
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few completed trials for this plot
            plt.close("all")
            lines += [f"(not drawn: {e})", ""]
    lines += ["Interactive: `optuna-dashboard sqlite:///" + shown(experiment / "optuna.db") + "`", ""]
    return write_text(experiment / "report.md", "\n".join(lines))
