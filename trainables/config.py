"""The one training config: every knob, its default and its valid range.

The search spaces, the final run's command line and the exported best config all speak in these keys.
Defaults follow fastbook chapter 7 where it speaks (xresnet50, one-cycle, lr 3e-3, bs 64, ImageNet
normalization, min_scale 0.75) and the Imagenette leaderboard (128 px, 5 epochs, the `val/` folder).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

ARCHS = ("tiny", "xresnet18", "xresnet34", "xresnet50", "xresnet101",
         "xse_resnext18", "xse_resnext34", "xse_resnext50", "xresnext50")


class ConfigError(ValueError):
    """Bad user input: the message is one line that names the problem."""


def knob(default, help, *, choices=None, low=None, high=None, high_open=False, low_open=False):
    """A config field with its valid range kept beside it, for validation and for search spaces."""
    meta = dict(help=help, choices=choices, low=low, high=high, low_open=low_open, high_open=high_open)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    data: str = knob("synthetic", "imagenette[-160|-320], imagewoof[-160|-320], a folder in the Imagenette "
                     "layout, or synthetic[:train=N,val=N,px=N,seed=N] (generated)")
    split: str = knob("val", "validation set: the val/ folder; holdout, a stratified part of train/ (searches "
                      "choose on it, and val/ is not read); or a seeded random 20% of all images",
                      choices=("val", "holdout", "random"))
    holdout_frac: float = knob(0.2, "split=holdout: the fraction of each class of train/ held out (up to 0.9, "
                               "as benchmarks/warm_start.py holds out 80% to score trials on 4,000 photos)",
                               low=0.0, high=0.9, low_open=True)
    holdout_seed: int = knob(0, "split=holdout: the seed that draws the holdout (not the training seed)",
                             low=0, high=2**31 - 1)
    arch: str = knob("xresnet50", "model; 'tiny' trains in seconds on a CPU", choices=ARCHS)
    act: str = knob("relu", "activation of the xresnet blocks", choices=("relu", "mish"))
    epochs: int = knob(5, "epochs in the one learning-rate schedule", low=1, high=10_000)
    bs: int = knob(64, "batch size", low=1, high=65_536)
    lr: float = knob(3e-3, "peak learning rate", low=0.0, high=10.0, low_open=True)
    lr_schedule: str = knob("one_cycle", "schedule over all epochs", choices=("one_cycle", "flat_cos"))
    wd: float = knob(0.01, "decoupled weight decay", low=0.0, high=1.0)
    opt: str = knob("adam", "optimizer", choices=("adam", "ranger", "sgd", "lamb"))
    mixup_alpha: float = knob(0.0, "mixup Beta(alpha, alpha); 0 = off", low=0.0, high=100.0)
    label_smoothing: float = knob(0.0, "label smoothing epsilon; 0 = plain cross-entropy",
                                  low=0.0, high=1.0, high_open=True)
    size: int = knob(128, "final image size in pixels; validation always runs at this size", low=8, high=4096)
    resize_start: typing.Optional[int] = knob(None, "start size of progressive resizing; None or = size is off",
                                              low=8, high=4096)
    resize_frac: float = knob(0.5, "fraction of the epochs trained at resize_start before switching to size",
                              low=0.0, high=1.0, high_open=True)
    normalize: str = knob("imagenet", "input normalization statistics", choices=("imagenet", "dataset", "none"))
    min_scale: float = knob(0.75, "smallest random-resized-crop area, as a fraction of the image",
                            low=0.0, high=1.0, low_open=True)
    tta: bool = knob(True, "also evaluate with test-time augmentation after the last epoch")
    precision: str = knob("auto", "auto = native bf16 on a GPU that has it, else fp16 on a GPU, else fp32",
                          choices=("auto", "fp32", "bf16", "fp16"))
    pipeline: str = knob("fastai", "data path: fastai's (PIL per image, the reference) or tensor (a uint8 cache "
                         "augmented by the batch on the model's device)", choices=("fastai", "tensor"))
    compile: bool = knob(False, "torch.compile the model; pays for its compile time only in long GPU runs")
    seed: int = knob(42, "seed for weights, data order and augmentation", low=0, high=2**32 - 1)
    workers: typing.Optional[int] = knob(None, "data loader processes; None = one per CPU given (at most 8)",
                                         low=0, high=256)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _check_value(f, getattr(self, f.name))
        if self.resize_start is not None and self.resize_start > self.size:
            raise ConfigError(f"resize_start={self.resize_start} is larger than size={self.size}; "
                              "progressive resizing grows towards the final size")

    @property
    def progressive(self) -> bool:
        return self.resize_start is not None and self.resize_start < self.size and self.small_epochs > 0

    @property
    def small_epochs(self) -> int:
        """Epochs trained at resize_start before the switch to the final size (at least one at `size`)."""
        if self.resize_start is None or self.resize_start >= self.size:
            return 0
        return min(math.floor(self.resize_frac * self.epochs + 0.5), self.epochs - 1)

    def size_at(self, epoch: int) -> int:
        """Training image size of a 0-based epoch."""
        return self.resize_start if self.progressive and epoch < self.small_epochs else self.size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = [k for k in d if k not in FIELDS]
        if unknown:
            raise ConfigError(unknown_key_message(unknown[0]))
        return cls(**{k: coerce(k, v) for k, v in d.items()})


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, FIELDS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; valid keys: {', '.join(FIELDS)}"
    return f"unknown config key '{key}'{hint}"


def base_type(name: str) -> type:
    """The field's type with Optional[...] removed."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def optional(name: str) -> bool:
    return type(None) in typing.get_args(typing.get_type_hints(TrainConfig)[name])


def coerce(name: str, value):
    """Bring a value from JSON, YAML, a search space or the command line (a string) to the field's type."""
    if name not in FIELDS:
        raise ConfigError(unknown_key_message(name))
    t = base_type(name)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional(name)):
        if optional(name):
            return None
        raise ConfigError(f"{name} cannot be empty")
    try:
        if t is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if t is int:
            if isinstance(value, bool):
                raise ValueError(value)
            f = float(value)
            if not f.is_integer():
                raise ValueError(value)
            return int(f)
        if t is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a valid {t.__name__}") from None


def _check_value(f: dataclasses.Field, value) -> None:
    m = f.metadata
    if value is None:
        if not optional(f.name):
            raise ConfigError(f"{f.name} cannot be empty")
        return
    if m["choices"] and value not in m["choices"]:
        raise ConfigError(f"{f.name}={value!r} is not one of {', '.join(m['choices'])}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{f.name}={value} is not a finite number")
    if m["low"] is not None and (value < m["low"] or (m["low_open"] and value == m["low"])):
        raise ConfigError(f"{f.name}={value} must be {'>' if m['low_open'] else '>='} {m['low']}")
    if m["high"] is not None and (value > m["high"] or (m["high_open"] and value == m["high"])):
        raise ConfigError(f"{f.name}={value} must be {'<' if m['high_open'] else '<='} {m['high']}")


def check_value(name: str, value) -> None:
    """Raise ConfigError unless `value` is valid for the field on its own (cross-field rules aside)."""
    _check_value(FIELDS[name], coerce(name, value))


def parse_overrides(items: list[str]) -> dict:
    """`key=value` strings from the command line, typed by the config."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        out[key] = coerce(key, value.strip())
    return out


def load_config_file(path: str | Path) -> tuple[dict, dict | None]:
    """(config keys, provenance) from a JSON file: a flat {key: value} (no provenance), or an export,
    {"config": {...}, "provenance": {...}}."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    provenance = None
    if isinstance(d, dict) and isinstance(d.get("config"), dict):
        d, provenance = d["config"], d.get("provenance")
    if not isinstance(d, dict):
        raise ConfigError(f"{p} must hold a JSON object of config keys")
    return d, provenance if isinstance(provenance, dict) else None
