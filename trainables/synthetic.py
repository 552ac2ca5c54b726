"""A generated dataset in the exact Imagenette layout: the embedded default when the real one is not at hand.

Each class is an object with its own shape and texture, drawn at a random position, scale, rotation and
colour over a cluttered background of smaller distractors that reuse the other classes' shapes and
textures, so a model must find the main object and read both cues. Everything is a function of
(seed, split, class, index), so the same spec gives the same bytes on every machine and in any order.
"""
from __future__ import annotations

import colorsys
import csv
import io
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

# The real Imagenette classes, in the sorted-wnid order fastai's category vocab uses.
WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
         "n03394916", "n03417042", "n03425413", "n03445777", "n03888257")
NOISE_LEVELS = (1, 5, 25, 50)  # percent of training labels changed in noisy_imagenette.csv's columns
TEXTURE_OF_CLASS = (3, 7, 0, 5, 9, 1, 6, 2, 8, 4)  # class c: shape c with this texture


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class SyntheticSpec:
    train: int = 300   # images per class in train/
    val: int = 100     # images per class in val/
    px: int = 160      # short side, as in imagenette2-160
    seed: int = 0

    @classmethod
    def parse(cls, name: str) -> "SyntheticSpec":
        """`synthetic` or `synthetic:train=300,val=100,px=160,seed=1` (any subset of the keys)."""
        m = re.fullmatch(r"synthetic(?::(.*))?", name.strip())
        if not m:
            raise SpecError(f"not a synthetic dataset name: {name!r}")
        kw = {}
        for part in filter(None, (m.group(1) or "").split(",")):
            key, sep, value = part.partition("=")
            if not sep or key not in cls.__dataclass_fields__ or not value.isdigit():
                raise SpecError(f"bad synthetic option {part!r} in {name!r}; "
                                "expected train=N, val=N, px=N or seed=N")
            kw[key] = int(value)
        spec = cls(**kw)
        if spec.train < 1 or spec.val < 1 or not 32 <= spec.px <= 1024:
            raise SpecError(f"{name!r}: train and val must be >= 1 and px in [32, 1024]")
        return spec

    @property
    def dirname(self) -> str:
        return f"synthetic-t{self.train}-v{self.val}-px{self.px}-s{self.seed}"


# ---- shapes: masks over object coordinates (u, v), the object's radius being 1 ----

def _polar(u, v):
    return np.hypot(u, v), np.arctan2(v, u)


def _triangle(u, v):
    return (v >= -0.5) & (np.sqrt(3) * u + v <= 1) & (-np.sqrt(3) * u + v <= 1)


def _star(u, v):
    r, t = _polar(u, v)
    return r <= 0.45 + 0.55 * ((np.cos(5 * t) + 1) / 2) ** 2


def _heart(u, v):
    x, y = u * 1.25, -v * 1.25 + 0.25
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


SHAPES = (
    lambda u, v: u * u + v * v <= 1,                                            # disc
    _triangle,
    lambda u, v: (np.abs(u) <= 0.78) & (np.abs(v) <= 0.78),                     # square
    _star,
    lambda u, v: ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)) & (np.abs(u) <= 0.95) & (np.abs(v) <= 0.95),  # cross
    lambda u, v: (u * u + v * v <= 1) & (u * u + v * v >= 0.36),                # ring
    lambda u, v: np.maximum(np.abs(u), np.abs(u) / 2 + np.abs(v) * np.sqrt(3) / 2) <= 0.9,  # hexagon
    lambda u, v: (u * u + v * v <= 1) & ((u - 0.45) ** 2 + v * v >= 0.64),     # crescent
    _heart,
    lambda u, v: u * u + (v / 0.45) ** 2 <= 1,                                  # elongated ellipse
)


# ---- textures: values in [0, 1] over object coordinates; `f` jitters the frequency, `p` the phase ----

def _texture(kind, u, v, f, p, rng_noise):
    k = 2 * np.pi * f
    if kind == 0:   # stripes
        return (np.sin(k * 1.25 * u + p) > 0).astype(np.float32)
    if kind == 1:   # checkerboard
        return ((np.floor(u * 1.6 * f + p) + np.floor(v * 1.6 * f + p)) % 2).astype(np.float32)
    if kind == 2:   # dots
        s = 0.7 / f
        du, dv = (u + p) % s - s / 2, (v + p) % s - s / 2
        return (np.hypot(du, dv) < 0.32 * s).astype(np.float32)
    if kind == 3:   # concentric rings
        return (np.sin(k * 1.5 * np.hypot(u, v) + p) > 0).astype(np.float32)
    if kind == 4:   # solid with a soft shade
        return np.clip(0.15 + 0.2 * (u + v), 0, 1).astype(np.float32)
    if kind == 5:   # coarse speckle
        return rng_noise(u, v)
    if kind == 6:   # waves
        return (np.sin(k * 1.25 * u + 2.0 * np.sin(k * 0.75 * v) + p) > 0).astype(np.float32)
    if kind == 7:   # grid lines
        a, b = (u * 1.2 * f + p) % 1, (v * 1.2 * f + p) % 1
        return ((np.abs(a - 0.5) < 0.15) | (np.abs(b - 0.5) < 0.15)).astype(np.float32)
    if kind == 8:   # spokes
        return (np.sin(5 * np.arctan2(v, u) + p) > 0).astype(np.float32)
    return np.clip((u + 1) / 2, 0, 1).astype(np.float32)   # 9: gradient


def _colour(rng, hue=None):
    """A random colour, or one near a class's hue (a weak cue, as colour is for many real classes)."""
    if hue is None:
        return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.25, 1), rng.uniform(0.25, 1)), np.float32)
    h = (hue + rng.normal(0, 0.06)) % 1
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.5, 1), rng.uniform(0.5, 1)), np.float32)


def _draw(img, rng, shape, texture, cx, cy, r, theta, c1, c2):
    """Paint one textured, rotated shape of radius r (pixels) centred at (cx, cy) into img (H, W, 3)."""
    h, w, _ = img.shape
    x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, w)
    y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = (xx - cx) / r, (yy - cy) / r
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy
    mask = SHAPES[shape](u, v)

    def speckle(u, v):
        cells = rng.random((4, 4)).astype(np.float32) > 0.5
        iu = np.clip(((u + 1) * 2).astype(int), 0, 3)
        iv = np.clip(((v + 1) * 2).astype(int), 0, 3)
        return cells[iv, iu].astype(np.float32)

    g = _texture(texture, u, v, rng.uniform(0.75, 1.35), rng.uniform(0, 2 * np.pi), speckle)[..., None]
    patch = img[y0:y1, x0:x1]
    patch[mask] = (c1 * (1 - g) + c2 * g)[mask]


def render(spec: SyntheticSpec, split: str, cls: int, idx: int) -> Image.Image:
    rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1, cls, idx])
    short, long_ = spec.px, int(spec.px * rng.uniform(1.0, 1.5))
    h, w = (short, long_) if rng.random() < 0.75 else (long_, short)
    # a low-frequency colour field as the scene's background
    grid = (rng.random((3, 3, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), np.float32) / 255
    img = np.ascontiguousarray(img)

    def distractor():
        shape = int(rng.integers(10))
        texture = int((TEXTURE_OF_CLASS[shape] + rng.integers(1, 10)) % 10)  # never its class's own pair
        _draw(img, rng, shape, texture, rng.uniform(0, w), rng.uniform(0, h),
              rng.uniform(0.05, 0.13) * short, rng.uniform(0, 2 * np.pi), _colour(rng), _colour(rng))

    for _ in range(int(rng.integers(2, 6))):
        distractor()
    r = rng.uniform(0.3, 0.5) * short
    c1 = _colour(rng, hue=cls / 10)
    c2 = np.clip(1 - c1 + rng.normal(0, 0.15, 3), 0, 1).astype(np.float32)  # contrasting second colour
    _draw(img, rng, cls, TEXTURE_OF_CLASS[cls], rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6),
          r, rng.uniform(0, 2 * np.pi), c1, c2)
    for _ in range(int(rng.integers(0, 3))):  # a few occluders in front of the object
        distractor()
    img = img * rng.uniform(0.6, 1.2) + rng.uniform(-0.15, 0.15)        # exposure
    img = img + rng.normal(0, rng.uniform(0.02, 0.07), img.shape)       # sensor noise
    out = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))


def _files(spec: SyntheticSpec):
    """(split, class, index, relative path) of every image, in a fixed order."""
    for split, n in (("train", spec.train), ("val", spec.val)):
        for c, wnid in enumerate(WNIDS):
            for i in range(n):
                name = f"{wnid}_{i:05d}.JPEG" if split == "train" else f"ILSVRC2012_val_{c * n + i:08d}.JPEG"
                yield split, c, i, f"{split}/{wnid}/{name}"


def _write(args):
    spec, split, c, i, rel, root = args
    img = render(spec, split, c, i)
    quality = int(np.random.default_rng([spec.seed, 2, c, i, split == "val"]).integers(75, 96))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    (Path(root) / rel).write_bytes(buf.getvalue())


def generate(spec: SyntheticSpec, root: Path, workers: int | None = None) -> None:
    """Write the dataset under `root` (created). Callers own atomicity (see data.prepare)."""
    root = Path(root)
    for split in ("train", "val"):
        for wnid in WNIDS:
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
    jobs = [(spec, s, c, i, rel, str(root)) for s, c, i, rel in _files(spec)]
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers > 1 and len(jobs) > 200:
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_write, jobs, chunksize=32))
    else:
        for j in jobs:
            _write(j)
    _write_noisy_csv(spec, root)


def _write_noisy_csv(spec: SyntheticSpec, root: Path) -> None:
    """noisy_imagenette.csv with its seven columns; only training labels are made noisy, as in the real file."""
    with open(root / "noisy_imagenette.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["path", *(f"noisy_labels_{p}" for p in (0, *NOISE_LEVELS)), "is_valid"])
        for split, c, i, rel in _files(spec):
            rng = np.random.default_rng([spec.seed, 3, c, i])
            u, other = rng.random(), (c + int(rng.integers(1, 10))) % 10
            noisy = [WNIDS[other] if split == "train" and u < p / 100 else WNIDS[c] for p in NOISE_LEVELS]
            wr.writerow([rel, WNIDS[c], *noisy, split == "val"])
