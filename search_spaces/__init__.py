"""Search spaces as data: {config key: distribution or fixed value}, checked against the training config.

A space is a YAML or JSON mapping. Each key is a config key (see trainables/config.py) whose value is
either fixed (`arch: tiny`) or one distribution:

    lr:              {loguniform: [1.0e-4, 1.0e-2]}
    mixup_alpha:     {uniform: [0.0, 1.0]}
    resize_start:    {int: [64, 128, 16]}        # low, high (inclusive), optional step
    normalize:       {choice: [imagenet, dataset]}

Three keys are not config keys: `description` (one line for --list-spaces), `search` (defaults for the
search's options: samples, max_epochs, grace_period, reduction_factor) and `requires: gpu` (a space too
slow for CPUs: tune/run.py refuses it on a Ray without GPUs unless told --allow-cpu). The named spaces live beside this
file; `--space my_space.yaml` loads a user's own. Trials validate on `split: holdout` (a stratified part
of train/; val/ is not read) unless the space or `--set split=val` says otherwise.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trainables.config import FIELDS, ConfigError, base_type, check_value, coerce, unknown_key_message

HERE = Path(__file__).resolve().parent
KINDS = ("uniform", "loguniform", "int", "choice")
SEARCH_SPLIT = "holdout"   # unless a space or --set names another
SEARCH_OPTIONS = {"samples": int, "max_epochs": int, "grace_period": int, "reduction_factor": int}


def searched_keys(raw: dict) -> set:
    """The keys a space in its file format searches, read as written: a space an older version saved with a
    search need not parse now (a key since removed, say)."""
    return {k for k, v in raw.items() if isinstance(v, dict) and len(v) == 1 and next(iter(v)) in KINDS}


class SpaceError(ConfigError):
    """A space that cannot be searched; one line naming the key and the problem."""


@dataclass(frozen=True)
class Dist:
    kind: str       # one of KINDS
    args: tuple     # uniform/loguniform: (low, high); int: (low, high, step); choice: the values

    @property
    def values_at_bounds(self) -> tuple:
        return self.args if self.kind == "choice" else self.args[:2]

    def describe(self) -> str:
        if self.kind == "choice":
            return "choice of " + ", ".join(str(v) for v in self.args)
        if self.kind == "int":
            lo, hi, step = self.args
            return f"int {lo}..{hi}" + (f" step {step}" if step != 1 else "")
        return f"{self.kind} {self.args[0]:g}..{self.args[1]:g}"


@dataclass
class Space:
    name: str
    description: str = ""
    params: dict = field(default_factory=dict)   # key -> Dist
    fixed: dict = field(default_factory=dict)    # key -> value
    search: dict = field(default_factory=dict)   # defaults of the search's options
    requires: str | None = None                  # "gpu": too slow to search on CPUs

    def to_dict(self) -> dict:
        """The space in its own file format (saved with each search so that a resume needs no file)."""
        out = {"description": self.description, "search": dict(self.search), **self.fixed}
        if self.requires:
            out["requires"] = self.requires
        out.update({k: {d.kind: list(d.args)} for k, d in self.params.items()})
        return out


def named() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def load(name_or_path: str) -> Space:
    """A named space (`smoke`, `small`, `full`, ...) or a YAML/JSON file, validated against the config."""
    p = Path(name_or_path)
    if name_or_path in named():
        p, name = HERE / f"{name_or_path}.yaml", name_or_path
    elif p.suffix.lower() in (".yaml", ".yml", ".json"):
        if not p.is_file():
            raise SpaceError(f"space file not found: {p}")
        name = p.stem
    else:
        raise SpaceError(f"unknown space '{name_or_path}'; named spaces: {', '.join(named())} "
                         "(or give a .yaml/.json file)")
    try:
        text = p.read_text()
        raw = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SpaceError(f"{p} is malformed: {' '.join(str(e).split())}") from None
    return parse(raw, name)


def parse(raw, name: str) -> Space:
    if not isinstance(raw, dict):
        raise SpaceError(f"space '{name}' must be a mapping of config keys")
    raw = dict(raw)
    space = Space(name=name, description=str(raw.pop("description", "") or ""), requires=raw.pop("requires", None))
    if space.requires not in (None, "gpu"):
        raise SpaceError(f"space '{name}': requires must be gpu (or left out), got {space.requires!r}")
    search = raw.pop("search", None) or {}
    if not isinstance(search, dict):
        raise SpaceError(f"space '{name}': 'search' must be a mapping of {', '.join(SEARCH_OPTIONS)}")
    for k, v in search.items():
        if k not in SEARCH_OPTIONS:
            raise SpaceError(f"space '{name}': unknown search option '{k}' (use {', '.join(SEARCH_OPTIONS)})")
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise SpaceError(f"space '{name}': search option {k} must be a positive integer, got {v!r}")
    space.search = search
    for key, value in raw.items():
        if key not in FIELDS:
            raise SpaceError(f"space '{name}': {unknown_key_message(key)}")
        if isinstance(value, dict):
            space.params[key] = _dist(name, key, value)
        else:
            try:
                space.fixed[key] = coerce(key, value)
                check_value(key, space.fixed[key])
            except ConfigError as e:
                raise SpaceError(f"space '{name}': {e}") from None
    if "split" not in space.params:  # a search chooses on a holdout of train/ and never reads val/
        space.fixed.setdefault("split", SEARCH_SPLIT)
    if "epochs" in space.params:
        raise SpaceError(f"space '{name}': epochs must be fixed (it is ASHA's max_t); use --max-epochs")
    _check_cross_field(space)
    return space


def _dist(space: str, key: str, spec: dict) -> Dist:
    where = f"space '{space}', key {key}"
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise SpaceError(f"{where}: expected one of {{{', '.join(f'{k}: [...]' for k in KINDS)}}}, got {spec}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise SpaceError(f"{where}: {kind} needs a list of values")
    t = base_type(key)
    if kind == "choice":
        values = tuple(coerce(key, v) for v in args)
        if len(set(values)) != len(values):
            raise SpaceError(f"{where}: choice has duplicate values")
        dist = Dist(kind, values)
    else:
        if t not in (int, float):
            raise SpaceError(f"{where}: {key} is a {t.__name__}; use choice")
        if kind == "int":
            if len(args) not in (2, 3) or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
                raise SpaceError(f"{where}: int expects [low, high] or [low, high, step] as integers")
            lo, hi, step = (*args, 1) if len(args) == 2 else args
            if step < 1 or (hi - lo) % step:
                raise SpaceError(f"{where}: int step {step} must be >= 1 and divide high - low")
        else:
            if t is int:
                raise SpaceError(f"{where}: {key} is an integer; use int or choice")
            if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
                raise SpaceError(f"{where}: {kind} expects [low, high] as numbers")
            lo, hi, step = float(args[0]), float(args[1]), None
            if kind == "loguniform" and lo <= 0:
                raise SpaceError(f"{where}: loguniform needs low > 0, got {lo:g}")
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise SpaceError(f"{where}: impossible range [{lo}, {hi}] (low must be below high)")
        dist = Dist(kind, (lo, hi, step) if kind == "int" else (lo, hi))
    for v in dist.values_at_bounds:
        try:
            check_value(key, v)
        except ConfigError as e:
            raise SpaceError(f"{where}: range leaves the config's valid values ({e})") from None
    return dist


def _bounds(space: Space, key: str):
    """(smallest, largest) value a key can take in this space, or its default."""
    if key in space.fixed:
        return space.fixed[key], space.fixed[key]
    if key in space.params:
        vals = [v for v in space.params[key].values_at_bounds if v is not None]
        return (min(vals), max(vals)) if vals else (None, None)
    d = FIELDS[key].default
    return d, d


def _check_cross_field(space: Space) -> None:
    lo_size, _ = _bounds(space, "size")
    _, hi_start = _bounds(space, "resize_start")
    if hi_start is not None and hi_start > lo_size:
        raise SpaceError(f"space '{space.name}': resize_start can reach {hi_start}, above the smallest size "
                         f"{lo_size}; progressive resizing must start at or below the final size")


def judged_before_switch(space: Space, max_epochs: int, grace_period: int) -> str | None:
    """Why ASHA's first rung could judge a progressive-resizing trial still at its small size, or None."""
    from trainables.config import TrainConfig
    lo_start, _ = _bounds(space, "resize_start")
    hi_size = _bounds(space, "size")[1]
    _, hi_frac = _bounds(space, "resize_frac")
    if lo_start is None or lo_start >= hi_size:
        return None
    small = TrainConfig(size=hi_size, resize_start=lo_start, resize_frac=hi_frac, epochs=max_epochs).small_epochs
    if small < grace_period:
        return None
    return (f"resize_frac up to {hi_frac:g} trains {small} of {max_epochs} epochs at the start size, so ASHA's "
            f"first rung at epoch {grace_period} judges such trials before they reach the final size; "
            "lower resize_frac's upper bound or raise --grace-period")


def describe(space: Space) -> str:
    lines = [f"{space.name}: {space.description}".rstrip(": ")]
    for k, d in space.params.items():
        lines.append(f"  {k:<16} {d.describe()}")
    for k, v in space.fixed.items():
        lines.append(f"  {k:<16} = {v}")
    if space.search:
        lines.append("  search defaults: " + ", ".join(f"{k}={v}" for k, v in space.search.items()))
    if space.requires:
        lines.append(f"  requires: {space.requires}")
    return "\n".join(lines)
