"""What checkpoints cost a search: the disk a search's folder keeps, and a checkpoint's time against an epoch's.

python benchmarks/checkpoints.py [--part cost|search|all]
- cost: the real trainer on generated data, for the smoke model and xresnet50 at 64 and 128 px. Each
  epoch's checkpoint is written as a trial writes it (trainables.train.save_checkpoint) and copied as Ray
  copies it into storage (the same pyarrow call); each is timed against the epoch. The last epoch's
  checkpoint is the weights alone, as a trial keeps it.
- search: `tune/run.py` as a user runs it, the smoke search as the README gives it and a 3-trial xresnet50
  search at 64 px (one trial at a time); for each, the results folder's size, per trial, and the checkpoints each trial keeps
  by its status.
Writes benchmarks/results/checkpoints.json (each part keeps the other's figures).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, save

MiB = 2**20


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def cost(arch: str, size: int, epochs: int = 3) -> dict:
    import pyarrow.fs as pafs
    from ray.train._internal.storage import _pyarrow_fs_copy_files  # what Ray's report calls

    from trainables.config import TrainConfig
    from trainables.reporting import Reporter
    from trainables.train import train

    rows = []

    class Timed(Reporter):
        def epoch(self, metrics, save_fn):
            with tempfile.TemporaryDirectory() as src, tempfile.TemporaryDirectory() as dst:
                t0 = time.perf_counter()
                save_fn(Path(src))
                t1 = time.perf_counter()
                local = pafs.LocalFileSystem()
                local.create_dir(f"{dst}/checkpoint")
                _pyarrow_fs_copy_files(src, f"{dst}/checkpoint", source_filesystem=local,
                                       destination_filesystem=local)
                t2 = time.perf_counter()
                rows.append({"epoch": metrics["epoch"], "epoch_s": metrics["epoch_s"], "save_s": t1 - t0,
                             "copy_s": t2 - t1, "MiB": folder_bytes(Path(src)) / MiB})

    cfg = TrainConfig(data=f"synthetic:train=60,val=20,px={max(size, 64)},seed=9", arch=arch, size=size,
                      epochs=epochs, bs=16, pipeline="tensor", tta=False)
    train(cfg, [Timed()])
    running, last = rows[:-1], rows[-1]
    mean = lambda k, rs: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    ck_s = mean("save_s", running) + mean("copy_s", running)
    return {"arch": arch, "size": size, "epochs": rows,
            "checkpoint_MiB_with_optimizer": mean("MiB", running), "checkpoint_MiB_weights_only": last["MiB"],
            "checkpoint_s": ck_s, "epoch_s": mean("epoch_s", running),
            "checkpoint_over_epoch": ck_s / mean("epoch_s", running)}


def search(name: str, args: list[str], results: Path) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), *args, "--results", str(results),
                        "--name", name], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    from tune.trials import Experiment
    exp = Experiment(results / name)
    trials = exp.trials(exp.study())
    per = [{"status": t.status, "epochs": t.epochs, "checkpoints": len(t.checkpoints),
            "MiB": folder_bytes(results / name / t.trial_id) / MiB} for t in trials]
    total = folder_bytes(results / name) / MiB
    kept = {s: sorted({p["checkpoints"] for p in per if p["status"] == s}) for s in {p["status"] for p in per}}
    return {"args": args, "wall_s": wall, "trials": len(per), "folder_MiB": total,
            "MiB_per_trial": sum(p["MiB"] for p in per) / len(per),
            "study_and_export_MiB": total - sum(p["MiB"] for p in per),
            "checkpoints_kept_by_status": kept, "per_trial": per}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--part", choices=("cost", "search", "all"), default="all")
    a = ap.parse_args()
    out = RESULTS / "checkpoints.json"
    payload = json.loads(out.read_text()) if out.is_file() else {}
    payload = {k: payload[k] for k in ("cost", "search") if k in payload}
    if a.part in ("cost", "all"):
        payload["cost"] = [cost("tiny", 64), cost("xresnet50", 64), cost("xresnet50", 128)]
        for c in payload["cost"]:
            print(f"{c['arch']} {c['size']}px: checkpoint {c['checkpoint_MiB_with_optimizer']:.1f} MiB "
                  f"({c['checkpoint_MiB_weights_only']:.1f} weights only), {c['checkpoint_s']:.2f} s to write "
                  f"and copy, epoch {c['epoch_s']:.2f} s", flush=True)
        save("checkpoints", payload)
    if a.part in ("search", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            payload["search"] = {
                "smoke": search("smoke", ["--space", "smoke"], Path(tmp)),
                # one at a time, so that ASHA has an earlier trial to stop the next ones against
                "xresnet50_64px": search("xresnet50", ["--space", "smoke", "--samples", "3", "--max-epochs", "3",
                                                       "--grace-period", "1", "--concurrent", "1",
                                                       "--set", "arch=xresnet50",
                                                       "--data", "synthetic:train=100,val=20,px=64,seed=9"],
                                         Path(tmp)),
            }
            shutil.rmtree(tmp, ignore_errors=True)
        for k, v in payload["search"].items():
            print(f"{k}: {v['folder_MiB']:.1f} MiB in all, {v['MiB_per_trial']:.2f} MiB per trial, checkpoints "
                  f"kept by status {v['checkpoints_kept_by_status']}, {v['wall_s']:.0f} s", flush=True)
        save("checkpoints", payload)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
