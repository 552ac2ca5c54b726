"""--warm-start results/<old>: a new search's study starts with the trials of past searches.

Each usable past trial enters the new study as it ended, with its per-epoch accuracies as intermediate
values. It enters COMPLETE only where it ran this search's task: completed, on the same epoch budget,
with every key this search fixes at the same value and on the same files. Otherwise it enters PRUNED (at
its last epoch within this budget): its accuracy is not what a trial of this search would reach, and
TPE ranks every completed trial of the new search above pruned ones, so the past trials guide the first
suggestions and the new search's own results take over as they come (the guard against a source whose
best config is not this task's). TPE models them from the new search's first trial (its start-up count
is met by finished trials, which these are), and each source's best two configs run first (Optuna's
enqueue_trial), marked `first_from`. Nothing is guessed: a past trial whose value of a searched key lies
outside the new space is left out, and every such choice is said in one line. The past search's folder
is only read (its study is read from a copy).
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import TrialState, create_trial

from search_spaces import searched_keys
from tune.cli import UsageError
from tune.trials import Experiment, location_of

METRIC = "accuracy"
FIRST = 2   # configs of each source tried first: its best, and a second in case the best was luck


def fits(dist, value) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def stamp(f: Path) -> tuple[int, int] | None:
    """A file's size and modification time, or None where it is not there."""
    try:
        st = f.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def copy_quiet(files: list[Path], dst: Path, location: str, tries: int = 5) -> None:
    """Copies a study and its write-ahead log as one state: a source still running may write between the
    two, so the copy is taken again until neither file changed while it was made (SQLite deletes the
    log when the source closes, which counts as a change)."""
    for _ in range(tries):
        before = [stamp(f) for f in files]
        for f, was in zip(files, before):
            (dst / f.name).unlink(missing_ok=True)
            if was is not None:
                with contextlib.suppress(FileNotFoundError):   # gone since: the stamps differ, and it is taken again
                    shutil.copy2(f, dst / f.name)
        if [stamp(f) for f in files] == before:
            return
        time.sleep(0.5)
    raise UsageError(f"--warm-start {location}: its study changed while each of {tries} copies was made; "
                     "warm-start from it once it has stopped")


@dataclass
class Warm:
    """What a new study starts with: past trials (FrozenTrials) and the configs to try first."""
    trials: list = field(default_factory=list)
    first: list = field(default_factory=list)   # [(params, user_attrs)], in the order to try them


# how a trial runs, not what it learns (the data paths agree: benchmarks/pipeline_agreement.py), and its
# training seed (the same task, another draw); epochs are compared apart
HOW = {"epochs", "tta", "compile", "workers", "precision", "pipeline", "seed"}


def differences(config: dict, task: dict, theirs: dict | None, ours: dict | None) -> list[str]:
    """How a past trial's task differs from this search's: the keys this search does not search that it had
    otherwise (`task`: their values here, defaults included), and its files: what each differs in."""
    out = [f"{k} ({v!r} here)" for k, v in task.items() if k not in HOW and config.get(k) != v]
    data = task.get("data")
    if config.get("data") == data and theirs and ours and theirs.get(data) != ours.get(data):
        out.append(f"the files of {data}")
    return out


def source_names(locations: list[str]) -> dict[str, str]:
    """How lines and provenance name each past search: its folder's name, or where two sources share
    one (results/a/old and results/b/old), the path as given; a URI in full."""
    short = {loc: loc if "://" in loc else Path(loc).name for loc in locations}
    return {loc: n if list(short.values()).count(n) == 1 else loc for loc, n in short.items()}


def read_settings(location: str) -> tuple[Experiment, dict]:
    """A past search and its search.json, or one line that says why it cannot be a source."""
    try:
        exp = Experiment(location)
        settings = exp.settings() if exp.exists() else None
    except (OSError, ValueError) as e:   # pyarrow's errors of a URI it cannot use are ValueErrors
        raise UsageError(f"--warm-start {location}: its search.json cannot be read ({str(e).splitlines()[0]})") from None
    if not settings:
        raise UsageError(f"--warm-start {location}: not a search started by tune/run.py (no search.json)")
    missing = [k for k in ("space", "name", "max_epochs") if not isinstance(settings, dict) or k not in settings]
    if missing or not isinstance(settings["space"], dict):
        raise UsageError(f"--warm-start {location}: its search.json is not one tune/run.py wrote "
                         f"(no {', '.join(missing) or 'space'})")
    return exp, settings


def trials_of(exp: Experiment, settings: dict, location: str) -> Experiment:
    """Where a past search's trials are: a search run with --storage keeps them there, and its study and
    search.json in the folder given."""
    if not (settings.get("storage") and exp.local):
        return exp
    there = Experiment(location_of(settings.get("root", ""), settings["name"], settings["storage"]))
    try:
        found = there.exists()
    except (OSError, ValueError):
        found = False
    if not found:
        raise UsageError(f"--warm-start {location}: its trials are kept in {there.location}, which cannot be read here")
    return there


def past_trials(location: str, exp: Experiment, settings: dict, distributions: dict, max_epochs: int, task: dict,
                fingerprints: dict | None = None, name: str | None = None) -> tuple[Warm, list[str]]:
    """(what the new study starts with, the lines that say what was done) from one past search (read_settings).
    `distributions`: the new study's {key: Optuna distribution}, as Ray's OptunaSearch converts the space;
    `task`: every other key's value in this search (tune.warm.warm_trials); `fingerprints`: its data's;
    `name`: how lines and the study name the source (source_names)."""
    trials_at = trials_of(exp, settings, location)
    with tempfile.TemporaryDirectory() as tmp:
        db = exp.study_file()
        study = None
        if db is not None:   # a copy (with its write-ahead log): opening the study itself would write beside it
            copy_quiet([db, db.with_name(db.name + "-wal")], Path(tmp), location)
            study = Experiment(location, home=Path(tmp)).study()
        trials = trials_at.trials(study)
    theirs = searched_keys(settings["space"])
    searched_here = set(distributions)
    old_epochs = settings["max_epochs"]
    name = name or exp.name
    notes, out, outside, unfinished, elsewhere = [], [], [], 0, {}
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
        other = differences(t.config, task, settings.get("datasets"), fingerprints)
        for d in other:
            elsewhere[d] = elsewhere.get(d, 0) + 1
        complete = t.status == "completed" and old_epochs == max_epochs and not other
        attrs = {"warm_start": name, "source_trial": t.trial_id, "epochs": max(curve),
                 "status": f"from {name}: {t.status} after {t.epochs} of {old_epochs} epochs"}
        out.append(create_trial(params=params, distributions=distributions, intermediate_values=curve,
                                value=curve[max(curve)], user_attrs=attrs,
                                state=TrialState.COMPLETE if complete else TrialState.PRUNED))
    # the best first: furthest within this budget, then the most accurate there (TPE's order for pruned trials)
    ranked = sorted(out, key=lambda f: (-max(f.intermediate_values), -f.value))
    first, seen = [], set()
    for f in ranked:
        if len(first) < FIRST and tuple(sorted(f.params.items())) not in seen:
            seen.add(tuple(sorted(f.params.items())))
            first.append((f.params, {"first_from": name, "source_trial": f.user_attrs["source_trial"]}))
    done = sum(t.state == TrialState.COMPLETE for t in out)
    notes.append(f"warm start from {name}: {len(out)} trials into the study ({done} completed, "
                 f"{len(out) - done} pruned)")
    if old_epochs != max_epochs:
        notes.append(f"warm start from {name}: its trials ran up to {old_epochs} epochs, this search's up to "
                     f"{max_epochs}: each enters as pruned at its last epoch within {min(old_epochs, max_epochs)}")
    if elsewhere:
        notes.append(f"warm start from {name}: trials that ran another task enter as pruned, below every completed "
                     "trial of this search: " + ", ".join(f"{d} differs in {n}" for d, n in elsewhere.items()))
    if first:
        notes.append(f"warm start from {name}: its best {len(first)} config(s) run first: "
                     + ", ".join(a["source_trial"] for _, a in first))
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
                     "here: its trials enter with the value they had, where it lies in this space")
    return Warm(out, first), notes


def warm_trials(locations: list[str], distributions: dict, max_epochs: int, fixed: dict,
                fingerprints: dict | None = None) -> tuple[Warm, list[str]]:
    """What the new study starts with from every past search, and the lines that say what was done.
    `fixed`: the new space's fixed keys; a past trial's task is compared on every key not searched here."""
    from trainables.config import TrainConfig
    task = {k: v for k, v in TrainConfig.from_dict(fixed).to_dict().items() if k not in distributions}
    warm, notes, queued, seen, names = Warm(), [], set(), {}, source_names(locations)
    for loc in locations:
        exp, settings = read_settings(loc)
        search = (settings.get("root"), settings["name"])   # its folder and its --storage URI are one search
        if search in seen:
            notes.append(f"--warm-start {loc} is the search {seen[search]} names too: its trials enter once")
            continue
        seen[search] = loc
        w, n = past_trials(loc, exp, settings, distributions, max_epochs, task, fingerprints, names[loc])
        warm.trials += w.trials
        for params, attrs in w.first:  # a search warm-started from another ran that one's best configs first too
            key = tuple(sorted(params.items()))
            if key in queued:
                n.append(f"warm start from {attrs['first_from']}: {attrs['source_trial']}'s config already runs "
                         "first, from an earlier source: it runs once")
                continue
            queued.add(key)
            warm.first.append((params, attrs))
        notes += n
    return warm, notes


def space_distributions(param_space: dict) -> dict:
    """The Optuna distributions Ray's OptunaSearch gives the study for this Tune param space."""
    from ray.tune.search.optuna import OptunaSearch
    return dict(OptunaSearch.convert_search_space(param_space))

