"""report.md and report.html with plots: what the search tried, what won, and which knobs mattered.

The plots are drawn here from the trials (tune/trials.py) rather than by Optuna's matplotlib plots, which
leave pruned trials out, number trials by Optuna's numbers where the leaderboard uses Ray's trial ids,
print tick labels over each other, and put everything in one row however many parameters there are.
Parameter importance is Optuna's (PED-ANOVA), resampled to show how little a dozen trials can say.
"""
from __future__ import annotations

import base64
import html
import json
import math
import random
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from trainables.files import write_text  # noqa: E402
from tune.cli import compact, shown  # noqa: E402

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


STYLE = {  # how each status is drawn, the same in every plot
    "completed": dict(marker="o", color="C0", label="completed"),
    "pruned": dict(marker="x", color="C1", label="pruned (its accuracy when stopped)"),
    "errored": dict(marker="v", color="0.5", label="errored"),
    "unfinished": dict(marker="v", color="0.5", label="unfinished"),
}
MIN_FOR_IMPORTANCE = 5   # completed trials below which importance is not drawn at all


def started(t) -> float:
    h = t.history[0]
    return h.get("timestamp", 0) - h.get("time_total_s", 0)


def last_accuracy(t):
    return t.value("accuracy", "last")


def history_figure(trials, ylabel: str):
    """Every trial that reported, in the order it started, by its trial id; the best completed so far."""
    ran = sorted((t for t in trials if t.history), key=started)
    width = min(20.0, max(8.0, 0.25 * len(ran)))
    fig, ax = plt.subplots(figsize=(width, 5))
    for status, style in STYLE.items():
        pts = [(i, last_accuracy(t)) for i, t in enumerate(ran) if t.status == status and last_accuracy(t) is not None]
        if pts and not (status == "unfinished" and any(t.status == "errored" for t in ran)):
            ax.scatter(*zip(*pts), marker=style["marker"], color=style["color"], label=style["label"], zorder=3)
    best, line = None, []
    for i, t in enumerate(ran):
        if t.status == "completed" and last_accuracy(t) is not None:
            best = max(best or 0.0, last_accuracy(t))
        line.append(best)
    if any(v is not None for v in line):
        ax.step(range(len(ran)), [np.nan if v is None else v for v in line], where="post", color="C2",
                label="best completed so far")
    step = max(1, math.ceil(len(ran) * 0.16 / width))   # a 7-point label needs about 0.16 in across
    ax.set_xticks(range(0, len(ran), step), [t.trial_id for t in ran][::step], rotation=90, fontsize=7)
    ax.set(xlabel="trial, in the order it started", ylabel=ylabel,
           title=f"Accuracy of each of {len(ran)} trials at its last epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _axis(ax, kind: str, which: str = "x") -> None:
    axis = ax.xaxis if which == "x" else ax.yaxis
    if kind == "loguniform":
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
        axis.set_major_locator(LogLocator(numticks=4))
        axis.set_minor_formatter(NullFormatter())   # matplotlib labels minor ticks on short ranges: crowded
    elif kind != "choice":
        axis.set_major_locator(MaxNLocator(4))


def by_parameter_figure(trials, kinds: dict, ylabel: str, per_row: int = 4):
    """One panel per searched parameter, wrapped into rows: accuracy against its value, completed trials
    filled and pruned ones as crosses."""
    keys = [k for k in kinds if any(k in t.params for t in trials)]
    rows = max(1, math.ceil(len(keys) / per_row))
    cols = min(per_row, max(1, len(keys)))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False, sharey=True)
    for ax, key in zip(axes.flat, keys):
        kind = kinds[key]
        cats = sorted({str(t.params[key]) for t in trials if key in t.params}) if kind == "choice" else []
        for status in ("pruned", "completed"):
            pts = [(t.params[key], last_accuracy(t)) for t in trials
                   if t.status == status and key in t.params and last_accuracy(t) is not None]
            if not pts:
                continue
            xs = [cats.index(str(x)) + random.Random(i).uniform(-0.15, 0.15) for i, (x, _) in enumerate(pts)] \
                if cats else [x for x, _ in pts]
            ax.scatter(xs, [y for _, y in pts], s=18, marker=STYLE[status]["marker"], color=STYLE[status]["color"],
                       label=STYLE[status]["label"])
        if cats:
            ax.set_xticks(range(len(cats)), cats)
        _axis(ax, kind)
        ax.tick_params(labelsize=8)
        ax.set_xlabel(key + (" (log)" if kind == "loguniform" else ""), fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=9)
    for ax in list(axes.flat)[len(keys):]:
        ax.remove()   # no empty panel
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Accuracy against each searched parameter", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    return fig


def _position(value, kind: str, values: list) -> float:
    """A value's place on its parallel axis, 0 to 1 (log for loguniform, evenly spaced for a choice)."""
    if kind == "choice":
        cats = sorted({str(v) for v in values})
        return cats.index(str(value)) / max(1, len(cats) - 1)
    f = (lambda v: math.log10(v)) if kind == "loguniform" else float
    lo, hi = min(map(f, values)), max(map(f, values))
    return 0.5 if hi == lo else (f(value) - lo) / (hi - lo)


def parallel_figure(trials, kinds: dict):
    """Every trial that reported across all searched parameters and its accuracy: completed trials coloured
    by accuracy, pruned ones in light grey; each axis says its lowest and highest value."""
    keys = [k for k in kinds if any(k in t.params for t in trials)]
    shown_ = [t for t in trials if last_accuracy(t) is not None and all(k in t.params for k in keys)]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.5 * (len(keys) + 1)), 5))
    if not shown_ or not keys:
        ax.text(0.5, 0.5, "no trial reported yet", ha="center")
        return fig
    accs = [last_accuracy(t) for t in shown_]
    columns = {k: [t.params[k] for t in shown_] for k in keys}
    lo_acc, hi_acc = min(accs), max(accs)
    norm = plt.Normalize(lo_acc, hi_acc if hi_acc > lo_acc else lo_acc + 1e-9)
    segs, colours = [], []
    for t, acc in sorted(zip(shown_, accs), key=lambda p: (p[0].status == "completed", p[1])):
        ys = [_position(t.params[k], kinds[k], columns[k]) for k in keys] + [norm(acc)]
        segs.append(list(zip(range(len(keys) + 1), ys)))
        colours.append(plt.cm.viridis(norm(acc)) if t.status == "completed" else (0.8, 0.8, 0.8, 1.0))
    ax.add_collection(LineCollection(segs, colors=colours, linewidths=1.5))
    names = keys + ["accuracy"]
    for i, k in enumerate(names):
        ax.axvline(i, color="0.3", lw=0.8)
        vals = columns.get(k, accs)
        if k in kinds and kinds[k] == "choice":
            lo, hi = sorted({str(v) for v in vals})[0], sorted({str(v) for v in vals})[-1]
        else:
            lo, hi = compact(min(vals), 1), compact(max(vals), 1)
        ax.text(i, -0.04, lo, ha="center", va="top", fontsize=7)
        ax.text(i, 1.04, hi, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.3, len(names) - 0.7)
    ax.set_ylim(-0.14, 1.14)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=norm)
    fig.colorbar(sm, ax=ax, pad=0.02, fraction=0.03).set_label("accuracy of a completed trial", fontsize=8)
    ax.set_title(f"{len(shown_)} trials across the searched parameters (pruned ones in grey)", fontsize=10)
    fig.tight_layout()
    return fig


def importance_spread(study, rounds: int = 30, seed: int = 0):
    """Optuna's PED-ANOVA importance of each parameter on the completed trials, resampled `rounds` times
    (bootstrap), and what the same count of trials gives when their accuracies are shuffled among them (no
    parameter matters then): {param: (median, 5th, 95th percentile)}, noise's 95th percentile, trial count."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "warm_start" not in t.user_attrs]   # this search's own trials, not those it started from
    if len(done) < MIN_FOR_IMPORTANCE:
        return None, None, len(done)
    rng = random.Random(seed)
    params = sorted({k for t in done for k in t.params})

    def scores(frozen):
        s = optuna.create_study(direction=study.direction)
        s.add_trials(frozen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(s, params=params)

    def renumbered(trials, values=None):
        return [optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                          value=t.value if values is None else values[i]) for i, t in enumerate(trials)]
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        boot = [scores(renumbered([rng.choice(done) for _ in done])) for _ in range(rounds)]
        noise = [v for _ in range(rounds)
                 for v in scores(renumbered(done, rng.sample([t.value for t in done], len(done)))).values()]
    finally:
        optuna.logging.set_verbosity(level)
    spread = {k: tuple(np.percentile([b.get(k, 0.0) for b in boot], (50, 5, 95))) for k in params}
    return spread, float(np.percentile(noise, 95)), len(done)


def importance_figure(spread: dict, noise: float, n: int):
    keys = sorted(spread, key=lambda k: spread[k][0])
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.45 * len(keys) + 1.5)))
    med = [spread[k][0] for k in keys]
    err = [[spread[k][0] - spread[k][1] for k in keys], [spread[k][2] - spread[k][0] for k in keys]]
    ax.barh(keys, med, xerr=err, color="C0", alpha=0.8, capsize=3, label="median over resamples, 5-95%")
    ax.axvline(noise, color="C3", ls="--", label=f"what noise gives with {n} trials (95%)")
    ax.set(xlabel="importance for accuracy (Optuna's PED-ANOVA; sums to 1)", xlim=(0, 1),
           title=f"Parameter importance from {n} completed trials")
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def learning_curves_figure(trials, ylabel: str, top: int = 5):
    fig, ax = plt.subplots(figsize=(8, 5))
    ranked = sorted((t for t in trials if t.history), key=lambda t: -(last_accuracy(t) or 0))
    for t in ranked[top:]:
        ax.plot([h["epoch"] for h in t.history], [h["accuracy"] for h in t.history], color="0.8", lw=1)
    for t in ranked[:top]:
        ax.plot([h["epoch"] for h in t.history], [h["accuracy"] for h in t.history], marker="o", lw=2,
                label=f"{t.trial_id} ({t.status}) {t.history[-1]['accuracy']:.3f}")
    ax.set(xlabel="epoch", ylabel=ylabel,
           title=f"Learning curves: the top {min(top, len(ranked))} trials, the others in grey")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ranked:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def kinds_of(settings: dict | None) -> dict:
    """{searched key: its distribution's kind} of the search's space, in the space's order."""
    if not settings:
        return {}
    from search_spaces import parse
    return {k: d.kind for k, d in parse(settings["space"], settings["space_name"]).params.items()}


def figures(trials, kinds: dict, study, ylabel: str) -> dict:
    """{name: (caption, figure or the reason there is none)} of every plot of the report."""
    out = {"learning_curves": ("Learning curves", learning_curves_figure(trials, ylabel)),
           "optimization_history": ("Every trial in the order it ran, pruned ones marked",
                                    history_figure(trials, ylabel)),
           "accuracy_by_parameter": ("Accuracy against each searched parameter",
                                     by_parameter_figure(trials, kinds, ylabel)),
           "parallel_coordinates": ("Every trial across all searched parameters", parallel_figure(trials, kinds))}
    spread, noise, n = importance_spread(study) if study else (None, None, 0)
    out["parameter_importance"] = (
        "Which parameters explain the accuracy, and how sure that is",
        importance_figure(spread, noise, n) if spread else
        f"not drawn: {n} completed trial(s); with fewer than {MIN_FOR_IMPORTANCE} an importance is noise")
    return out


def _leaderboard_rows(trials, keys):
    rows = sorted(trials, key=lambda t: -(last_accuracy(t) or -1))
    for t in rows:
        yield [t.trial_id, t.status, t.epochs, last_accuracy(t), t.value("accuracy", "all"),
               t.value("accuracy_tta", "last"), *(t.params.get(k) for k in keys)]


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


HEAD = ["trial", "status", "epochs", "accuracy", "best_accuracy", "accuracy_tta"]


def _table(trials, keys, n=10) -> list[str]:
    head = HEAD + keys
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(map(_fmt, row)) + " |" for row in list(_leaderboard_rows(trials, keys))[:n]]
    return out


SORTABLE = """
for (const th of document.querySelectorAll('th')) th.onclick = () => {
  const table = th.closest('table'), body = table.tBodies[0], i = th.cellIndex;
  const dir = th.dataset.dir = th.dataset.dir === 'desc' ? 'asc' : 'desc';
  const key = td => { const t = td.textContent, n = parseFloat(t); return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => { const x = key(a.cells[i]), y = key(b.cells[i]);
    return (x < y ? -1 : x > y ? 1 : 0) * (dir === 'asc' ? 1 : -1); }).forEach(r => body.appendChild(r));
};
function copyConfig() { navigator.clipboard.writeText(document.getElementById('config').textContent); }
"""


def write_html(path: Path, title: str, intro: list[str], best_config: dict, trials, keys, images: dict) -> Path:
    """One self-contained page: the plots inline, the whole leaderboard as a table sorted by a click on a
    column, and the best config ready to copy."""
    e = html.escape
    rows = "".join("<tr>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in row) + "</tr>"
                   for row in _leaderboard_rows(trials, keys))
    figs = "".join(f"<h2>{e(caption)}</h2>" + (f'<img alt="{e(name)}" src="data:image/png;base64,'
                                               f'{base64.b64encode(png).decode()}">' if isinstance(png, bytes)
                                               else f"<p>({e(png)})</p>")
                   for name, (caption, png) in images.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;"
            "text-align:right}th{cursor:pointer;background:#f4f4f4}img{max-width:100%}pre{background:#f6f6f6;"
            "padding:1em;overflow:auto}</style></head><body>"
            f"<h1>{e(title)}</h1>" + "".join(f"<p>{e(p)}</p>" for p in intro) +
            "<h2>Best config</h2><button onclick='copyConfig()'>copy</button>"
            f"<pre id='config'>{e(json.dumps(best_config, indent=2))}</pre>"
            "<h2>Leaderboard (click a column to sort)</h2><table><thead><tr>" +
            "".join(f"<th>{e(h)}</th>" for h in HEAD + keys) + f"</tr></thead><tbody>{rows}</tbody></table>" +
            figs + f"<script>{SORTABLE}</script></body></html>")
    return write_text(path, page)


def write_report(experiment: Path, trials, best, provenance: dict, study: optuna.Study | None,
                 kinds: dict | None = None) -> Path:
    folder = experiment / "report"
    folder.mkdir(exist_ok=True)
    kinds = kinds or {k: "uniform" for k in sorted({k for t in trials for k in t.params})}
    keys = [k for k in kinds if any(k in t.params for t in trials)]
    counts = ", ".join(f"{n} {s}" for s, n in provenance["trials"].items() if n)
    intro = [f"{len(trials)} trials ({counts}). Best: trial {best.trial_id} with {provenance['metric']} "
             f"{provenance['value']:.4f} after {best.epochs} epochs ({provenance['chosen_from']}).",
             f"Every trial's accuracy is measured on {scored_on(provenance.get('chosen_on'))}."]
    if provenance.get("warm_start"):
        intro.append(f"The study started with the trials of {', '.join(provenance['warm_start'])} (--warm-start).")
    lines = [f"# Search {experiment.name}", "", intro[0].replace(best.trial_id, f"`{best.trial_id}`"), "",
             *[x for p in intro[1:] for x in (p, "")], "Train it longer:", "", "```bash",
             f"python tune/final.py {shown(experiment)}/best_config.json --epochs N", "```", "",
             "## Best config (searched keys)", ""]
    lines += [f"- `{k}` = {v:.4g}" if isinstance(v, float) else f"- `{k}` = {v}"
              for k, v in sorted(best.params.items())]
    lines += ["", "## Leaderboard (top 10)", "", *_table(trials, keys), "", *final_runs(experiment)]

    holdout = (provenance.get("chosen_on") or {}).get("split") == "holdout"
    ylabel = "holdout accuracy" if holdout else "validation accuracy"
    images = {}
    for name, (caption, fig) in figures(trials, kinds, study, ylabel).items():
        lines += [f"## {caption}", ""]
        if isinstance(fig, str):
            lines += [f"({fig})", ""]
            images[name] = (caption, fig)
            continue
        fig.savefig(folder / f"{name}.png", dpi=100)
        plt.close(fig)
        images[name] = (caption, (folder / f"{name}.png").read_bytes())
        lines += [f"![{name}](report/{name}.png)", ""]
    lines += ["Interactive: `optuna-dashboard sqlite:///" + shown(experiment / "optuna.db") + "`", "",
              "All of this on one page: `report.html`.", ""]
    best_config = json.loads((experiment / "best_config.json").read_text())["config"] \
        if (experiment / "best_config.json").is_file() else best.config
    write_html(experiment / "report.html", f"Search {experiment.name}", intro, best_config, trials, keys, images)
    return write_text(experiment / "report.md", "\n".join(lines))
