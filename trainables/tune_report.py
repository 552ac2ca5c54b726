"""The trainer's only contact with Ray: report each epoch with a checkpoint, resume from the newest one."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from tune.trials import checkpoint_state, checkpoints, delete_checkpoints, last_checkpoint_index

from .config import TrainConfig
from .reporting import Reporter


class TuneReporter(Reporter):
    """Reports each epoch to Tune, with where the trial ran (device, the GPU ids Ray gave it, its node), and
    a checkpoint at the last epoch and whenever one is due: a checkpoint (the write, Ray's copy to storage)
    is taken once at least ten times its cost has passed since the last, so saving costs at most about a
    tenth of a trial's time, and a kill loses at most that much training, or one epoch."""

    def __init__(self, placement: dict, epochs: int):
        self.placement, self.epochs = placement, epochs
        self.cost = 0.0                  # seconds the last checkpoint added to its report
        self.plain = 0.0                 # seconds a report without one took (the driver's round trip)
        self.since = time.monotonic()    # when the last checkpoint was done

    def epoch(self, metrics, save):
        start, row = time.monotonic(), {**metrics, **self.placement}
        if metrics["epoch"] < self.epochs and start - self.since < 10 * self.cost:
            tune.report(row)
            self.plain = time.monotonic() - start
            return
        with tempfile.TemporaryDirectory() as d:  # tune.report copies it into the trial's storage
            save(Path(d))
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))
        drop_stale()
        self.since = time.monotonic()
        self.cost = max(self.since - start - self.plain, 0.0)


def drop_stale() -> None:
    """Keep of the trial's checkpoint folders only the newest whole one: the one it just reported (Ray has
    it by then), or the copy a resumed trial started from. Ray keeps them all (no num_to_keep: tune/search.py),
    and a kill leaves others: a copy cut short, ones Ray's snapshot did not know. A snapshot taken before the
    report names the one before, which a resume then does without (tune.search.RestartedTrials)."""
    storage = tune.get_context().get_storage()
    delete_checkpoints(storage.storage_filesystem, storage.trial_fs_path, keep_newest=True)


def state_of(checkpoint: tune.Checkpoint | None) -> dict | None:
    return checkpoint_state(checkpoint.filesystem, checkpoint.path) if checkpoint else None


def trial_device(gpu_ids: list, cuda_available: bool) -> str:
    """The device of a trial: Ray sets CUDA_VISIBLE_DEVICES to the GPUs it gave a trial, but leaves it as it
    is for a trial given none, so "a GPU is visible" would put every such trial on GPU 0 outside Ray's count.
    (Logical GPUs on a machine without CUDA, as in the tests, train on the CPU.)"""
    return "cuda" if gpu_ids and cuda_available else "cpu"


def tune_trainable(config: dict) -> None:
    """Ray Tune function trainable: one config dict in, one report per epoch out.

    After a killed driver, Ray restores each trial from its last experiment snapshot: a trial may come
    back with an older checkpoint than it had saved, or with none at all. The trial's folder in the
    search's storage (where Ray says it is) holds the truth, so the newest checkpoint there wins; the
    epochs Ray has not seen are replayed from its history (ASHA may stop the trial then, as it would
    have) instead of trained again.
    """
    import torch

    from .train import free_memory, train  # here, not at the top: the search's driver needs no fastai
    from .learner import loader_workers
    cfg = TrainConfig.from_dict(config)
    gpu_ids = ray.get_gpu_ids()
    if not gpu_ids:  # Ray leaves a GPU-less trial's CUDA_VISIBLE_DEVICES as it is: fastai would touch GPU 0
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    device = trial_device(gpu_ids, torch.cuda.is_available())
    granted = tune.get_context().get_trial_resources().required_resources
    share = min(1.0, granted.get("GPU", 0.0)) or 1.0
    # Ray sets OMP_NUM_THREADS to a trial's CPUs only where it is unset (`ray up` sets it to 1): torch's
    # threads, and the loader processes counted from them, follow what Ray gave this trial
    torch.set_num_threads(max(1, int(granted.get("CPU", 1))))
    place = dict(device=device, gpu_share=share)
    reporter = TuneReporter({"device": device, "gpu_ids": ",".join(map(str, gpu_ids)),  # text: not a TensorBoard scalar
                             "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                             "threads": torch.get_num_threads(),
                             "loader_workers": loader_workers(cfg)}, cfg.epochs)
    free_memory()  # this process may have run an earlier trial (Tune reuses actors)
    given = tune.get_checkpoint()
    storage = tune.get_context().get_storage()  # a DeveloperAPI: the trial's folder and its filesystem
    fs = storage.storage_filesystem
    paths = checkpoints(fs, storage.trial_fs_path)
    # Ray numbers a restarted trial's next checkpoint from its snapshot, which can be older than the folder:
    # that copy would go into an existing folder, and a kill during it could spoil the newest whole one
    storage.current_checkpoint_index = max(storage.current_checkpoint_index, last_checkpoint_index(paths))
    found = [tune.Checkpoint(p, filesystem=fs) for p in paths]
    given_state = state_of(given)
    usable = [(st, c) for st, c in [(given_state, given), *((state_of(c), c) for c in found)] if st]
    if not usable:
        train(cfg, [reporter], **place)
    else:
        state, newest = max(usable, key=lambda sc: sc[0]["epoch"])
        seen = (given_state or {"epoch": 0})["epoch"]
        history = state["history"]
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(newest.to_directory(str(Path(tmp) / "newest")))  # Ray may reuse its folder's name
            replay = history[seen:]
            for i, metrics in enumerate(replay):  # Ray copies the checkpoint of the last row only
                last = i == len(replay) - 1
                tune.report({**metrics, **reporter.placement},
                            checkpoint=tune.Checkpoint.from_directory(str(local)) if last else None)
            drop_stale()   # the copies left beside the one it resumes from
            if len(history) < cfg.epochs:
                train(cfg, [reporter], resume_from=local, **place)
    free_memory()

