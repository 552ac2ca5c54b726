"""--warm-start results/<old>: a new search's study starts with the trials of past searches.

Each usable past trial enters the new study as it ended, with its per-epoch accuracies as intermediate
values: COMPLETE where it completed on the new search's epoch budget, PRUNED (at the last epoch it has
within that budget) where ASHA stopped it or where it ran on another budget, since its accuracy is not
what a trial of this search would reach. TPE then models them from the new search's first trial (its
start-up count is met by finished trials, which these are). Nothing is guessed: a past trial whose value
of a searched key lies outside the new space is left out, and every such choice is said in one line.
The past search's folder is only read (its study is read from a copy).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from optuna.trial import TrialState, create_trial

from tune.cli import UsageError
from tune.trials import Experiment

METRIC = "accuracy"


def fits(dist, value) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def past_trials(location: str, distributions: dict, max_epochs: int) -> tuple[list, list[str]]:
    """(the FrozenTrials to add to the new study, the lines that say what was done) from one past search.
    `distributions`: the new study's {key: Optuna distribution}, as Ray's OptunaSearch converts the space."""
    exp = Experiment(location)
    settings = exp.settings() if exp.exists() else None
    if not settings:
        raise UsageError(f"--warm-start {location}: not a search started by tune/run.py (no search.json)")
    with tempfile.TemporaryDirectory() as tmp:
        db = exp.study_file()
        study = None
        if db is not None:   # a copy (with its write-ahead log): opening the study itself would write beside it
            for f in (db, db.with_name(db.name + "-wal")):
                if f.is_file():
                    shutil.copy2(f, Path(tmp) / f.name)
            study = Experiment(location, home=Path(tmp)).study()
        trials = exp.trials(study)
    from search_spaces import parse
    theirs, searched_here = set(parse(settings["space"], settings["space_name"]).params), set(distributions)
    old_epochs = settings["max_epochs"]
    name = exp.name
    notes, out, outside, unfinished = [], [], [], 0
    for t in trials:
        if t.status not in ("completed", "pruned") or not t.history:
            unfinished += 1
            continue
        params = {k: t.config.get(k) for k in distributions}
        bad = [f"{k}={params[k]}" for k, d in distributions.items() if not fits(d, params[k])]
        if bad:
            outside.append(f"{t.trial_id} ({', '.join(bad)})")
            continue
        curve = {h["epoch"]: h[METRIC] for h in t.history if h.get(METRIC) is not None and h["epoch"] <= max_epochs}
        if not curve:
            unfinished += 1
            continue
        complete = t.status == "completed" and old_epochs == max_epochs
        attrs = {"warm_start": name, "source_trial": t.trial_id, "epochs": max(curve),
                 "status": f"from {name}: {t.status} after {t.epochs} of {old_epochs} epochs"}
        out.append(create_trial(params=params, distributions=distributions, intermediate_values=curve,
                                value=curve[max(curve)], user_attrs=attrs,
                                state=TrialState.COMPLETE if complete else TrialState.PRUNED))
    done = sum(t.state == TrialState.COMPLETE for t in out)
    notes.append(f"warm start from {name}: {len(out)} trials into the study ({done} completed, "
                 f"{len(out) - done} pruned)")
    if old_epochs != max_epochs:
        notes.append(f"warm start from {name}: its trials ran up to {old_epochs} epochs, this search's up to "
                     f"{max_epochs}: each enters as pruned at its last epoch within {min(old_epochs, max_epochs)}")
    if outside:
        notes.append(f"warm start from {name}: {len(outside)} trial(s) left out, with values outside this space: "
                     + "; ".join(outside[:3]) + (" ..." if len(outside) > 3 else ""))
    if unfinished:
        notes.append(f"warm start from {name}: {unfinished} errored or unfinished trial(s) left out")
    if theirs - searched_here:
        notes.append(f"warm start from {name}: it searched {', '.join(sorted(theirs - searched_here))}, which this "
                     "space fixes: its trials enter by the keys searched here, whatever they had there")
    if searched_here - theirs:
        notes.append(f"warm start from {name}: {', '.join(sorted(searched_here - theirs))} fixed there, searched "
                     "here: its trials enter with the value they had")
    return out, notes


def warm_trials(locations: list[str], distributions: dict, max_epochs: int) -> tuple[list, list[str]]:
    trials, notes = [], []
    for loc in locations:
        t, n = past_trials(loc, distributions, max_epochs)
        trials += t
        notes += n
    return trials, notes


def space_distributions(param_space: dict) -> dict:
    """The Optuna distributions Ray's OptunaSearch gives the study for this Tune param space."""
    from ray.tune.search.optuna import OptunaSearch
    return dict(OptunaSearch.convert_search_space(param_space))

