"""How sure a number is: the mean of seeds with its 95% interval, and two configs compared seed by seed."""
from __future__ import annotations

import statistics

from scipy import stats as _stats

LEVEL = 0.95


def interval(xs: list[float], level: float = LEVEL) -> dict:
    """Mean, std and Student's t interval of the mean (n - 1 degrees of freedom): with 3 seeds the interval
    is about 2.5 stds wide on each side, which is what 3 seeds can say. With one value, no spread."""
    n, mean = len(xs), statistics.mean(xs)
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "low": None, "high": None, "level": level}
    std = statistics.stdev(xs)
    half = float(_stats.t.ppf((1 + level) / 2, n - 1)) * std / n ** 0.5
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half, "level": level}


def paired(a: dict, b: dict, level: float = LEVEL) -> dict:
    """a - b over the seeds both have ({seed: value}): each seed's two runs share their seed, so what the seed
    does to both cancels in the difference, as far as it does the same to both configs."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no seed in common: a paired comparison needs the same seeds on both sides")
    diffs = [a[s] - b[s] for s in seeds]
    out = interval(diffs, level)
    out.update(seeds=seeds, diffs=diffs, excludes_zero=bool(out["low"] is not None and (out["low"] > 0 or out["high"] < 0)))
    return out


def describe(iv: dict, scale: float = 100, unit: str = "") -> str:
    """'74.02 ± 0.45 (95% CI 72.9 to 75.1)' for a report or a console line."""
    if iv["std"] is None:
        return f"{scale * iv['mean']:.2f}{unit}"
    return (f"{scale * iv['mean']:.2f}{unit} ± {scale * iv['std']:.2f} ({iv['level']:.0%} CI "
            f"{scale * iv['low']:.2f} to {scale * iv['high']:.2f})")
