"""Images per second of the two data paths on the same images, side by side in one run.

python benchmarks/data_pipeline.py [--size 128] [--batches 40] [--data PATH]
Uses the real photos beside the project when they exist, else the default generated dataset. Measures
(1) the training loader alone, after a warm-up batch, (2) fastai's own batch transforms run on batches
of the tensor path's cache (why the tensor path has its own augmentation), and (3) one training epoch of
the tiny model on a 2,000-image subset with each path, since on a CPU the model shares the cores with
the loader.
Ends with `ratio tensor/fastai: X` and writes benchmarks/results/data_pipeline.json.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import REAL_DATA, label, real_subset, save

from trainables.config import TrainConfig
from trainables.data import index, prepare, tensor_cache
from trainables.learner import build_dls
from trainables.train import train


def loader_rate(cfg: TrainConfig, idx, batches: int, repeats: int = 3) -> float:
    dls, _ = build_dls(cfg, idx)
    rates = []
    for _ in range(repeats):
        it = iter(dls.train)
        next(it)  # warm-up: worker start, first decode
        n, t0 = 0, time.perf_counter()
        for _, (xb, _) in zip(range(batches), it):
            n += xb.shape[0]
        rates.append(n / (time.perf_counter() - t0))
        del it
    return statistics.median(rates)


def fastai_tfms_rate(cfg: TrainConfig, idx, batches: int, repeats: int = 3) -> float:
    """fastai's own batch transforms (aug_transforms, Normalize) on batches gathered from the same uint8
    cache: what the tensor path would run if it used them instead of its own augmentation."""
    import numpy as np
    import torch
    from fastai.data.core import Pipeline
    from fastai.data.transforms import IntToFloatTensor
    from fastai.torch_core import TensorImage
    from trainables.learner import batch_tfms, norm_stats
    arr = tensor_cache(idx, cfg.size)
    pipe = Pipeline([IntToFloatTensor(), *batch_tfms(cfg, cfg.size, norm_stats(cfg, idx), torch.device("cpu"))])
    pipe.split_idx = 0  # training: the random transforms on
    rng = np.random.default_rng(0)

    def batch():
        rows = np.sort(rng.choice(len(arr), cfg.bs, replace=False))
        return pipe(TensorImage(torch.from_numpy(arr[rows]).permute(0, 3, 1, 2)))

    rates = []
    for _ in range(repeats):
        batch()
        t0 = time.perf_counter()
        for _ in range(batches):
            batch()
        rates.append(batches * cfg.bs / (time.perf_counter() - t0))
    return statistics.median(rates)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--data", help="dataset (default: the real photos if present, else synthetic)")
    p.add_argument("--workers", type=int, help="fastai's loader processes (default: one per CPU, as a trial gets); "
                   "0 is what a trial with 1 CPU gets; writes data_pipeline-workers-N.json")
    args = p.parse_args()
    data = args.data or (str(REAL_DATA) if REAL_DATA.is_dir() else "synthetic")
    idx = index(prepare(data))
    base = TrainConfig(data=data, arch="tiny", size=args.size, bs=64, workers=args.workers)

    t0 = time.perf_counter()
    tensor_cache(idx, base.size)
    cache_s = time.perf_counter() - t0
    rates = {p: loader_rate(base.replace(pipeline=p), idx, args.batches) for p in ("fastai", "tensor")}
    for k, v in rates.items():
        print(f"{k:>7} loader: {v:8.0f} images/s", flush=True)
    fastai_tfms = fastai_tfms_rate(base, idx, args.batches)
    print(f"fastai's batch transforms on the cache: {fastai_tfms:8.0f} images/s", flush=True)

    epochs = {}
    with tempfile.TemporaryDirectory() as tmp:
        sub = real_subset(Path(tmp), 150, 40) if data == str(REAL_DATA) else None
        for p in ("fastai", "tensor"):
            cfg = TrainConfig(data=str(sub) if sub else "synthetic:train=200,val=40", arch="tiny", size=64,
                              bs=64, epochs=1, lr=1e-2, tta=False, pipeline=p, workers=args.workers)
            r = train(cfg)
            epochs[p] = {"epoch_s": r.history[0]["epoch_s"], "images_per_s": r.history[0]["images_per_s"],
                         "accuracy": r.accuracy}
            print(f"{p:>7} epoch of the tiny model at 64 px: {r.history[0]['epoch_s']:.1f} s, "
                  f"{r.history[0]['images_per_s']:.0f} images/s", flush=True)
    ratio = rates["tensor"] / rates["fastai"]
    save("data_pipeline" + ("" if args.workers is None else f"-workers-{args.workers}"), {
        "fastai_workers": "one per CPU" if args.workers is None else args.workers,
        "data": label(data),
        "images": len(idx.files), "size": args.size, "batch_size": base.bs, "batches": args.batches,
        "loader_images_per_s": rates, "ratio_tensor_over_fastai": ratio,
        "fastai_batch_tfms_on_cache_images_per_s": fastai_tfms,
        "tensor_cache_build_s": cache_s, "one_epoch_tiny_64px": epochs,
        "epoch_ratio_tensor_over_fastai": epochs["tensor"]["images_per_s"] / epochs["fastai"]["images_per_s"],
    })
    print(f"ratio tensor/fastai: {ratio:.1f}")


if __name__ == "__main__":
    main()
