"""--time-budget: the driver's running time a search may take, across resumes.

When it is spent, no trial starts (the searcher says it is finished) and each running trial is stopped at
its next result, that is once it has finished the epoch it is in, so nothing it trained is lost. Ray's own
time_budget_s is not used: it ends the experiment at once and the running trials' last epochs with it
(ray-project/ray#34136).

The time spent is kept in results/<name>/budget.json: when this run of the driver started, how much the
runs before it spent, and when this run was last seen alive (updated at most every few seconds), so a
driver killed and resumed counts the time it ran, not the time it was down.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ray.tune import Stopper

from trainables.files import write_json
from tune.cli import UsageError
from tune.trials import BUDGET_FILE

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SEEN_EVERY_S = 5.0


def parse_duration(text: str) -> float:
    """Seconds of '7200', '90m', '2h', '1h30m', '1.5h' or '45s'; a duration that is not one is one line."""
    t = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", t)
    if re.fullmatch(r"\d+(?:\.\d+)?", t):
        seconds = float(t)
    elif parts and "".join(n + u for n, u in parts) == t:
        seconds = sum(float(n) * UNITS[u] for n, u in parts)
    else:
        raise UsageError(f"--time-budget {text!r}: give seconds or a duration such as 90m, 2h or 1h30m")
    if seconds <= 0:
        raise UsageError(f"--time-budget {text!r} must be more than no time")
    return seconds


def shown(seconds: float) -> str:
    """A duration as a person reads it: 45s, 12m 05s, 3h 20m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def spent_before(home: str | Path) -> float:
    """The time the driver's earlier runs of the search in `home` spent, each up to when it was last seen."""
    f = Path(home) / BUDGET_FILE
    if not f.is_file():
        return 0.0
    old = json.loads(f.read_text())
    return old["spent_before_s"] + max(0.0, old["last_seen"] - old["started"])


class Budget:
    """The budget of the search whose driver folder is `home`, as this driver process counts it."""

    def __init__(self, home: str | Path):
        self.file = Path(home) / BUDGET_FILE
        state = json.loads(self.file.read_text())
        self.limit_s, self.before_s, self.started = state["limit_s"], state["spent_before_s"], state["started"]
        self._seen = 0.0

    @classmethod
    def begin(cls, home: Path, limit_s: float) -> "Budget":
        """A run of the driver starts: what earlier runs spent (up to when each was last seen) carries over."""
        now = time.time()
        write_json(Path(home) / BUDGET_FILE, {"limit_s": limit_s, "spent_before_s": spent_before(home),
                                              "started": now, "last_seen": now})
        return cls(home)

    def spent_s(self) -> float:
        return self.before_s + time.time() - self.started

    def left_s(self) -> float:
        return max(0.0, self.limit_s - self.spent_s())

    def over(self) -> bool:
        return self.spent_s() >= self.limit_s

    def seen(self, force: bool = False) -> None:
        """Note that the driver is alive now (what a kill would otherwise lose of the time spent)."""
        now = time.time()
        if force or now - self._seen >= SEEN_EVERY_S:
            self._seen = now
            write_json(self.file, {"limit_s": self.limit_s, "spent_before_s": self.before_s,
                                   "started": self.started, "last_seen": now})


class BudgetStopper(Stopper):
    """Ray's per-result stop hook: once the budget is spent, the trial that just reported stops there."""

    def __init__(self, home: str):
        self.home = home
        self._budget = None   # read in the driver process that runs the search (a resume unpickles this)

    def __getstate__(self):
        return {"home": self.home, "_budget": None}

    def budget(self) -> Budget:
        if self._budget is None:
            self._budget = Budget(self.home)
        return self._budget

    def __call__(self, trial_id, result) -> bool:
        b = self.budget()
        b.seen()
        return b.over()

    def stop_all(self) -> bool:
        return False   # running trials end at their next result, not mid-epoch
