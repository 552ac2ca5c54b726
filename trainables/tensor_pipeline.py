"""The fast data path: images decoded once into a uint8 cache, augmented a whole batch at a time on the
device the model runs on (airbench-style), behind fastai's own DataLoader so the learner, its callbacks
(MixUp, progressive resizing, TTA) and schedules are unchanged.

Per batch: gather uint8 images, one grid_sample doing random-resized-crop, flip and a small rotation,
then brightness/contrast and normalization. Validation: the whole (centre-square) image resized to
the final size, as fastai's valid-time Resize + RandomResizedCropGPU do.

The augmentation is written here, not taken from fastai's aug_transforms, because fastai's batch
transforms ran at about 1,100 images/s on the 2-core CPU against this path's 3,470 (benchmarks/
data_pipeline.py). Under the same config keys it differs from fastai's path in these ways:
- crops: each image gets its own crop (side sqrt(U(min_scale, 1)) of the square); fastai's
  RandomResizedCropGPU draws one crop for the whole batch;
- lighting: brightness and contrast are linear about mid-grey (brightness ±0.1, contrast ×0.8-1.25),
  where fastai's work in logit space (brightness ±0.405 in logits, contrast ×0.8-1.25 of the logits);
- aug_transforms' perspective warp (0.2) and zoom (up to 1.1) are left out;
- the cache keeps each image's centre square, so crops of a non-square photo never reach its ends
  (fastai's Resize takes its square at a random place along the long side).
`python benchmarks/pipeline_ranking.py` checks that these do not change which configs win (README).
"""
from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.nn.functional as F
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.torch_core import TensorCategory, TensorImage

from .config import TrainConfig
from .data import DatasetIndex, tensor_cache
from .learner import split_indices


class CachedImages:
    """A split of the cache: uint8 images (shared), the indices of this split, labels, augmentation on/off."""

    def __init__(self, images: torch.Tensor, index: torch.Tensor, labels: torch.Tensor, vocab, split_idx: int):
        self.images, self.index, self.labels, self.vocab, self.split_idx = images, index, labels, vocab, split_idx

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):  # fastai checks for it; batches are made whole in TensorLoader.make_batch
        return self.index[i]

    @contextlib.contextmanager
    def set_split_idx(self, i):
        """fastai's TTA switches a validation set to training augmentation this way."""
        old, self.split_idx = self.split_idx, i
        try:
            yield self
        finally:
            self.split_idx = old


class TensorLoader(DataLoader):
    """fastai DataLoader whose batches are cropped, flipped, lit and normalized as whole tensors."""

    def __init__(self, dataset=None, size=128, min_scale=0.75, stats=None, **kwargs):
        self.size, self.min_scale, self.stats = size, min_scale, stats
        super().__init__(dataset, **kwargs)

    def new(self, dataset=None, cls=None, **kwargs):
        extra = dict(size=self.size, min_scale=self.min_scale, stats=self.stats)
        return super().new(dataset, cls, **{**extra, **kwargs})

    def create_batches(self, samps):
        order = list(samps)
        stop = len(order) - (len(order) % self.bs if self.drop_last else 0)
        for i in range(0, stop, self.bs):
            yield self.make_batch(torch.as_tensor(order[i:i + self.bs]))

    def make_batch(self, idx: torch.Tensor):
        ds = self.dataset
        rows = ds.index[idx]
        dev = self.device or ds.images.device
        x = ds.images[rows.to(ds.images.device)].to(dev, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()  # [B, 3, px, px], 0..255
        train = ds.split_idx == 0
        x = F.grid_sample(x, self._grid(len(idx), train, x), mode="bilinear", padding_mode="reflection",
                          align_corners=False)
        if train:
            x = self._light(x)
        x = x / 255
        if self.stats is not None:
            mean, std = (torch.tensor(s, device=dev, dtype=x.dtype).view(1, 3, 1, 1) for s in self.stats)
            x = (x - mean) / std
        return TensorImage(x.contiguous()), TensorCategory(ds.labels[idx].to(dev))

    def _grid(self, n: int, train: bool, like: torch.Tensor) -> torch.Tensor:
        """Sampling grid of each image's crop: side sqrt(U(min_scale, 1)), random centre, flip, rotation."""
        theta = torch.zeros(n, 2, 3)
        if train:
            side = torch.empty(n).uniform_(self.min_scale, 1).sqrt()
            angle = torch.empty(n).uniform_(-10, 10) * math.pi / 180 * (torch.rand(n) < 0.75)
            flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
            cx, cy = ((1 - side) * torch.empty(n).uniform_(-1, 1) for _ in range(2))
            cos, sin = side * torch.cos(angle), side * torch.sin(angle)
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos * flip, -sin, cx
            theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin * flip, cos, cy
        else:
            theta[:, 0, 0] = theta[:, 1, 1] = 1
        return F.affine_grid(theta.to(like.device, like.dtype), [n, 3, self.size, self.size], align_corners=False)

    @staticmethod
    def _light(x: torch.Tensor) -> torch.Tensor:
        """Brightness (±0.1 of the range) and contrast (×0.8-1.25), linear about mid-grey, each on 3 images in 4
        (fastai's work in logit space: see the module docstring)."""
        n = x.shape[0]
        on = (torch.rand(n, 2) < 0.75).float()
        contrast = torch.exp(torch.empty(n).uniform_(math.log(0.8), math.log(1.25)) * on[:, 0])
        bright = torch.empty(n).uniform_(-0.2, 0.2) * 127.5 * on[:, 1]
        c, b = contrast.to(x).view(n, 1, 1, 1), bright.to(x).view(n, 1, 1, 1)
        return ((x - 127.5) * c + 127.5 + b).clamp_(0, 255)


CACHE_SHARE = 0.2  # of a trial's GPU memory, at most, for the cache: the model, activations and optimizer need the rest


def cache_on_device(nbytes: int, share_bytes: float) -> bool:
    """Whether the uint8 cache is copied to the GPU: Ray does not cap GPU memory, and every trial packed on a
    GPU brings its own copy, so it must fit in a fifth of the trial's share; else batches come from host memory."""
    return nbytes <= CACHE_SHARE * share_bytes


def build_tensor_dls(cfg: TrainConfig, idx: DatasetIndex, device: torch.device, stats, gpu_share: float = 1.0):
    """DataLoaders over the uint8 cache, and one training loader per progressive-resizing size. `gpu_share`
    is the fraction of the GPU this run was given (Ray's gpus per trial)."""
    arr = tensor_cache(idx, cfg.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the memmap is read-only on purpose: trials share it
        images = torch.from_numpy(arr)   # on the CPU, a view of the page cache
    if device.type == "cuda":
        share = torch.cuda.get_device_properties(device).total_memory * gpu_share
        if cache_on_device(arr.nbytes, share):
            images = images.to(device)  # the whole dataset lives on the GPU: no loader processes, no copies
        else:
            print(f"the tensor cache ({arr.nbytes / 2**30:.1f} GiB) is more than {CACHE_SHARE:.0%} of this trial's "
                  f"{share / 2**30:.1f} GiB of GPU memory: it stays in host memory (shared by the node's trials) "
                  "and each batch is copied to the GPU", flush=True)
    vocab = idx.classes
    labels = torch.tensor([vocab.index(c) for c in idx.labels])
    train_i, valid_i = (torch.tensor(i) for i in split_indices(cfg, idx))
    train = CachedImages(images, train_i, labels[train_i], vocab, split_idx=0)
    valid = CachedImages(images, valid_i, labels[valid_i], vocab, split_idx=1)
    common = dict(min_scale=cfg.min_scale, stats=stats, device=device, num_workers=0)
    train_dl = TensorLoader(train, size=cfg.size, bs=cfg.bs, shuffle=True, drop_last=True, **common)
    valid_dl = TensorLoader(valid, size=cfg.size, bs=cfg.bs, shuffle=False, **common)
    dls = DataLoaders(train_dl, valid_dl, device=device)
    dls.cache_on = images.device.type   # each epoch's metrics say where the cache is (the line above is a log's)
    stages = {s: train_dl.new(size=s) for s in {cfg.size_at(e) for e in range(cfg.epochs)}}
    stages[cfg.size] = train_dl
    return dls, stages
