"""The driver at width: how often Ray's snapshots land, how far TensorBoard's files trail the trials, and
how busy the driver is, at 2 and 16 trials at once (logical CPUs on this machine: real Ray, Optuna, fastai).

python benchmarks/driver_loop.py [--samples 32]
Each width runs `tune/run.py --space smoke` on small generated data with one logical CPU per trial. While
it runs, the folder is read every 0.2 s as TensorBoard reads it: each epoch's row is timed from the
moment the trial produced it (its `timestamp`, whole seconds) to the moment it is in the trial's
result.json in results/ (the events file is synced with it), and each new snapshot of Ray's state
(experiment_state-*.json) is timed against the one before. The driver's CPU time over the search gives
how busy its loop was. Writes benchmarks/results/driver_loop.json.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, save


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (Linux /proc; psutil is not among the project's packages)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quantiles(xs: list[float]) -> dict:
    if not xs:
        return {}
    xs = sorted(xs)
    return {"n": len(xs), "mean": sum(xs) / len(xs), "p50": xs[len(xs) // 2], "p95": xs[int(0.95 * (len(xs) - 1))],
            "max": xs[-1]}


def watch(exp: Path, stop: threading.Event, seen: dict, snapshots: list) -> None:
    last_state = None
    while not stop.is_set():
        now = time.time()
        for f in exp.glob("*/result.json"):
            try:
                lines = f.read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                seen.setdefault((f.parent.name, row.get("epoch")), (now, row.get("timestamp")))
        states = sorted(exp.glob("experiment_state-*.json"))
        if states:
            m = states[-1].stat().st_mtime
            if m != last_state:
                snapshots.append(now)
                last_state = m
        stop.wait(0.2)


def run(width: int, samples: int, results: Path) -> dict:
    name = f"w{width}"
    env = {**os.environ, "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": width})}
    args = [sys.executable, str(ROOT / "tune" / "run.py"), "--space", "smoke", "--samples", str(samples),
            "--max-epochs", "4", "--grace-period", "2", "--cpus-per-trial", "1", "--concurrent", str(width),
            "--data", "synthetic:train=20,val=10,px=64,seed=3", "--results", str(results), "--name", name]
    seen, snapshots, stop = {}, [], threading.Event()
    t0 = time.perf_counter()
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watcher = threading.Thread(target=watch, args=(results / name, stop, seen, snapshots), daemon=True)
    watcher.start()
    cpu = 0.0
    while p.poll() is None:
        try:
            cpu = cpu_seconds(p.pid)
        except (OSError, IndexError):  # it has just exited
            pass
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    if p.returncode:
        sys.exit(f"width {width} failed:\n{p.stderr.read()[-3000:]}")
    lags = [at - ts for at, ts in seen.values() if ts]
    gaps = [b - a for a, b in zip(snapshots, snapshots[1:])]
    return {"width": width, "samples": samples, "wall_s": wall, "epochs": len(seen),
            "tensorboard_lag_s": quantiles(lags), "snapshot_interval_s": quantiles(gaps),
            "driver_cpu_s": cpu, "driver_cpu_fraction_of_a_core": cpu / wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=32)
    a = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for width in (2, 16):
            out[f"width_{width}"] = r = run(width, a.samples, Path(tmp))
            print(f"{width} at once: {r['epochs']} epochs in {r['wall_s']:.0f} s; TensorBoard lag "
                  f"p50 {r['tensorboard_lag_s']['p50']:.1f} s, p95 {r['tensorboard_lag_s']['p95']:.1f} s, max "
                  f"{r['tensorboard_lag_s']['max']:.1f} s; snapshots every {r['snapshot_interval_s']['p50']:.1f} s "
                  f"(p95 {r['snapshot_interval_s']['p95']:.1f}, max {r['snapshot_interval_s']['max']:.1f}); driver "
                  f"{100 * r['driver_cpu_fraction_of_a_core']:.0f}% of a core", flush=True)
    save("driver_loop", {"command": "python benchmarks/driver_loop.py " + " ".join(sys.argv[1:]), **out,
                         "note": "timestamps are whole seconds: a lag is exact to about 1 s"})


if __name__ == "__main__":
    main()
