"""The Optuna study file (results/<name>/optuna.db): how readers open it, how the search's searcher keeps it
fast, and how a live one is copied."""
from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages._cached_storage import _CachedStorage


def study_storage(db: Path):
    """The Optuna storage of a study file, for a reader (export, report, resume, warm start)."""
    return optuna.storages.RDBStorage(f"sqlite:///{db}")


def searcher_storage(db: Path) -> "SoleWriterStorage":
    """The storage the search's searcher writes its study through: on the driver's local disk, with fast
    commits, its trials kept in memory."""
    return SoleWriterStorage(fast_commits(study_storage(db)))


def _wal(connection, _record):
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def fast_commits(storage):
    """Optuna commits every parameter of every trial on its own, and SQLite's default journal syncs the disk
    at each commit (about 4 ms each, 10 per suggestion of `full`); in WAL mode with synchronous=NORMAL a
    commit survives a killed process and syncs only at checkpoints. WAL needs a local disk (not NFS), and
    the setting lives on the engine, which Optuna rebuilds when a storage is unpickled: call it again then."""
    from sqlalchemy import event
    if not event.contains(storage.engine, "connect", _wal):
        event.listen(storage.engine, "connect", _wal)
        storage.engine.dispose()  # connections opened before the listener have the default journal
    return storage


class SoleWriterStorage(_CachedStorage):
    """Optuna's cache of an RDB study (what optuna.create_study wraps a storage in) for a study with one
    writer: the search's driver. Optuna's cache reads every unfinished trial back from SQLite at each read,
    since another process may have changed it, and TPE reads the study several times per suggestion: at
    width, with a trial per slot RUNNING, that re-reading was most of a suggestion's time (ray-project/ray
    #18903). Here the trials are read once and every write goes to SQLite first (the record a kill leaves)
    and then into the copy in memory. Only valid while nothing else writes the study: run.py mends it
    (tune.pruning.catch_up) before the searcher reads it, and closes lost trials after the search. A write
    that fails part way drops the copy, to be read again. Ray calls the searcher from one thread."""

    def __init__(self, backend):
        super().__init__(backend)
        self._loaded = set()   # the studies whose trials are all in memory

    def __getstate__(self):
        # Ray pickles the searcher at each snapshot; a resumed search reads the file again, not this copy
        # (the file is the record, and run.py may have mended it since)
        return {**super().__getstate__(), "_studies": {}, "_trial_id_to_study_id_and_number": {},
                "_study_id_and_number_to_trial_id": {}, "_loaded": set()}

    def __setstate__(self, state):
        super().__setstate__(state)
        fast_commits(self._backend)   # Optuna rebuilds the engine when unpickled, without the fast commits

    @property
    def url(self) -> str:
        return self._backend.url

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        if study_id not in self._loaded:
            super()._read_trials_from_remote_storage(study_id)
            self._loaded.add(study_id)

    def _cached(self, trial_id: int):
        """The trial's copy in memory, or None where its study is not read yet (it will be, whole)."""
        where = self._trial_id_to_study_id_and_number.get(trial_id)
        return self._studies[where[0]].trials[where[1]] if where else None

    @contextmanager
    def _written(self, trial_id: int):
        """A write to a trial, to the file and then to memory: if any of it fails, the copy of the trial's
        study is dropped, to be read again from the file at its next read."""
        try:
            yield
        except BaseException:
            if (where := self._trial_id_to_study_id_and_number.get(trial_id)) is not None:
                self._forget(where[0])
            raise

    def _forget(self, study_id: int) -> None:
        self._loaded.discard(study_id)
        for number, t in self._studies.pop(study_id).trials.items():
            self._trial_id_to_study_id_and_number.pop(t._trial_id, None)
            self._study_id_and_number_to_trial_id.pop((study_id, number), None)

    def create_new_trial(self, study_id: int, template_trial=None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        if template_trial is not None:   # the copy in memory is the template's: take the trial as written
            with self._written(trial_id):
                self._replace(trial_id)
        return trial_id

    def _replace(self, trial_id: int) -> None:
        study_id, number = self._trial_id_to_study_id_and_number[trial_id]
        self._studies[study_id].trials[number] = self._backend.get_trial(trial_id)

    def get_trial(self, trial_id: int):
        t = self._cached(trial_id)
        if t is None:
            return self._backend.get_trial(trial_id)
        return t if t.state.is_finished() else copy.deepcopy(t)   # as Optuna's: a running trial's snapshot

    def set_trial_param(self, trial_id, param_name, param_value_internal, distribution) -> None:
        with self._written(trial_id):
            super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
            if t := self._cached(trial_id):
                t.params[param_name] = distribution.to_external_repr(param_value_internal)
                t.distributions[param_name] = distribution

    def set_trial_state_values(self, trial_id, state, values=None) -> bool:
        with self._written(trial_id):
            changed = super().set_trial_state_values(trial_id, state, values)
            if changed and trial_id in self._trial_id_to_study_id_and_number:
                self._replace(trial_id)   # the backend sets the start and end times (twice per trial)
        return changed

    def set_trial_intermediate_value(self, trial_id, step, intermediate_value) -> None:
        with self._written(trial_id):
            super().set_trial_intermediate_value(trial_id, step, intermediate_value)
            if t := self._cached(trial_id):
                t.intermediate_values[step] = intermediate_value

    def set_trial_user_attr(self, trial_id, key, value) -> None:
        with self._written(trial_id):
            super().set_trial_user_attr(trial_id, key, value)
            if t := self._cached(trial_id):
                t.user_attrs[key] = json.loads(json.dumps(value))   # as read back from the file

    def set_trial_system_attr(self, trial_id, key, value) -> None:
        with self._written(trial_id):
            super().set_trial_system_attr(trial_id, key, value)
            if t := self._cached(trial_id):
                t.system_attrs[key] = json.loads(json.dumps(value))


def backup_study(db: Path, dest: Path) -> None:
    """A consistent copy of a live study file (with what its WAL holds), through SQLite's backup API."""
    import sqlite3
    src, out = sqlite3.connect(db), sqlite3.connect(dest)
    try:
        src.backup(out)
    finally:
        out.close()
        src.close()
