"""How much of a smoke search's wall time is not training: Ray, start-up and data preparation.

python benchmarks/search_overhead.py [--space smoke] [run.py options ...]
Runs `tune/run.py` as a user would (a fresh dataset home, so data preparation is counted), then compares
its wall time with the trials' own training time (the sum of every reported epoch's seconds, spread over
the trial slots that ran in parallel): overhead = 1 - sum(epoch_s) / (slots * wall). It counts everything
that is not an epoch: Python and Ray start-up, data preparation, each trial's set-up and checkpoints, the
idle slot while the last trial finishes, and the export at the end.
Writes benchmarks/results/search_overhead.json.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, save


def main():
    extra = sys.argv[1:] or ["--space", "smoke"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "IMAGENETTE_TUNE_HOME": str(Path(tmp) / "home")}
        t0, began = time.perf_counter(), time.time()
        r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), *extra, "--results", tmp,
                            "--name", "overhead"], env=env, capture_output=True, text=True)
        wall, ended = time.perf_counter() - t0, time.time()
        if r.returncode:
            sys.exit(f"search failed:\n{r.stderr[-3000:]}")
        exp = Path(tmp) / "overhead"
        settings = json.loads((exp / "search.json").read_text())
        trials = []
        for f in exp.glob("*/result.json"):
            rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            start = rows[0]["timestamp"] - rows[0]["time_total_s"]  # Ray's timestamps are whole seconds
            trials.append({"epochs": len(rows), "train_s": sum(x["epoch_s"] for x in rows),
                           "trainable_s": rows[-1]["time_total_s"], "start": start,
                           "end": start + rows[-1]["time_total_s"]})
    cpus = float(os.cpu_count())
    per_trial = settings["cpus_per_trial"] or max(1.0, cpus // 4)
    slots = min(int(cpus // per_trial), settings["concurrent"] or settings["samples"])
    train_s = sum(t["train_s"] for t in trials)
    overhead = 1 - train_s / (slots * wall)
    before = min(t["start"] for t in trials) - began   # Python, Ray and data preparation
    after = ended - max(t["end"] for t in trials)       # export: best config, leaderboard, report
    save("search_overhead", {
        "before_first_trial_s": before, "after_last_trial_s": after,
        "command": "python tune/run.py " + " ".join(extra), "wall_s": wall, "slots": slots,
        "trials": len(trials), "epochs": sum(t["epochs"] for t in trials), "train_s_sum": train_s,
        "trainable_s_sum": sum(t["trainable_s"] for t in trials), "overhead_fraction": overhead,
        "target": "overhead_fraction < 0.15"})
    print(f"wall {wall:.1f} s, training {train_s:.1f} s over {slots} slots: overhead {overhead:.1%} "
          f"({before:.0f} s before the first trial, {after:.0f} s of export after the last)")


if __name__ == "__main__":
    main()
