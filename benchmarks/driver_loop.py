"""Does the driver keep up at width? Snapshot cadence, TensorBoard's lag and the driver's CPU at 2 and 16 at once,
with the trials on local disk and on S3.

python benchmarks/driver_loop.py [--widths 2 16] [--storages disk s3] [--samples 32] [--max-epochs 4]
Each search is `tune/run.py --space smoke` as a user runs it (random search + ASHA, so that every slot
is busy from the start, one logical CPU per trial: RAY_OVERRIDE_RESOURCES, Ray's own switch). `disk` keeps
the results on local disk; `s3` gives `--storage s3://...` on moto's S3 server, started here (its request log
counts what each snapshot uploads). While it runs, a watcher polls every 0.1 s:
- snapshots: when Ray's experiment_state-*.json changes in the results folder (disk), or in the bucket (s3:
  uploaded; a kill of the driver loses what happened since the last one; the README promises about 2 s,
  TUNE_GLOBAL_CHECKPOINT_S);
- the lag of each result row, from the time the trial reported it (Ray's whole-second `timestamp`, so the
  lag is counted from the middle of that second) to the time it shows up in the trial's result.json: in
  Ray's staging folder, where the driver's loggers write it (the driver's lag: while the driver is blocked,
  the trial waits in its report), and in the storage, which TensorBoard reads (the results folder, or the
  bucket, listed every 0.5 s): Ray copies the staging folder there at each snapshot;
- the driver's CPU: its user + system time over the wall time (/proc/<pid>/stat), Ray's own processes aside.
Also the size of Ray's last snapshot. Saves benchmarks/results/driver_loop.json after every search.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, local_s3, save

NAME = "driver_loop"
TICK = 0.1


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


BUCKET = "searches"


def newest_state(client, name: str) -> dict | None:
    """The bucket's newest experiment_state: its ETag changes when Ray has uploaded a snapshot."""
    objs = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{name}/experiment_state-").get("Contents", [])
    return max(objs, key=lambda o: o["Key"]) if objs else None


class FolderRows:
    """Result rows as they show up in the trials' result.json under a folder (a glob while it is not made)."""

    def __init__(self, folder: Path | str):
        self.folder, self.seen = folder, {}

    def new(self) -> list[dict]:
        if isinstance(self.folder, str):   # Ray's staging folder, which it makes once the search starts
            self.folder = next(iter(Path("/").glob(self.folder.lstrip("/"))), self.folder)
            if isinstance(self.folder, str):
                return []
        return [row for f in self.folder.glob("*/result.json") for row in self.read(f, f.read_text())]

    def read(self, key, text: str) -> list[dict]:
        rows = []
        for line in text.splitlines()[self.seen.get(key, 0):]:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a row caught half written: read it at the next poll
                break
            self.seen[key] = self.seen.get(key, 0) + 1
        return rows


class BucketRows(FolderRows):
    """The same in the bucket: what TensorBoard reading the store sees."""

    def __init__(self, client, name: str):
        super().__init__(name)
        self.client, self.sizes = client, {}

    def new(self) -> list[dict]:
        rows = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{self.folder}/"):
            for o in page.get("Contents", []):
                if o["Key"].endswith("/result.json") and self.sizes.get(o["Key"]) != o["Size"]:
                    self.sizes[o["Key"]] = o["Size"]
                    body = self.client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read().decode()
                    rows += self.read(o["Key"], body)
        return rows


def quantiles(xs: list[float]) -> dict:
    q = lambda p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] if xs else None  # noqa: E731
    return {"median": statistics.median(xs) if xs else None, "p95": q(0.95), "max": max(xs, default=None)}


def watch(proc: subprocess.Popen, state, sources: dict) -> dict:
    """Polls until the search exits: when the snapshot changes (`state()`: a marker of the newest one), and
    when each result row shows up in each of `sources` ({name: (FolderRows, seconds between polls)})."""
    snapshots, last, lags, epoch_s, cpu, polled = [], None, {k: [] for k in sources}, [], 0.0, {}
    t0 = time.time()
    while proc.poll() is None:
        now = time.time()
        try:
            cpu = cpu_seconds(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
        if (m := state()) is not None and m != last:
            snapshots.append(now)
            last = m
        for k, (rows, every) in sources.items():
            if now - polled.get(k, 0) >= every:
                polled[k] = now
                for row in rows.new():
                    lags[k].append(now - (row["timestamp"] + 0.5))
                    if k == "driver":
                        epoch_s.append(row["time_this_iter_s"])
        time.sleep(TICK)
    wall = time.time() - t0
    gaps = [b - a for a, b in zip(snapshots, snapshots[1:])]
    return {"wall_s": wall, "driver_cpu_s": cpu, "driver_cpu_fraction_of_one_core": cpu / wall,
            "snapshots": len(snapshots), "snapshot_gap_s": quantiles(gaps),
            "results_seen": len(epoch_s), "epoch_s_median": statistics.median(epoch_s) if epoch_s else None,
            **{f"{k}_lag_s": quantiles(v) for k, v in lags.items()}}


def requests(log: Path, name: str) -> dict:
    """What the search asked of the S3 server, from its request log: files written (a small file is one
    multipart upload of three requests, or one PUT), folder markers, and how many files each snapshot wrote."""
    lines = [line for line in log.read_text().splitlines() if f" /{BUCKET}/{name}/" in line]
    starts = [line for line in lines if '"POST ' in line and "?uploads " in line]
    puts = [line for line in lines if '"PUT ' in line and "partNumber=" not in line]
    markers = [line for line in puts if "/ HTTP/" in line]
    files = len(starts) + len(puts) - len(markers)
    states = sum("/experiment_state-" in line for line in starts + puts)
    return {"requests": len(lines), "files_written": files, "folder_markers": len(markers),
            "snapshots_uploaded": states, "files_per_snapshot": files / states if states else None}


def run(width: int, storage: str, args, root: Path) -> dict:
    name = f"w{width}-{storage}"
    cmd = [sys.executable, str(ROOT / "tune" / "run.py"), "--space", "smoke", "--searcher", "random",
           "--samples", str(args.samples), "--max-epochs", str(args.max_epochs), "--grace-period", "2",
           "--concurrent", str(width), "--cpus-per-trial", "1", "--gpus-per-trial", "0",
           "--results", str(root), "--name", name]
    env = {**os.environ, "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": max(width, 2)}),
           "RAY_TMPDIR": str(root / "ray")}
    # the driver's loggers write to Ray's staging folder, copied to the storage at each snapshot
    sources = {"driver": (FolderRows(f"{root}/ray/ray/session_*/artifacts/*/{name}/driver_artifacts"), TICK)}
    with contextlib.ExitStack() as stack:
        if storage == "s3":
            env_s3, client = stack.enter_context(local_s3(BUCKET, root / f"{name}-s3.log"))
            env.update({k: v for k, v in env_s3.items() if k.startswith("AWS_")})
            cmd += ["--storage", f"s3://{BUCKET}"]
            sources["tensorboard"] = (BucketRows(client, name), 0.5)   # a listing of the bucket: not too often
            state = lambda: (newest_state(client, name) or {}).get("ETag")  # noqa: E731
            size = lambda: newest_state(client, name)["Size"]  # noqa: E731
        else:
            folder = root / name
            sources["tensorboard"] = (FolderRows(folder), TICK)
            state = lambda: max((f.stat().st_mtime for f in folder.glob("experiment_state-*.json")), default=None)  # noqa: E731
            size = lambda: max(folder.glob("experiment_state-*.json")).stat().st_size  # noqa: E731
        with open(root / f"{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            out = watch(proc, state, sources)
        out["state_bytes"] = size()   # Ray's last snapshot of the trials, written (and uploaded) every 2 s
    if proc.returncode:
        sys.exit(f"search {name} failed:\n{(root / f'{name}.log').read_text()[-3000:]}")
    if storage == "s3":
        out["s3"] = requests(root / f"{name}-s3.log", name)
    return {"width": width, "storage": storage, **out}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--widths", type=int, nargs="+", default=[2, 16])
    p.add_argument("--storages", nargs="+", choices=["disk", "s3"], default=["disk", "s3"])
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--max-epochs", type=int, default=4)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.widths:
            for storage in args.storages:
                print(f"width {w}, {storage}: {args.samples} trials of smoke, random + ASHA", flush=True)
                rows.append(run(w, storage, args, Path(tmp)))
                r = rows[-1]
                lag = lambda k: "/".join(f"{r[k][q]:.2f}" for q in ("median", "p95", "max"))  # noqa: E731
                print(f"  {r['wall_s']:.0f} s, {r['snapshots']} snapshots (gap {lag('snapshot_gap_s')} s, median/"
                      f"p95/max); lag to the driver's logs {lag('driver_lag_s')} s, to TensorBoard's "
                      f"{lag('tensorboard_lag_s')} s; driver CPU {100 * r['driver_cpu_fraction_of_one_core']:.0f}% "
                      f"of a core; state {r['state_bytes']} bytes{'; ' + json.dumps(r['s3']) if 's3' in r else ''}",
                      flush=True)
                save(NAME, {"space": "smoke", "searcher": "random + ASHA", "samples": args.samples,
                            "max_epochs": args.max_epochs, "poll_s": TICK, "rows": rows})


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
