"""Where per-epoch metrics go: a small interface, so the trainer runs the same with or without Ray Tune."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

SaveFn = Callable[[Path], None]  # writes a resumable checkpoint into the given folder
STATE_FILE = "state.json"        # in a checkpoint: its epoch and the metrics so far, written after the model

EPOCH_KEYS = ("epoch", "train_loss", "valid_loss", "accuracy", "lr", "size", "epoch_s", "images_per_s")
TIMING_KEYS = ("epoch_s", "images_per_s", "tta_s")  # the metrics that differ between two runs of one config


class Reporter:
    """Receives each epoch's metrics (plus `accuracy_tta` and `tta_s` on the last one when TTA is on) and the
    run's end."""

    def epoch(self, metrics: dict, save: SaveFn) -> None:
        pass

    def end(self, result: dict) -> None:
        pass


class ConsoleReporter(Reporter):
    def __init__(self, stream=sys.stdout):
        self.stream = stream

    def epoch(self, metrics, save):
        extra = f"  accuracy_tta {metrics['accuracy_tta']:.4f}" if "accuracy_tta" in metrics else ""
        print(f"epoch {metrics['epoch']:>3}  size {metrics['size']:>4}  train_loss {metrics['train_loss']:.4f}  "
              f"valid_loss {metrics['valid_loss']:.4f}  accuracy {metrics['accuracy']:.4f}{extra}  "
              f"lr {metrics['lr']:.2e}  {metrics['epoch_s']:.1f}s  {metrics['images_per_s']:.0f} img/s",
              file=self.stream, flush=True)


class TensorBoardReporter(Reporter):
    """Scalars per epoch (step = epoch, as in the search's curves) and the config as HParams at the end."""

    def __init__(self, logdir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(logdir))
        self.config = config

    def epoch(self, metrics, save):
        for k, v in metrics.items():
            if k != "epoch":
                self.writer.add_scalar(k, v, metrics["epoch"])
        self.writer.flush()

    def end(self, result):
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in self.config.items()}
        final = {f"final/{k}": result[k] for k in ("accuracy", "accuracy_tta") if result.get(k) is not None}
        self.writer.add_hparams(hp, final, run_name=".")
        self.writer.close()
