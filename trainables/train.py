"""train(config): one fastai fit over all epochs, with progressive resizing, per-epoch reports and resume.

One schedule (one-cycle or flat-cos) spans every epoch; progressive resizing swaps the training loader
between epochs inside that fit, and validation always runs at the final size, so any two trials are
comparable at the same epoch. Random state is re-derived from (seed, epoch) at the start of every epoch,
so a checkpoint needs only the model, the optimizer and the epoch: on a CPU a resumed run equals an
uninterrupted one bit for bit (tested). On a GPU it draws the same batches and augmentations, but
cudnn.benchmark's choice of kernels and non-deterministic atomics make the weights differ in the low bits.
"""
from __future__ import annotations

import gc
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from fastai.callback.core import Callback
import fastai.callback.schedule  # noqa: F401  (adds fit_one_cycle, fit_flat_cos to Learner)
from fastai.callback.progress import ProgressCallback
from fastai.learner import Learner, Recorder
from fastai.metrics import accuracy as accuracy_fn
from fastai.torch_core import set_seed

from .config import TrainConfig
from .data import folders_for, index, prepare
from .learner import build_dls, build_learner, default_device
from .reporting import STATE_FILE, Reporter


@dataclass
class TrainResult:
    config: dict
    history: list = field(default_factory=list)
    accuracy: Optional[float] = None
    accuracy_tta: Optional[float] = None
    learn: Optional[Learner] = None

    def summary(self) -> dict:
        best = max((h["accuracy"] for h in self.history), default=None)
        return {"config": self.config, "epochs": len(self.history), "accuracy": self.accuracy,
                "accuracy_tta": self.accuracy_tta, "best_accuracy": best, "history": self.history}


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EpochSetup(Callback):
    """Before each epoch: pick the training loader of that epoch's size and reseed every RNG from (seed, epoch)."""
    order = -20  # before fastai's own callbacks touch the loaders

    def __init__(self, cfg: TrainConfig, stages: dict):
        self.cfg, self.stages = cfg, stages

    def before_epoch(self):
        self.learn.dls.loaders[0] = self.stages[self.cfg.size_at(self.epoch)]
        s = epoch_seed(self.cfg.seed, self.epoch)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)
        for i, dl in enumerate(self.learn.dls.loaders):
            dl.rng = random.Random(s + i + 1)


class EpochMetrics(Callback):
    """After each epoch: the reported metrics; train_loss is the epoch's mean (fastai's smoothed loss would
    carry over from earlier epochs and differ after a resume), images/s counts training time only."""
    order = Recorder.order + 1  # after the Recorder has its epoch's values

    def __init__(self, cfg: TrainConfig, start_epoch: int, emit):
        self.cfg, self.start_epoch, self.emit = cfg, start_epoch, emit

    def before_train(self):
        self.images, self.loss_sum, self.t0 = 0, 0.0, time.perf_counter()

    def after_batch(self):
        if self.training:
            n = self.y.shape[0]
            self.images += n
            self.loss_sum = self.loss_sum + self.learn.loss.detach() * n  # a tensor: no GPU sync per batch

    def after_train(self):
        if self.dls.device.type == "cuda":
            torch.cuda.synchronize()
        self.train_s = time.perf_counter() - self.t0

    def after_epoch(self):
        if self.epoch < self.start_epoch:  # fastai's start_epoch skips epochs by cancelling them
            return
        log = dict(zip(self.recorder.metric_names, self.recorder.log))
        self.emit({
            "epoch": self.epoch + 1,
            "train_loss": float(self.loss_sum) / max(self.images, 1),
            "valid_loss": float(log["valid_loss"]),
            "accuracy": float(log["accuracy"]),
            "lr": float(self.opt.hypers[-1]["lr"]),
            "size": self.cfg.size_at(self.epoch),
            "epoch_s": time.perf_counter() - self.t0,
            "images_per_s": self.images / max(self.train_s, 1e-9),
            **({"cache_on": self.dls.cache_on} if hasattr(self.dls, "cache_on") else {}),   # the tensor path's
        })


def save_checkpoint(learn: Learner, d: Path, epoch: int, history: list, with_opt: bool = True) -> None:
    """The model (with its optimizer while the run can go on), then its state: the epoch, the metrics so far
    and the size of each file, so a reader can tell a checkpoint cut short by a kill (tune.trials)."""
    d = Path(d)
    learn.save(d.resolve() / "model", with_opt=with_opt)
    files = {f.name: f.stat().st_size for f in d.iterdir() if f.name != STATE_FILE}
    (d / STATE_FILE).write_text(json.dumps({"epoch": epoch, "history": history, "files": files}))


def train(cfg: TrainConfig, reporters: Sequence[Reporter] = (), resume_from: Path | None = None,
          progress: bool = False, cbs: Sequence[Callback] = (), device: str | None = None,
          gpu_share: float = 1.0) -> TrainResult:
    """Train one config; given a checkpoint folder, continue at its next epoch and end as if never stopped.

    `cbs` are extra fastai callbacks for this fit (profiling, inspection). `device` ("cuda", "cpu") is where
    it trains; by default the GPU when one is visible (a Ray trial passes the device Ray gave it, and its
    share of that GPU, `gpu_share`).
    """
    set_seed(cfg.seed)
    dev = torch.device(device) if device else default_device()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    idx = index(prepare(cfg.data), folders_for(cfg.split))
    dls, stages = build_dls(cfg, idx, dev, gpu_share)
    learn = build_learner(cfg, dls)
    if not progress:  # fastai's bars stay only when asked for; the reporters print the epoch lines
        learn.remove_cb(ProgressCallback)

    result = TrainResult(config=cfg.to_dict(), learn=learn)
    start = 0
    if resume_from is not None:
        state = json.loads((Path(resume_from) / STATE_FILE).read_text())
        learn.load((Path(resume_from) / "model").resolve(), with_opt=True, device=dls.device)
        start, result.history = state["epoch"], state["history"]

    pending = {}

    def emit(metrics):
        result.history.append(metrics)
        if metrics["epoch"] == cfg.epochs:  # the last epoch is reported once TTA is known
            pending.update(metrics)
            return
        publish(metrics)

    def publish(metrics):
        epoch, history = metrics["epoch"], list(result.history)
        for r in reporters:
            # the last epoch's checkpoint is never trained on: its weights without the optimizer's state
            r.epoch(metrics, lambda d: save_checkpoint(learn, d, epoch, history, with_opt=epoch < cfg.epochs))

    try:
        if start < cfg.epochs:
            fit = learn.fit_one_cycle if cfg.lr_schedule == "one_cycle" else learn.fit_flat_cos
            with learn.no_logging():
                fit(cfg.epochs, cfg.lr, wd=cfg.wd, start_epoch=start,
                    cbs=[EpochSetup(cfg, stages), EpochMetrics(cfg, start, emit), *cbs])
        result.accuracy = result.history[-1]["accuracy"] if result.history else None
        if pending:
            if cfg.tta:
                t0 = time.perf_counter()
                preds, targs = learn.tta()
                result.accuracy_tta = float(accuracy_fn(preds, targs))
                pending.update(accuracy_tta=result.accuracy_tta, tta_s=time.perf_counter() - t0)
                result.history[-1] = dict(pending)
            publish(pending)
    except BaseException:
        # Stopped by the scheduler (Ray raises SystemExit in report) or failed: the traceback keeps this
        # frame alive, so drop the learner's tensors here for the memory (GPU too) to come back now.
        stages.clear()
        learn.model = learn.opt = learn.dls = None
        learn._end_cleanup()
        dls = learn = result.learn = None  # noqa: F841
        free_memory()
        raise
    for r in reporters:
        r.end(result.summary())
    return result


def free_memory() -> None:
    """Collect what earlier trials left and hand cached GPU memory back to the device (on a CPU, plain
    reference counting frees it, and a full collection would cost a quarter of a second per trial)."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
