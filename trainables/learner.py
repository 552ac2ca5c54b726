"""Config -> fastai DataLoaders, model and Learner. Knows fastai and PyTorch, nothing of Ray."""
from __future__ import annotations

import os
from functools import partial

import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.mixup import MixUp
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import IndexSplitter, IntToFloatTensor, Normalize
from fastai.layers import AdaptiveAvgPool, ConvLayer, Flatten, Mish, ResBlock
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from fastai.metrics import accuracy
from fastai.optimizer import SGD, Adam, Lamb, ranger
from fastai.vision.models import xresnet
from fastai.vision.augment import Resize, aug_transforms
from fastai.vision.data import ImageBlock, imagenet_stats
from torch import nn

from .config import ConfigError, TrainConfig
from .data import DatasetIndex, class_name, dataset_stats, folders_for, index, prepare, presize

OPTIMIZERS = {"adam": Adam, "ranger": ranger, "sgd": partial(SGD, mom=0.9), "lamb": Lamb}
ACTS = {"relu": nn.ReLU, "mish": Mish}


def default_device() -> torch.device:
    """Outside Ray: the GPU when one is visible. A Ray trial is given its device instead (tune_report.py)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def make_model(cfg: TrainConfig, n_out: int) -> nn.Module:
    act = ACTS[cfg.act]
    if cfg.arch == "tiny":
        return tiny_net(n_out, act)
    return getattr(xresnet, cfg.arch)(n_out=n_out, act_cls=act)


def tiny_net(n_out: int, act) -> nn.Module:
    """Four strided stages of fastai's ConvLayer and ResBlock, 16-128 wide: seconds per epoch on a CPU."""
    def stage(ni, nf, res):
        return [ConvLayer(ni, nf, stride=2, act_cls=act)] + ([ResBlock(1, nf, nf, act_cls=act)] if res else [])
    return nn.Sequential(*stage(3, 16, False), *stage(16, 32, True), *stage(32, 64, True), *stage(64, 128, False),
                         AdaptiveAvgPool(), Flatten(), nn.Linear(128, n_out))


def auto_workers() -> int:
    """One loader process per CPU this process was given (a trial sets its thread count to the CPUs Ray gave it)."""
    n = min(torch.get_num_threads(), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 8)
    return 0 if n <= 1 else min(n, 8)


def loader_workers(cfg: TrainConfig) -> int:
    """The loader processes a config's data path uses: the tensor path decodes nothing per batch, so none."""
    if cfg.pipeline == "tensor":
        return 0
    return auto_workers() if cfg.workers is None else cfg.workers


def batch_tfms(cfg: TrainConfig, size: int, stats, dev: torch.device) -> list:
    tfms = aug_transforms(size=size, min_scale=cfg.min_scale)
    # from_stats would put the statistics on fastai's default device (a visible GPU); a loader moves them to
    # its own device, but a bare Pipeline (benchmarks/data_pipeline.py) does not
    return tfms + ([Normalize.from_stats(*stats, cuda=dev.type == "cuda")] if stats else [])


def norm_stats(cfg: TrainConfig, idx: DatasetIndex):
    if cfg.normalize == "imagenet":
        return imagenet_stats
    if cfg.normalize == "dataset":
        return dataset_stats(idx)
    return None


def split_indices(cfg: TrainConfig, idx: DatasetIndex) -> tuple[list[int], list[int]]:
    """(train, valid) indices of the config's split; a holdout is drawn by its own seed, the same for every trial."""
    seed = cfg.holdout_seed if cfg.split == "holdout" else cfg.seed
    return idx.split(cfg.split, seed, cfg.holdout_frac)


def build_dls(cfg: TrainConfig, idx: DatasetIndex, dev: torch.device | None = None, gpu_share: float = 1.0):
    """DataLoaders at the final size plus one training loader per progressive-resizing size, on `dev`
    (default_device() when not given); `gpu_share` is the fraction of the GPU the run was given.

    Returns (dls, {size: train_dl}); validation always runs at `cfg.size`.
    """
    dev = dev or default_device()
    stats = norm_stats(cfg, idx)
    if cfg.pipeline == "tensor":
        from .tensor_pipeline import build_tensor_dls
        return build_tensor_dls(cfg, idx, dev, stats, gpu_share)
    train_i, valid_i = split_indices(cfg, idx)
    items = [idx.root / f for f in idx.files]
    order = train_i + valid_i
    block = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=idx.classes)), get_y=class_name,
                      splitter=IndexSplitter(range(len(train_i), len(order))),
                      item_tfms=Resize(presize(cfg.size)), batch_tfms=batch_tfms(cfg, cfg.size, stats, dev))
    dls = block.dataloaders([items[i] for i in order], bs=cfg.bs, num_workers=loader_workers(cfg), device=dev,
                            persistent_workers=False)
    stages = {cfg.size: dls.train}
    for s in {cfg.size_at(e) for e in range(cfg.epochs)} - {cfg.size}:
        stages[s] = dls.train.new(after_batch=[IntToFloatTensor(), *batch_tfms(cfg, s, stats, dev)])
    return dls, stages


def build_learner(cfg: TrainConfig, dls) -> Learner:
    loss = (LabelSmoothingCrossEntropyFlat(eps=cfg.label_smoothing) if cfg.label_smoothing > 0
            else CrossEntropyLossFlat())
    cbs = [MixUp(cfg.mixup_alpha)] if cfg.mixup_alpha > 0 else []
    learn = Learner(dls, make_model(cfg, len(dls.vocab)), loss_func=loss, opt_func=OPTIMIZERS[cfg.opt],
                    lr=cfg.lr, wd=cfg.wd, metrics=accuracy, cbs=cbs)
    precision = resolve_precision(cfg.precision, learn.dls.device)
    if learn.dls.device.type == "cuda":
        learn.add_cb(ChannelsLast())
    if precision in ("bf16", "fp16"):
        learn.add_cb(MixedPrecision(amp_mode=AMPMode.BF16 if precision == "bf16" else AMPMode.FP16))
    if cfg.compile:
        learn.model.compile()  # in place: the state_dict keeps its keys, so checkpoints stay portable
    return learn


def export_learner(learn: Learner, cfg: TrainConfig, path) -> None:
    """learner.pkl for fastai's load_learner on image files. A tensor-path learner's loaders hold the uint8
    cache and take indices, so it is exported with the fastai path's loaders of the same config."""
    if cfg.pipeline == "tensor":
        learn.dls = build_dls(cfg.replace(pipeline="fastai"), index(prepare(cfg.data), folders_for(cfg.split)))[0]
    learn.export(path)


def resolve_precision(precision: str, dev: torch.device | None = None) -> str:
    """The precision a config gets on `dev` (default_device() when not given)."""
    dev = dev or default_device()
    cuda = dev.type == "cuda"
    # torch counts emulated bf16 (V100, T4: slower than fp32) as supported unless told not to
    native = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    return choose_precision(precision, cuda, native, torch.cuda.get_device_name(dev) if cuda else "the CPU")


def choose_precision(precision: str, cuda: bool, native_bf16: bool, device_name: str) -> str:
    """auto: native bf16, else fp16 (fastai's MixedPrecision scales its gradients), else fp32 on a CPU."""
    if precision == "auto":
        return "bf16" if native_bf16 else "fp16" if cuda else "fp32"
    if precision in ("bf16", "fp16") and not cuda:  # fastai's MixedPrecision autocasts on CUDA only
        raise ConfigError(f"precision={precision} needs a CUDA GPU; use auto or fp32 on this machine")
    if precision == "bf16" and not native_bf16:
        raise ConfigError(f"precision=bf16: {device_name} has no native bfloat16 (only emulated, slower than "
                          "fp32); use fp16 or auto")
    return precision
