"""The trainer's only contact with Ray: report each epoch with a checkpoint, resume from the newest one."""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from ray import tune

from .config import TrainConfig
from .reporting import Reporter


class TuneReporter(Reporter):
    def epoch(self, metrics, save):
        with tempfile.TemporaryDirectory() as d:  # tune.report copies it into the trial's storage
            save(Path(d))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def epoch_of(folder: Path | None) -> int:
    """Epochs a checkpoint folder holds; 0 for none, -1 for one cut short."""
    if folder is None:
        return 0
    try:
        return json.loads((Path(folder) / "state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return -1


def tune_trainable(config: dict, experiment: str | None = None) -> None:
    """Ray Tune function trainable: one config dict in, one report per epoch out.

    After a killed driver, Ray restores each trial from its last experiment snapshot: a trial may come
    back with an older checkpoint than it had saved, or with none at all. The trial's folder under
    `experiment` holds the truth, so the newest checkpoint there wins; the epochs Ray has not seen are
    replayed from its history (ASHA may stop the trial then, as it would have) instead of trained again.
    """
    from .train import free_memory, train  # here, not at the top: the search's driver needs no fastai
    cfg = TrainConfig.from_dict(config)
    free_memory()  # this process may have run an earlier trial (Tune reuses actors)
    handed = tune.get_checkpoint()
    given_ctx = handed.as_directory() if handed else contextlib.nullcontext()
    with given_ctx as given, tempfile.TemporaryDirectory() as tmp:
        given = Path(given) if given else None
        trial_dir = Path(experiment, tune.get_context().get_trial_id()) if experiment else None
        found = list(trial_dir.glob("checkpoint_*")) if trial_dir else []
        newest = max([given, *found], key=epoch_of)
        if newest is None or epoch_of(newest) <= 0:
            train(cfg, [TuneReporter()])
        else:
            newest = Path(shutil.copytree(newest, Path(tmp) / "newest"))  # Ray may reuse its folder's name
            history = json.loads((newest / "state.json").read_text())["history"]
            for metrics in history[max(epoch_of(given), 0):]:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(newest)))
            if len(history) < cfg.epochs:
                train(cfg, [TuneReporter()], resume_from=newest)
    free_memory()
