"""tune/budget.py: durations as a user types them, and the time spent carried across a kill and resume."""
import json

import pytest

from tune.budget import Budget, parse_duration, shown
from tune.cli import UsageError


@pytest.mark.parametrize("text, seconds", [("7200", 7200), ("90m", 5400), ("2h", 7200), ("1h30m", 5400),
                                           ("1.5h", 5400), ("45s", 45), (" 2H ", 7200), ("1d", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "2 hours", "1h 30m", "0", "0s", "-5m", "5mm"])
def test_what_is_not_a_duration_is_refused(text):
    with pytest.raises(UsageError, match="--time-budget"):
        parse_duration(text)


def test_a_resumed_search_counts_what_it_ran_before_not_the_time_it_was_down(tmp_path):
    first = Budget.begin(tmp_path, 600)
    state = json.loads((tmp_path / "budget.json").read_text())
    # killed 100 s after it started, last seen alive 90 s in; resumed an hour later
    (tmp_path / "budget.json").write_text(json.dumps({**state, "started": first.started - 3700,
                                                      "last_seen": first.started - 3610}))
    again = Budget.begin(tmp_path, 600)
    assert again.before_s == pytest.approx(90) and 509 < again.left_s() <= 510
    assert not again.over() and Budget(tmp_path).started == again.started


def test_shown():
    assert [shown(s) for s in (4, 65, 3600, 5430)] == ["4s", "1m 05s", "1h 00m", "1h 30m"]
