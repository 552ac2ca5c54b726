"""Does the driver keep up at width? Snapshot cadence, TensorBoard's lag and the driver's CPU at 2 and 16 at once.

python benchmarks/driver_loop.py [--widths 2 16] [--samples 32] [--max-epochs 4]
Each search is `tune/run.py --space smoke` as a user runs it (random search + ASHA, so that every slot
is busy from the start, one logical CPU per trial: RAY_OVERRIDE_RESOURCES, Ray's own switch), with the
results on local disk. While it runs, a watcher polls results/<name>/ every 0.1 s:
- snapshots: when Ray's experiment_state-*.json changes there (what a kill of the driver loses is what
  happened since the last one; the README promises about 2 s, TUNE_GLOBAL_CHECKPOINT_S);
- TensorBoard's lag: for every result row, the time it shows up in results/<name>/<trial>/result.json
  (synced with the events files) minus the time the trial reported it (Ray's whole-second `timestamp`,
  so the lag is counted from the middle of that second);
- the driver's CPU: its user + system time over the wall time (/proc/<pid>/stat), Ray's own processes aside.
Saves benchmarks/results/driver_loop.json after every width.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, save

NAME = "driver_loop"
TICK = 0.1


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def watch(proc: subprocess.Popen, exp: Path) -> dict:
    """Polls the results folder until the search exits: snapshot times, first-seen time of each result row."""
    snapshots, last_mtime, seen, lags, cpu = [], None, {}, [], 0.0
    t0 = time.time()
    while proc.poll() is None:
        now = time.time()
        try:
            cpu = cpu_seconds(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
        states = sorted(exp.glob("experiment_state-*.json"))
        if states:
            m = states[-1].stat().st_mtime
            if m != last_mtime:
                snapshots.append(now)
                last_mtime = m
        for f in exp.glob("*/result.json"):
            lines = f.read_text().splitlines()
            for line in lines[seen.get(f, 0):]:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a row caught half written: read it at the next tick
                    break
                lags.append(now - (row["timestamp"] + 0.5))
                seen[f] = seen.get(f, 0) + 1
        time.sleep(TICK)
    wall = time.time() - t0
    gaps = [b - a for a, b in zip(snapshots, snapshots[1:])]
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] if xs else None  # noqa: E731
    return {"wall_s": wall, "driver_cpu_s": cpu, "driver_cpu_fraction_of_one_core": cpu / wall,
            "snapshots": len(snapshots),
            "snapshot_gap_s": {"median": statistics.median(gaps) if gaps else None, "p95": q(gaps, 0.95),
                               "max": max(gaps, default=None)},
            "results_seen": len(lags),
            "tensorboard_lag_s": {"median": statistics.median(lags) if lags else None, "p95": q(lags, 0.95),
                                  "max": max(lags, default=None)}}


def run(width: int, args, root: Path) -> dict:
    name = f"w{width}"
    cmd = [sys.executable, str(ROOT / "tune" / "run.py"), "--space", "smoke", "--searcher", "random",
           "--samples", str(args.samples), "--max-epochs", str(args.max_epochs), "--grace-period", "2",
           "--concurrent", str(width), "--cpus-per-trial", "1", "--gpus-per-trial", "0",
           "--results", str(root), "--name", name]
    env = {**os.environ, "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": max(width, 2)})}
    with open(root / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        out = watch(proc, root / name)
    if proc.returncode:
        sys.exit(f"search {name} failed:\n{(root / f'{name}.log').read_text()[-3000:]}")
    rows = [json.loads(line) for f in (root / name).glob("*/result.json") for line in f.read_text().splitlines()]
    epoch_s = [r["time_this_iter_s"] for r in rows]
    return {"width": width, **out, "epochs": len(rows), "epoch_s_median": statistics.median(epoch_s)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--widths", type=int, nargs="+", default=[2, 16])
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--max-epochs", type=int, default=4)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.widths:
            print(f"width {w}: {args.samples} trials of smoke, random + ASHA", flush=True)
            rows.append(run(w, args, Path(tmp)))
            r = rows[-1]
            print(f"  {r['wall_s']:.0f} s, {r['snapshots']} snapshots, gap median {r['snapshot_gap_s']['median']:.2f} s "
                  f"max {r['snapshot_gap_s']['max']:.2f} s; TensorBoard lag median "
                  f"{r['tensorboard_lag_s']['median']:.2f} s p95 {r['tensorboard_lag_s']['p95']:.2f} s max "
                  f"{r['tensorboard_lag_s']['max']:.2f} s; driver CPU {100 * r['driver_cpu_fraction_of_one_core']:.0f}%"
                  f" of a core", flush=True)
            save(NAME, {"space": "smoke", "searcher": "random + ASHA", "samples": args.samples,
                        "max_epochs": args.max_epochs, "poll_s": TICK, "rows": rows})


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
