"""How much of a smoke search's wall time is not training: Ray, start-up and data preparation.

python benchmarks/search_overhead.py [--space smoke] [run.py options ...]
Runs `tune/run.py` as a user would (a fresh dataset home, so data preparation is counted), then compares
its wall time with the trials' own training time (the sum of every reported epoch's seconds, spread over
the trial slots that ran in parallel): overhead = 1 - sum(epoch_s) / (slots * wall).
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
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), *extra, "--results", tmp,
                            "--name", "overhead"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            sys.exit(f"search failed:\n{r.stderr[-3000:]}")
        exp = Path(tmp) / "overhead"
        settings = json.loads((exp / "search.json").read_text())
        trials = []
        for f in exp.glob("*/result.json"):
            rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            trials.append({"epochs": len(rows), "train_s": sum(x["epoch_s"] for x in rows),
                           "trainable_s": rows[-1]["time_total_s"] if rows else 0})
    cpus = float(os.cpu_count())
    per_trial = settings["cpus_per_trial"] or max(1.0, cpus // 4)
    slots = min(int(cpus // per_trial), settings["concurrent"] or settings["samples"])
    train_s = sum(t["train_s"] for t in trials)
    overhead = 1 - train_s / (slots * wall)
    save("search_overhead", {
        "command": "python tune/run.py " + " ".join(extra), "wall_s": wall, "slots": slots,
        "trials": len(trials), "epochs": sum(t["epochs"] for t in trials), "train_s_sum": train_s,
        "trainable_s_sum": sum(t["trainable_s"] for t in trials), "overhead_fraction": overhead,
        "target": "overhead_fraction < 0.15"})
    print(f"wall {wall:.1f} s, training {train_s:.1f} s over {slots} slots: overhead {overhead:.1%}")


if __name__ == "__main__":
    main()
