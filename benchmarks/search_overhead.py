"""How much of a smoke search's wall time is not training: Ray, start-up and data preparation.

python benchmarks/search_overhead.py [--space smoke] [run.py options ...]
Runs `tune/run.py` as a user would, twice: "cold", with a fresh dataset home (so generating and decoding
the data is counted), then "warm", the same search again once the data is prepared, as on any later
search on that machine. Each run's wall time is compared with the trials' own work (every epoch's
seconds plus the final TTA pass, spread over the trial slots that ran in parallel):
overhead = 1 - work / (slots * wall). It counts everything else: Python and Ray start-up, data
preparation, each trial's set-up, checkpoints and reports, the idle slot while the last trial finishes,
and the export at the end. Writes benchmarks/results/search_overhead.json.
"""
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, save

from tune.trials import Experiment


def search(extra: list[str], home: Path, results: Path, name: str) -> dict:
    env = {**os.environ, "IMAGENETTE_TUNE_HOME": str(home)}
    t0, began = time.perf_counter(), time.time()
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), *extra, "--results", str(results),
                        "--name", name], env=env, capture_output=True, text=True)
    wall, ended = time.perf_counter() - t0, time.time()
    if r.returncode:
        sys.exit(f"search failed:\n{r.stderr[-3000:]}")
    exp = Experiment(results / name)
    settings = exp.settings()
    trials = []
    for t in exp.trials():
        rows = t.history
        if not rows:  # a trial that failed before its first epoch
            continue
        start = rows[0]["timestamp"] - rows[0]["time_total_s"]  # Ray's timestamps are whole seconds
        trials.append({"epochs": len(rows), "work_s": sum(x["epoch_s"] + x.get("tta_s", 0) for x in rows),
                       "trainable_s": rows[-1]["time_total_s"], "start": start,
                       "end": start + rows[-1]["time_total_s"]})
    # the trials' share of the machine, as run.py printed it: "... 1 CPU / 0 GPU per trial ..."
    cpu, gpu = map(float, re.search(r"([\d.]+) CPU / ([\d.]+) GPU per trial", r.stdout).groups())
    slots = min(int(os.cpu_count() // cpu), int(torch.cuda.device_count() // gpu) if gpu else 10**6,
                settings["concurrent"] or settings["samples"])
    work = sum(t["work_s"] for t in trials)
    return {"wall_s": wall, "slots": slots, "trials": len(trials), "epochs": sum(t["epochs"] for t in trials),
            "work_s_sum": work, "trainable_s_sum": sum(t["trainable_s"] for t in trials),
            "before_first_trial_s": min(t["start"] for t in trials) - began,  # Python, Ray, data preparation
            "after_last_trial_s": ended - max(t["end"] for t in trials),      # export and Ray's shutdown
            "overhead_fraction": 1 - work / (slots * wall)}


def main():
    extra = sys.argv[1:] or ["--space", "smoke"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("cold", "warm"):
            runs[kind] = r = search(extra, Path(tmp) / "home", Path(tmp), kind)
            print(f"{kind}: wall {r['wall_s']:.1f} s, trials' work {r['work_s_sum']:.1f} s over {r['slots']} slots: "
                  f"overhead {r['overhead_fraction']:.1%} ({r['before_first_trial_s']:.0f} s before the first trial, "
                  f"{r['after_last_trial_s']:.0f} s after the last)", flush=True)
    save("search_overhead", {"command": "python tune/run.py " + " ".join(extra), **runs,
                             "target": "overhead_fraction < 0.15"})


if __name__ == "__main__":
    main()
