"""The live view of a search in the terminal: one line of overall progress, then the leading and running trials.

Written on Ray's ProgressReporter interface because Ray's CLIReporter cannot be made to do this: it prints
its logdir and full-precision bracket and best-trial lines in every block, a node column, every parameter
in a column of its own (about 180 characters wide for smoke), and a trial ASHA stopped as TERMINATED like
one that completed.
"""
from __future__ import annotations

import shutil
import sys
import time

from ray.tune import ProgressReporter

from tune.budget import Budget, shown
from tune.cli import compact
from tune.trials import ended_as

WIDTH = 120           # at most, and less on a narrower terminal
LEADERS = 5           # the best trials shown besides the running ones
SHORT = {"label_smoothing": "ls", "mixup_alpha": "mixup", "resize_start": "rs_start", "resize_frac": "rs_frac",
         "normalize": "norm", "holdout_frac": "hold", "min_scale": "min_sc"}


class SearchProgress(ProgressReporter):
    """`params`: the searched keys, shown per trial; `max_epochs`: a trial that ends before it was stopped
    (pruned, or by the time budget); `budget`: the driver's folder of a search with --time-budget."""

    def __init__(self, name: str, samples: int, max_epochs: int, params: list[str], budget: str | None = None,
                 every_s: float = 15.0):
        self.name, self.samples, self.max_epochs, self.params = name, samples, max_epochs, params
        self.budget, self.every_s = budget, every_s   # no stream kept: Ray pickles the reporter with the tuner
        self._last = 0.0
        self._start = time.time()

    def setup(self, start_time=None, total_samples=None, metric=None, mode=None, **kwargs):
        self._start = start_time or time.time()
        self.samples = total_samples or self.samples   # Ray's count: a resumed search may have been extended

    def should_report(self, trials, done=False) -> bool:
        return done or time.time() - self._last >= self.every_s

    def report(self, trials, done, *sys_info):
        self._last = time.time()
        width = min(WIDTH, shutil.get_terminal_size().columns) if sys.stdout.isatty() else WIDTH
        print("\n".join([self.overview(trials), *self.table(trials, width)]) + "\n", flush=True)

    def status(self, trial) -> str:
        epochs = self.epochs(trial)
        if trial.status == "TERMINATED":
            ended = ended_as(epochs, self.max_epochs)
            return ended if ended == "completed" else f"{ended}@{epochs}"
        return {"ERROR": "errored", "RUNNING": "running", "PENDING": "pending", "PAUSED": "paused"}.get(
            trial.status, trial.status.lower())

    @staticmethod
    def epochs(trial) -> int:
        return int((trial.last_result or {}).get("epoch") or 0)

    def overview(self, trials) -> str:
        states = [self.status(t) for t in trials]
        done = sum(s == "completed" for s in states)
        pruned = sum(s.startswith("pruned") for s in states)
        errored = states.count("errored")
        running = states.count("running")
        used = sum(self.epochs(t) for t in trials)
        elapsed = time.time() - self._start
        parts = [f"trials: {done} completed, {pruned} pruned, {errored} errored, {running} running of {self.samples}",
                 f"epochs {used}/{self.samples * self.max_epochs}", f"{shown(elapsed)} elapsed"]
        left = self.time_left(trials, used, elapsed)
        if left is not None:
            parts[-1] += f", ~{shown(left)} left"
        if self.budget:
            parts.append(f"budget {shown(Budget(self.budget).left_s())} left")
        return " | ".join(parts)

    def time_left(self, trials, used: int, elapsed: float) -> float | None:
        """From the epochs a trial has taken so far (ASHA stops many early) and the rate of epochs so far."""
        ended = [self.epochs(t) for t in trials if t.status in ("TERMINATED", "ERROR")]
        if not used or not ended:  # nothing yet to say how long a trial takes
            return None
        per_trial = sum(ended) / len(ended)
        running = [self.epochs(t) for t in trials if t.status not in ("TERMINATED", "ERROR")]
        to_go = (self.samples - len(trials)) * per_trial + sum(max(0.0, per_trial - e) for e in running)
        return to_go * elapsed / used

    def table(self, trials, width: int) -> list[str]:
        def best(t):
            return (t.metric_analysis.get("accuracy") or {}).get("max")
        scored = sorted((t for t in trials if best(t) is not None), key=best, reverse=True)
        shown_ = scored[:LEADERS] + [t for t in trials if t.status == "RUNNING" and t not in scored[:LEADERS]]
        if not shown_:
            return []
        head = f"{'trial':<14}{'status':<11}{'epoch':>5}{'acc':>7}{'best':>7}  config"
        rows = [head]
        for t in shown_:
            acc = (t.last_result or {}).get("accuracy")
            b = best(t)
            cfg = " ".join(f"{SHORT.get(k, k)}={compact(t.config.get(k))}" for k in self.params if k in t.config)
            row = (f"{t.trial_id:<14}{self.status(t):<11}{self.epochs(t):>5}"
                   f"{'' if acc is None else f'{acc:.3f}':>7}{'' if b is None else f'{b:.3f}':>7}  {cfg}")
            rows.append(row if len(row) <= width else row[:width - 1] + "…")
        if len(scored) > LEADERS:
            rows.append(f"({len(scored) - LEADERS} more scored; all of them: leaderboard.csv at the end)")
        return rows
