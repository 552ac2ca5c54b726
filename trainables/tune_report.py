"""The trainer's only contact with Ray: report each epoch with a checkpoint, resume from the newest one."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import ray
from ray import tune

from tune.trials import checkpoints, read_text

from .config import TrainConfig
from .reporting import STATE_FILE, Reporter


class TuneReporter(Reporter):
    """Reports each epoch to Tune, with where the trial ran (device, the GPU ids Ray gave it, its node)."""

    def __init__(self, placement: dict):
        self.placement = placement

    def epoch(self, metrics, save):
        with tempfile.TemporaryDirectory() as d:  # tune.report copies it into the trial's storage
            save(Path(d))
            tune.report({**metrics, **self.placement}, checkpoint=tune.Checkpoint.from_directory(d))


def epoch_of(checkpoint: tune.Checkpoint | None) -> int:
    """Epochs a checkpoint holds; 0 for none, -1 for one cut short."""
    if checkpoint is None:
        return 0
    try:
        return json.loads(read_text(checkpoint.filesystem, f"{checkpoint.path}/{STATE_FILE}"))["epoch"]
    except (TypeError, ValueError, KeyError):
        return -1


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
    cfg = TrainConfig.from_dict(config)
    gpu_ids = ray.get_gpu_ids()
    device = trial_device(gpu_ids, torch.cuda.is_available())
    share = min(1.0, tune.get_context().get_trial_resources().required_resources.get("GPU", 0.0)) or 1.0
    place = dict(device=device, gpu_share=share)
    reporter = TuneReporter({"device": device, "gpu_ids": ",".join(map(str, gpu_ids)),  # text: not a TensorBoard scalar
                             "node_id": ray.get_runtime_context().get_node_id()})
    free_memory()  # this process may have run an earlier trial (Tune reuses actors)
    given = tune.get_checkpoint()
    storage = tune.get_context().get_storage()  # a DeveloperAPI: the trial's folder and its filesystem
    found = [tune.Checkpoint(p, filesystem=storage.storage_filesystem)
             for p in checkpoints(storage.storage_filesystem, storage.trial_fs_path)]
    newest = max([given, *found], key=epoch_of)
    if newest is None or epoch_of(newest) <= 0:
        train(cfg, [reporter], **place)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(newest.to_directory(str(Path(tmp) / "newest")))  # Ray may reuse its folder's name
            history = json.loads((local / STATE_FILE).read_text())["history"]
            for metrics in history[max(epoch_of(given), 0):]:
                tune.report({**metrics, **reporter.placement}, checkpoint=tune.Checkpoint.from_directory(str(local)))
            if len(history) < cfg.epochs:
                train(cfg, [reporter], resume_from=local, **place)
    free_memory()
