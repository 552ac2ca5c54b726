"""Training images/s of each data path against the model's own bound, and trials packed on one device.

python benchmarks/device_throughput.py [--arch xresnet50] [--size 128] [--bs 128] [--packing 1 2 4]
1. bound: forward, backward and optimizer step on random tensors already on the device (channels_last and
   bf16 on a GPU, as the trainer uses them): what the model alone can do;
2. each data path: the trainer's own images/s (training time only) over its second epoch, the first
   having paid for cudnn's autotuning and the loaders' start;
3. packing: 1, 2, 4 ... trials training at once on the device (tensor path), their total images/s.
Targets on a GPU: the tensor path at 70% of the bound or more; packing raises the total when one trial
leaves the GPU idle. Writes benchmarks/results/device_throughput[-<arch>-<size>].json.
"""
import argparse
import json
import subprocess
import sys
import time

import torch
from common import REAL_DATA, ROOT, label, save

from trainables.config import TrainConfig
from trainables.learner import make_model, resolve_precision

ONE_TRIAL = """
import json, sys, time
import torch
sys.path.insert(0, {root!r})
from trainables.config import TrainConfig
from trainables.train import train
r = train(TrainConfig.from_dict({cfg!r}))
end = time.time()
print("RESULT", json.dumps({{"images": len(r.learn.dls.train) * r.learn.dls.train.bs * len(r.history),
                            "start": end - sum(h["epoch_s"] for h in r.history), "end": end,
                            "images_per_s": [h["images_per_s"] for h in r.history],
                            "cache_on": r.history[-1].get("cache_on"),
                            "peak_gib": torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None}}))
"""


def bound(cfg: TrainConfig, seconds: float) -> float:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = make_model(cfg, 10).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(cfg.bs, 3, cfg.size, cfg.size, device=dev)
    if dev.type == "cuda":
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (cfg.bs,), device=dev)
    bf16 = resolve_precision(cfg.precision) == "bf16"

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += cfg.bs
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def trials_at_once(cfg: TrainConfig, k: int) -> dict:
    code = ONE_TRIAL.format(root=str(ROOT), cfg=cfg.to_dict())
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(k)]
    outs = [json.loads(line.split(" ", 1)[1]) for p in procs for line in p.communicate()[0].splitlines()
            if line.startswith("RESULT")]
    if len(outs) != k:
        sys.exit(f"{k} packed trials: some failed")
    wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    return {"trials": k, "total_images_per_s": sum(o["images"] for o in outs) / wall,
            "per_trial_epoch_images_per_s": [o["images_per_s"] for o in outs],
            "per_trial_peak_gib": [o["peak_gib"] for o in outs],   # what one trial's share of a device must hold
            "cache_on": [o["cache_on"] for o in outs]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--arch", default="xresnet50")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--bs", type=int, default=128)
    p.add_argument("--data", help="default: the real photos beside the project, else generated images")
    p.add_argument("--seconds", type=float, default=20, help="how long the bound is measured")
    p.add_argument("--packing", type=int, nargs="+", default=[1, 2, 4])
    args = p.parse_args()
    data = args.data or (str(REAL_DATA) if REAL_DATA.is_dir() else "synthetic:train=1000")
    cfg = TrainConfig(data=data, arch=args.arch, size=args.size, bs=args.bs, epochs=2, tta=False, lr=1e-3)
    from trainables.train import train
    out = {"arch": args.arch, "size": args.size, "bs": args.bs, "data": label(data),
           "precision": resolve_precision(cfg.precision), "bound_images_per_s": bound(cfg, args.seconds)}
    print(f"bound (random tensors on the device): {out['bound_images_per_s']:.0f} images/s", flush=True)
    for pipe in ("fastai", "tensor"):
        r = train(cfg.replace(pipeline=pipe))
        out[f"{pipe}_epochs_images_per_s"] = [h["images_per_s"] for h in r.history]   # the first pays for warm-up
        out[f"{pipe}_images_per_s"] = out[f"{pipe}_epochs_images_per_s"][-1]
        if "cache_on" in r.history[-1]:   # the tensor path's: is its cache on the device or in host memory
            out[f"{pipe}_cache_on"] = r.history[-1]["cache_on"]
        out[f"{pipe}_fraction_of_bound"] = out[f"{pipe}_images_per_s"] / out["bound_images_per_s"]
        print(f"{pipe:>7} path: {out[f'{pipe}_images_per_s']:.0f} images/s "
              f"({out[f'{pipe}_fraction_of_bound']:.0%} of the bound)", flush=True)
    out["packing"] = [trials_at_once(cfg.replace(pipeline="tensor"), k) for k in args.packing]
    for row in out["packing"]:
        peaks = [g for g in row["per_trial_peak_gib"] if g is not None]   # none on a CPU
        print(f"{row['trials']} trial(s) at once: {row['total_images_per_s']:.0f} images/s in total"
              + (f", at most {max(peaks):.1f} GiB of device memory per trial" if peaks else ""), flush=True)
    name = "device_throughput" if (args.arch, args.size) == ("xresnet50", 128) else \
        f"device_throughput-{args.arch}-{args.size}"
    save(name, out)


if __name__ == "__main__":
    main()
