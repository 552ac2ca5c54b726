"""Images per second of the two data paths on the same images, side by side in one run.

python benchmarks/data_pipeline.py [--size 128] [--batches 40] [--data PATH]
Uses the real photos beside the project when they exist, else the default generated dataset. Measures
(1) the training loader alone, after a warm-up batch, and (2) one training epoch of the tiny model
on a 2,000-image subset with each path, since on a CPU the model shares the cores with the loader.
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
from trainables.tensor_pipeline import cache_size
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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--data", help="dataset (default: the real photos if present, else synthetic)")
    args = p.parse_args()
    data = args.data or (str(REAL_DATA) if REAL_DATA.is_dir() else "synthetic")
    idx = index(prepare(data))
    base = TrainConfig(data=data, arch="tiny", size=args.size, bs=64)

    t0 = time.perf_counter()
    tensor_cache(idx, cache_size(base))
    cache_s = time.perf_counter() - t0
    rates = {p: loader_rate(base.replace(pipeline=p), idx, args.batches) for p in ("fastai", "tensor")}
    for k, v in rates.items():
        print(f"{k:>7} loader: {v:8.0f} images/s", flush=True)

    epochs = {}
    with tempfile.TemporaryDirectory() as tmp:
        sub = real_subset(Path(tmp), 150, 40) if data == str(REAL_DATA) else None
        for p in ("fastai", "tensor"):
            cfg = TrainConfig(data=str(sub) if sub else "synthetic:train=200,val=40", arch="tiny", size=64,
                              bs=64, epochs=1, lr=1e-2, tta=False, pipeline=p)
            r = train(cfg)
            epochs[p] = {"epoch_s": r.history[0]["epoch_s"], "images_per_s": r.history[0]["images_per_s"],
                         "accuracy": r.accuracy}
            print(f"{p:>7} epoch of the tiny model at 64 px: {r.history[0]['epoch_s']:.1f} s, "
                  f"{r.history[0]['images_per_s']:.0f} images/s", flush=True)
    ratio = rates["tensor"] / rates["fastai"]
    save("data_pipeline", {
        "data": label(data),
        "images": len(idx.files), "size": args.size, "batch_size": base.bs, "batches": args.batches,
        "loader_images_per_s": rates, "ratio_tensor_over_fastai": ratio,
        "tensor_cache_build_s": cache_s, "one_epoch_tiny_64px": epochs,
        "epoch_ratio_tensor_over_fastai": epochs["tensor"]["images_per_s"] / epochs["fastai"]["images_per_s"],
    })
    print(f"ratio tensor/fastai: {ratio:.1f}")


if __name__ == "__main__":
    main()
