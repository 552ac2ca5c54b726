"""benchmarks/gpu_session.sh, the prepared GPU session, run as its --dry-run: the same steps on the CPU, tiny."""
import json
import os
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


def env_with(python_dir: Path) -> dict:
    return {**os.environ, "PATH": f"{python_dir}:{os.environ['PATH']}", "PYTHONPATH": ""}


def test_the_dry_run_runs_every_step_and_writes_its_results_in_one_folder(tmp_path):
    out = tmp_path / "session"
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out)], cwd=tmp_path,
                       env=env_with(Path(sys.executable).parent), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [(s["step"], s["status"]) for s in steps] == [("throughput", "ok"), ("leaderboard", "ok")]
    tp = json.loads((out / "results" / "device_throughput-tiny-32.json").read_text())
    assert tp["bound_images_per_s"] > 0 and 0 < tp["tensor_fraction_of_bound"] and tp["packing"][0]["trials"] == 1
    assert tp["tensor_cache_on"] == "cpu" and tp["packing"][0]["cache_on"] == ["cpu"]   # where each run's cache was
    cell = json.loads((out / "results" / "real_quality-smoke.json").read_text())["budget"]
    assert cell["ladder_rungs"] == 1 and cell["search_trials"] == 2 and cell["seeds"] == [1]
    assert cell["epoch_s_median"] > 0 and cell["epochs_with_checkpoint"] >= 1
    with tarfile.open(out / "session.tar.gz") as t:   # what one file back from the device holds
        names = set(t.getnames())
    assert {"./steps.jsonl", "./session.log", "./results/real_quality-smoke.json"} <= names
    assert not (ROOT / "benchmarks" / "results" / "device_throughput-tiny-32.json").exists()   # committed ones untouched


def test_without_fastai_and_without_a_bundle_it_stops_first_in_one_line(tmp_path):
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)   # this Python without the project's packages
    r = subprocess.run(["bash", str(SCRIPT), "--part", "throughput", "--bundle", str(tmp_path / "none"), "--out",
                        str(tmp_path / "s")], cwd=tmp_path, env=env_with(bare / "bin"), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "no bundle at" in r.stdout and not (tmp_path / "s" / "steps.jsonl").exists()
