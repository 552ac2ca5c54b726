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
    """A final run in TensorBoard as a search's trials are (trainables/board.py): the same tags per epoch
    (step = epoch), so its curves overlay theirs, and its own row of the HParams table."""

    def __init__(self, logdir: Path, config: dict):
        import time

        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(logdir))
        self.config = config
        self.started = time.time()

    def epoch(self, metrics, save):
        from .board import log_epoch
        log_epoch(self.writer, metrics)

    def end(self, result):
        from .board import log_session
        history = result.get("history") or []
        log_session(self.writer, self.config, "completed", history,
                    sum(h.get("epoch_s", 0.0) for h in history) or None, self.started)
        self.writer.close()
