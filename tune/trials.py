"""The one reader of a search's folder, and the one place that knows its layout.

    results/<name>/
      search.json          the search's settings (tune/search.py), so --resume needs nothing else
      budget.json          the time a search with --time-budget has spent (tune/budget.py)
      events.out.tfevents.hparams   the columns of TensorBoard's HParams table (trainables/board.py)
      optuna.db            the Optuna study
      <trial_id>/          one folder per trial, named by Ray's trial id (trial_dirname)
        params.json        the config Ray gave the trial
        result.json        one JSON line per reported epoch (Ray's logger); progress.csv the same as CSV
        error.txt          the traceback of a trial that raised
        checkpoint_NNNNNN/ the trial's newest checkpoint while it runs (trainables/train.py writes it, and
                           tune_report.py drops the one before); a completed trial keeps its last weights,
                           a stopped one none
      best_config.json, leaderboard.csv, report.md, report.html, report/   what tune/export.py writes

A search with `--storage` (a folder every node of a cluster mounts, or a URI pyarrow takes, such as
s3://bucket/prefix) has two places: the trials and Ray's state at <storage>/<name>, and the driver's home,
results/<name>, with search.json, the live study (SQLite wants a local disk: its locks fail on NFS) and
the export. The home's files are mirrored to the storage: search.json at the start, the study and
budget.json at each of Ray's snapshots (in step with Ray's state), the export at the end; so any machine
can export from the storage alone.

Export, report, resume and the benchmarks read through `Experiment`; everything goes through pyarrow's
filesystems. Ray's ExperimentAnalysis is not used because it knows only the trials of Ray's last snapshot
(a killed driver's newest trials are missing) and drops a trial's whole history when one line of its
result.json was cut short by a kill.
"""
from __future__ import annotations

import contextlib
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from trainables.files import write_text
from trainables.reporting import STATE_FILE

STEP = "epoch"  # the step of every result: not Ray's training_iteration, which restarts after a kill
SETTINGS_FILE = "search.json"
BUDGET_FILE = "budget.json"
BOARD_FILE = "events.out.tfevents.hparams"
STUDY_FILE = "optuna.db"
RESULT_FILE, PROGRESS_FILE, PARAMS_FILE, ERROR_FILE = "result.json", "progress.csv", "params.json", "error.txt"
CHECKPOINT_PREFIX = "checkpoint_"
STATUS_OF_OPTUNA = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "errored"}


def location_of(root: str, name: str, storage: str | None) -> str:
    """Where Ray keeps a search's trials and its state: under --storage, else in the driver's folder."""
    return f"{storage.rstrip('/')}/{name}" if storage else str(Path(root) / name)


def ended_as(epochs: int, max_epochs: int, failed: bool = False, budget_spent: bool = False) -> str:
    """How a trial that Ray ended ended: errored, completed (its whole schedule), stopped by the time
    budget, or pruned (stopped early by ASHA)."""
    return ("errored" if failed else "completed" if epochs >= max_epochs
            else "stopped" if budget_spent else "pruned")


EXPORT_FILES = ("best_config.json", "leaderboard.csv", "report.md", "report.html", "report")
# the driver's own .json files beside Ray's: a resume brings every .json there down into Ray's staging folder
DRIVER_JSON = (SETTINGS_FILE, BUDGET_FILE, *(f for f in EXPORT_FILES if f.endswith(".json")))


SEARCH_STATE_GLOB = "search_gen_state-*.json"   # Ray's own: its search generator's counts, pickled
RAY_STATE_GLOB = "experiment_state-*.json"      # Ray's own: its snapshot of the trials
RAY_ENDED = ("TERMINATED", "ERROR")             # the statuses of a trial Ray will not run again


def newest(fs: pafs.FileSystem, path: str, pattern: str) -> str | None:
    import fnmatch
    names = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                   if fnmatch.fnmatch(Path(i.path).name, pattern))
    return names[-1] if names else None


def ray_snapshot(location: str) -> dict:
    """{trial id: (Ray's status, config)} of the trials in Ray's newest snapshot of a search ({}: none)."""
    fs, path = filesystem(location)
    snap = newest(fs, path, RAY_STATE_GLOB)
    trials = [json.loads(t) for t, _ in json.loads(read_text(fs, snap))["trial_data"]] if snap else []
    return {t["trial_id"]: (t["status"], t["config"]) for t in trials}


def mend_search_state(location: str, samples: int | None = None) -> int:
    """Before a resume, make Ray's search generator agree with Ray's snapshot of the trials, and return how
    many trials it had counted that the snapshot lacks. Ray saves the two apart (and on object storage
    uploads them apart), so after a kill they can disagree. The generator's count can include a trial the
    snapshot never had: Ray would never create that trial again and the search could never finish. Its
    concurrency limit can list a trial as live that has ended (its place stays taken), or miss one Ray runs
    (the limit drops the end of a trial it does not list, so the searcher would never hear of it). So the
    count is set to the snapshot's, the live trials to the snapshot's unfinished ones, and the searcher is
    asked again. `samples` raises the search's total (Tuner.restore takes no new num_samples)."""
    import pickle
    fs, path = filesystem(location)
    gen, snap = newest(fs, path, SEARCH_STATE_GLOB), ray_snapshot(location)
    if not gen or not snap:
        if samples is None:
            return 0
        from tune.cli import UsageError
        raise UsageError(f"{location} cannot be extended: it has no state of Ray's search ({SEARCH_STATE_GLOB}); "
                         "it never ran, or not as a search of tune/run.py")
    with fs.open_input_stream(gen) as f:
        state = pickle.loads(f.readall())
    live = {t for t, (status, _) in snap.items() if status not in RAY_ENDED}
    lost = state["counter"] - len(snap)
    # Ray's ConcurrencyLimiter, or on a cluster tune.pruning.WideningLimiter: the state that counts live trials
    limiter = next((v for k, v in state.items() if k.startswith("name:") and isinstance(v, dict)
                    and "live_trials" in v), None)
    if lost == 0 and samples is None and (not limiter or limiter["live_trials"] == live):
        return 0
    state["counter"] = len(snap)
    if limiter:
        limiter.update(live_trials=live, num_unfinished_live_trials=len(live))
    if samples is not None:
        state.update(total_samples=samples, finished=False)
    tmp = f"{gen}.partial"
    with fs.open_output_stream(tmp) as f:
        f.write(pickle.dumps(state))
    fs.move(tmp, gen)
    return max(lost, 0)


def upload(local: Path, fs: pafs.FileSystem, path: str, names) -> None:
    """Copy the named files and folders of a local folder to the same names under `path` on `fs`."""
    fs.create_dir(path)
    for name in names:
        f = Path(local) / name
        if f.is_dir():
            fs.create_dir(f"{path}/{name}")
            pafs.copy_files(str(f), f"{path}/{name}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
        elif f.is_file():
            with fs.open_output_stream(f"{path}/{name}") as out:
                out.write(f.read_bytes())


def trial_dirname(trial) -> str:
    """Ray's trial_dirname_creator: a trial's folder is its id, so the study's ray_trial_id names it."""
    return trial.trial_id


def filesystem(location) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) of a folder or a URI."""
    location = str(location)
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def read_text(fs: pafs.FileSystem, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.readall().decode()
    except OSError:
        return None


def final_runs(home: Path) -> list[tuple[str, dict]]:
    """(folder name, metrics.json) of each final run tune/final.py wrote into the driver's folder (final*/)."""
    out = []
    for f in sorted(Path(home).glob("final*/metrics.json")):
        try:
            out.append((f.parent.name, json.loads(f.read_text())))
        except ValueError:  # a run still writing, or cut short: it is listed once it is whole
            continue
    return out


def folders(fs: pafs.FileSystem, path: str, prefix: str = "") -> list[str]:
    """The names of the sub-folders of `path` that start with `prefix`, sorted."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return sorted(i.base_name for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix))


def checkpoints(fs: pafs.FileSystem, trial_path: str) -> list[str]:
    """A trial folder's checkpoint folders, oldest first."""
    return [f"{trial_path}/{c}" for c in folders(fs, trial_path, CHECKPOINT_PREFIX)]


def last_checkpoint_index(paths: list[str]) -> int:
    """The highest number among checkpoint folders' paths (Ray's checkpoint_NNNNNN), -1 if none."""
    numbers = (p.rsplit("/", 1)[-1].removeprefix(CHECKPOINT_PREFIX) for p in paths)
    return max((int(n) for n in numbers if n.isdigit()), default=-1)


def checkpoint_state(fs: pafs.FileSystem, path: str) -> dict | None:
    """A checkpoint's state (epoch, history, the size of each file) if it can be resumed from: every file
    it lists is there at its size. Ray copies a checkpoint's files in parallel, so a kill can leave a whole
    state.json beside a model cut short. None for such a checkpoint, or one without a readable state."""
    try:
        state = json.loads(read_text(fs, f"{path}/{STATE_FILE}"))
        state["epoch"], files = int(state["epoch"]), dict(state["files"])
    except (TypeError, ValueError, KeyError):
        return None
    sizes = {i.base_name: i.size for i in fs.get_file_info([f"{path}/{f}" for f in files])
             if i.type == pafs.FileType.File}
    return state if files and all(sizes.get(f) == n for f, n in files.items()) else None


def delete_checkpoints(fs: pafs.FileSystem, trial_path: str, keep_newest: bool = False) -> int:
    """Delete a trial's checkpoint folders (one stopped early: neither the export nor the final run reads
    them), or all but its newest whole one (a trial's own, while it runs and once it completed: a resume
    replays it from that; a lone one is kept, whole or not); returns the bytes freed."""
    freed = 0
    try:   # a tidy-up: a store's error leaves the folders (a running trial's next checkpoint tries again)
        found = checkpoints(fs, trial_path)
        if keep_newest:
            whole = [(st["epoch"], c) for c in found if (st := checkpoint_state(fs, c))] if len(found) > 1 else []
            found = [c for c in found if whole and c != max(whole)[1]]
        for path in found:
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile: by the trial, or by the driver
                freed += sum(i.size for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                             if i.type == pafs.FileType.File)
                fs.delete_dir(path)
    except OSError as e:
        print(f"warning: old checkpoints of {trial_path} are kept: {e}", file=sys.stderr, flush=True)
    return freed


def epoch_rows(text: str | None) -> list[dict]:
    """A result.json's epochs in order, each once: a line cut short by a kill is skipped, and an epoch
    replayed after a resume keeps its first row."""
    rows = {}
    for line in (text or "").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and STEP in r:
            rows.setdefault(r[STEP], r)
    return [rows[e] for e in sorted(rows)]


def with_history(text: str | None, history: list[dict]) -> str | None:
    """A result.json's text with the epochs of a checkpoint's history that it lacks (None: it lacks none).
    Ray's copy of a trial's log can be older than its snapshot and its checkpoints after a kill."""
    rows = epoch_rows(text)
    have = {r[STEP] for r in rows}
    missing = [h for h in history if h[STEP] not in have]
    return "".join(json.dumps(r) + "\n" for r in sorted(rows + missing, key=lambda r: r[STEP])) if missing else None


@dataclass
class Trial:
    trial_id: str
    config: dict                     # every config key, defaults filled in
    params: dict                     # the values the searcher chose
    history: list = field(default_factory=list)   # one row per epoch, as reported
    status: str = "unfinished"       # completed | pruned | errored | unfinished
    error: str | None = None         # the last line of the trial's traceback
    checkpoints: list = field(default_factory=list)  # paths of its checkpoint folders, oldest first

    @property
    def epochs(self) -> int:
        return len(self.history)

    def value(self, metric: str, scope: str = "last"):
        vals = [h[metric] for h in self.history if h.get(metric) is not None]
        if not vals:
            return None
        return max(vals) if scope == "all" else self.history[-1].get(metric)

    @property
    def train_s(self) -> float | None:
        return self.history[-1].get("time_total_s") if self.history else None


class Experiment:
    """A search's folder (or URI), read without Ray running: finished, interrupted or resumed. `home` is the
    driver's folder of a search whose trials are elsewhere (its live study); without it, a URI's study is
    the copy Ray's last snapshot mirrored there."""

    def __init__(self, location, home: Path | None = None):
        self.location = str(location)
        self.fs, self.path = filesystem(location)
        self.name = Path(self.path).name
        self.home = Path(home) if home else Path(self.path) if self.local else None  # None: only read
        self._copies = None

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def settings(self) -> dict | None:
        text = read_text(self.fs, f"{self.path}/{SETTINGS_FILE}")
        return json.loads(text) if text else None

    def study_file(self) -> Path | None:
        for db in (self.home, Path(self.path) if self.local else None):
            if db and (db / STUDY_FILE).is_file():
                return db / STUDY_FILE
        if self.local:
            return None
        import tempfile
        self._copies = self._copies or tempfile.TemporaryDirectory(prefix="study-")  # removed with self
        local = Path(self._copies.name, STUDY_FILE)
        try:
            with self.fs.open_input_stream(f"{self.path}/{STUDY_FILE}") as f:
                local.write_bytes(f.readall())
        except OSError:
            return None
        return local

    def study(self):
        """The search's Optuna study, or None (no study yet)."""
        db = self.study_file()
        if db is None or not db.is_file():
            return None
        import optuna
        from tune.study import study_storage
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = study_storage(db)
        names = optuna.get_all_study_names(storage)
        if not names:
            return None
        return optuna.load_study(study_name=self.name if self.name in names else names[0], storage=storage)

    def params(self, trial_id: str) -> dict | None:
        """The config Ray gave a trial; None while its params.json is missing or cut short by a kill."""
        try:
            return json.loads(read_text(self.fs, f"{self.path}/{trial_id}/{PARAMS_FILE}"))
        except (TypeError, ValueError):
            return None

    def trial_ids(self) -> list[str]:
        return [d for d in folders(self.fs, self.path) if self.params(d) is not None]

    def history(self, trial_id: str) -> list[dict]:
        return epoch_rows(read_text(self.fs, f"{self.path}/{trial_id}/{RESULT_FILE}"))

    def trials(self, study=None) -> list[Trial]:
        """Every trial with its config, searched values, epochs, status, error and checkpoints. The status
        comes from the study where it has the trial, else from the folder (error.txt, epochs trained)."""
        from search_spaces import searched_keys
        from trainables.config import ConfigError, TrainConfig
        settings = self.settings()
        searched = searched_keys(settings["space"]) if settings else set()
        told = {t.user_attrs["ray_trial_id"]: t for t in (study.trials if study else []) if "ray_trial_id" in t.user_attrs}
        out = []
        for trial_id in self.trial_ids():
            folder = f"{self.path}/{trial_id}"
            raw = self.params(trial_id)
            try:
                config = TrainConfig.from_dict(raw).to_dict()
            except ConfigError as e:
                config = dict(raw, _invalid=str(e))
            t = Trial(trial_id=trial_id, config=config, params={k: raw[k] for k in raw if k in searched},
                      history=self.history(trial_id), checkpoints=checkpoints(self.fs, folder))
            err, ot = read_text(self.fs, f"{folder}/{ERROR_FILE}"), told.get(trial_id)
            state = ot.state.name if ot else None
            if err is not None or state == "FAIL":
                lines = (err or "").strip().splitlines()
                lost = ot.user_attrs.get("lost") if ot else None
                t.status, t.error = "errored", lines[-1] if lines else f"lost: {lost}" if lost else "failed"
            elif state in STATUS_OF_OPTUNA:
                t.status = STATUS_OF_OPTUNA[state]
            elif t.history and t.epochs >= config.get("epochs", 0):
                t.status = "completed"
            out.append(t)
        return out

    def mend_history(self, trial_id: str) -> bool:
        """Add to an ended trial's result.json the epochs its newest whole checkpoint has and it lacks."""
        f = f"{self.path}/{trial_id}"
        states = [st for c in checkpoints(self.fs, f) if (st := checkpoint_state(self.fs, c))]
        text = with_history(read_text(self.fs, f"{f}/{RESULT_FILE}"),
                            max(states, key=lambda st: st["epoch"])["history"]) if states else None
        if text is not None:
            with self.fs.open_output_stream(f"{f}/{RESULT_FILE}") as out:
                out.write(text.encode())
        return text is not None

    def delete_checkpoints(self, trial_id: str, keep_newest: bool = False) -> int:
        return delete_checkpoints(self.fs, f"{self.path}/{trial_id}", keep_newest)

    def metric_history(self, metric: str) -> dict:
        """{trial_id: [(epoch, value), ...]} of every trial that reported `metric`."""
        out = {}
        for trial_id in self.trial_ids():
            rows = [(r[STEP], r[metric]) for r in self.history(trial_id) if metric in r]
            if rows:
                out[trial_id] = rows
        return out

    def drop_replayed_rows(self) -> None:
        """After a resume, an epoch that Ray logged after its last snapshot was reported again by the replay
        (Ray must see it to restore the trial's state): keep each epoch's first row in result.json and
        progress.csv, so that Ray's own logs show every epoch once."""
        for trial_id in self.trial_ids():
            for name in (RESULT_FILE, PROGRESS_FILE):
                f = f"{self.path}/{trial_id}/{name}"
                text = read_text(self.fs, f)
                if text is None:
                    continue
                lines = text.splitlines(keepends=True)
                if name == RESULT_FILE:
                    epochs = [(epoch_rows(line) or [{}])[0].get(STEP) for line in lines]
                else:
                    epochs = [None] + [row.get(STEP) for row in csv.DictReader(lines)]
                seen, kept = set(), []
                for line, epoch in zip(lines, epochs):
                    if epoch is None or epoch not in seen:
                        kept.append(line)
                    seen.add(epoch)
                if len(kept) < len(lines) and self.local:
                    write_text(Path(f), "".join(kept))
                elif len(kept) < len(lines):  # an object store replaces an object whole
                    with self.fs.open_output_stream(f) as out:
                        out.write("".join(kept).encode())
