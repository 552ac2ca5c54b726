"""tune/run.py as a user runs it: real Ray, Optuna and fastai on tiny generated data, on the CPU."""
import contextlib
import csv
import json
import os
import pickle
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch

from conftest import ROOT

RUN = [sys.executable, str(ROOT / "tune" / "run.py")]
HAS_GPU = torch.cuda.is_available()
FAST = ["--data", "synthetic:train=20,val=10,px=64,seed=3"]
SMOKE_EPOCHS = 4  # the smoke fixture's --max-epochs, shorter than the space's own
SMOKE_DATA = "synthetic:train=100,val=20,px=64,seed=5"  # a third of the default's images: enough to rank trials


def run(args, cwd, timeout=600):
    return subprocess.run(RUN + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def study(exp: Path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{exp / 'optuna.db'}")
    return optuna.load_study(study_name=exp.name, storage=storage)


def trial_dirs(exp: Path):
    return sorted(p.parent for p in exp.glob("*/params.json"))


def results_of(trial: Path):
    return [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke search shared by the checks below (it is the expensive part)."""
    root = tmp_path_factory.mktemp("results")
    r = run(["--space", "smoke", "--samples", "8", "--max-epochs", str(SMOKE_EPOCHS), "--name", "smoke",
             "--results", str(root), "--data", SMOKE_DATA], root)
    return r, root / "smoke"


def test_smoke_search_completes_and_exports(smoke):
    r, exp = smoke
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"tensorboard --logdir {exp}" in r.stdout
    assert "best:" in r.stdout and "best_config.json" in r.stdout
    # TPE's start-up trials are the only random ones, though two run at once
    from tune.search import startup_trials
    assert [bool(t.user_attrs.get("guided")) for t in study(exp).trials].count(False) == startup_trials(8)
    # the live view: a line of overall progress, then the leading and running trials, in 120 columns; pruned
    # trials said to be, with their rung; none of Ray's logdir lines, nor fastai's progress bars or tables
    assert re.search(r"\ntrials: \d completed, \d pruned, 0 errored, 0 running of 8 \| epochs \d+/32 \| "
                     r"\d+(m \d\ds|s) elapsed, ~0s left\n", r.stdout), r.stdout[-3000:]
    assert re.search(r"\bpruned@3\s+3\s", r.stdout) and "trial         status     epoch    acc   best  config" in r.stdout
    lines = r.stdout.splitlines()
    view = lines[next(i for i, x in enumerate(lines) if x.startswith("watch it:")) + 1:
                 next(i for i, x in enumerate(lines) if x.startswith("8 trials ("))]
    assert len(view) > 10 and max(map(len, view)) <= 120
    assert "Result logdir" not in r.stdout and "Current best trial" not in r.stdout and "192.0.2" not in r.stdout
    assert "█" not in r.stdout and "train_loss  valid_loss" not in r.stdout
    assert len(trial_dirs(exp)) == 8
    best = json.loads((exp / "best_config.json").read_text())
    from trainables.config import FIELDS, TrainConfig
    assert set(best["config"]) == set(FIELDS)
    TrainConfig.from_dict(best["config"])
    p = best["provenance"]
    assert p["status"] == "completed" and p["epochs_trained"] == SMOKE_EPOCHS
    assert p["experiment"] == "smoke" and p["metric"] == "accuracy" and p["git_commit"]
    assert {"torch", "fastai", "ray", "optuna"} <= set(p["versions"])
    assert sum(p["trials"].values()) == 8
    best_rows = results_of(exp / p["trial"])
    assert p["value"] == best_rows[-1]["accuracy"] and len(best_rows) == SMOKE_EPOCHS
    assert p["searched"] == {k: best["config"][k] for k in p["searched"]}
    # chosen on a holdout of train/: val/ was neither read by the trials nor indexed by the driver
    from trainables.data import _cache_key, index, prepare
    root = prepare(SMOKE_DATA)
    assert best["config"]["split"] == "holdout"
    assert p["chosen_on"] == {"data": SMOKE_DATA, "split": "holdout", "holdout_frac": 0.2, "holdout_seed": 0,
                              "fingerprint": index(root, ("train",)).fingerprint}
    indexed = sorted(f.name for f in (Path(os.environ["IMAGENETTE_TUNE_HOME"]) / "index").iterdir()
                     if f.name.startswith(_cache_key(root)))
    assert indexed == [f"{_cache_key(root)}-train.json"]
    assert "holdout of train/" in (exp / "report.md").read_text()
    with open(exp / "leaderboard.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    assert {"trial_id", "status", "epochs", "accuracy", "best_accuracy", "accuracy_tta", "train_s", "lr",
            "mixup_alpha", "label_smoothing", "resize_start", "resize_frac"} <= set(rows[0])
    assert rows[0]["trial_id"] == p["trial"]   # sorted best first
    for row in rows:
        hist = [m["accuracy"] for m in results_of(exp / row["trial_id"])]
        assert int(row["epochs"]) == len(hist) and float(row["best_accuracy"]) == pytest.approx(max(hist))
        assert row["status"] in ("completed", "pruned") and float(row["train_s"]) > 0


def test_asha_stops_trials_and_optuna_records_them_pruned_with_intermediate_values(smoke):
    _, exp = smoke
    trials = study(exp).trials
    assert len(trials) == 8
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert pruned and complete
    for t in pruned:
        assert t.intermediate_values and max(t.intermediate_values) < SMOKE_EPOCHS
        assert t.value == t.intermediate_values[max(t.intermediate_values)]
        assert t.user_attrs["status"] == f"pruned by ASHA at its rung at epoch {max(t.intermediate_values)}"
    for t in complete:   # every epoch, the last one too (optuna-dashboard draws them)
        assert sorted(t.intermediate_values) == list(range(1, SMOKE_EPOCHS + 1))
        assert t.intermediate_values[SMOKE_EPOCHS] == t.value and t.user_attrs["status"] == "completed"
    for t in trials:
        assert t.user_attrs["epochs"] == max(t.intermediate_values) and t.user_attrs["ray_trial_id"]
    assert study(exp).metric_names == ["accuracy"]   # not optuna-dashboard's "Objective 0"
    # Ray's folders agree with the study on how far each trial got
    epochs = {d.name: len(results_of(d)) for d in trial_dirs(exp)}
    for t in trials:
        want = SMOKE_EPOCHS if t.state.name == "COMPLETE" else max(t.intermediate_values)
        assert epochs[t.user_attrs["ray_trial_id"]] == want


def test_a_finished_search_keeps_one_checkpoint_per_completed_trial_and_none_of_a_stopped_one(smoke):
    _, exp = smoke
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in study(exp).trials}
    for d in trial_dirs(exp):
        kept = sorted(d.glob("checkpoint_*"))
        if states[d.name] == "PRUNED":
            assert kept == [], d.name
            continue
        assert len(kept) == 1, d.name
        state = json.loads((kept[0] / "state.json").read_text())
        assert state["epoch"] == SMOKE_EPOCHS and len(state["history"]) == SMOKE_EPOCHS
        saved = torch.load(kept[0] / "model.pth", map_location="cpu", weights_only=False)
        assert "opt" not in saved and any(k.endswith("weight") for k in saved)   # the weights, no optimizer


def test_every_trial_has_tensorboard_accuracy_per_epoch_and_hparams(smoke):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from trainables.board import SCALARS
    _, exp = smoke
    searched = {"lr", "mixup_alpha", "label_smoothing", "resize_start", "resize_frac"}
    for d in trial_dirs(exp):
        accuracy, hparams, tags = [], set(), set()
        for f in d.glob("events.out.tfevents.*"):
            for event in EventFileLoader(str(f)).Load():
                for v in event.summary.value:
                    tags.add(v.tag)
                    if v.tag == "accuracy":
                        accuracy.append(event.step)
                    if v.tag == "_hparams_/session_start_info":
                        hparams |= set(HParamsPluginData.FromString(v.metadata.plugin_data.content)
                                       .session_start_info.hparams)
        assert accuracy == [r["epoch"] for r in results_of(d)] and accuracy   # one point per epoch, at its epoch
        assert searched | {"status"} <= hparams
        plain = {t for t in tags if not t.startswith("_hparams_/")}
        assert plain <= set(SCALARS) | {"summary/best_accuracy", "summary/epochs", "summary/train_s"}, plain


def test_tensorboard_serves_one_hparams_table_with_every_trial_and_its_status(smoke):
    """TensorBoard itself, started on the search's folder as a user does, read through its HTTP API."""
    import socket
    import urllib.request
    from trainables.board import METRICS
    _, exp = smoke
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    board = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(exp), "--host",
                              "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ask(path, body=None):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode() if body
                                     else None, headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=30).read())
    try:
        deadline = time.time() + 120
        while True:
            try:
                tags = ask("/data/plugin/scalars/tags")
                if len(tags) >= len(trial_dirs(exp)):
                    break
            except OSError:
                pass
            assert time.time() < deadline and board.poll() is None, "tensorboard did not come up"
            time.sleep(1)
        experiment = ask("/data/plugin/hparams/experiment", {"experimentName": ""})
        groups = ask("/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 1000,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"hparam": "status", "includeInResult": True}]})["sessionGroups"]
    finally:
        board.terminate()
        board.wait(30)
    assert not any(t.startswith("ray/") for run in tags.values() for t in run)
    assert {h["name"] for h in experiment["hparamInfos"]} == {"lr", "mixup_alpha", "label_smoothing", "resize_start",
                                                              "resize_frac", "status"}
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == [tag for tag, _ in METRICS]
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in study(exp).trials}
    seen = {g["name"]: g for g in groups}
    assert set(seen) - {"final"} == {d.name for d in trial_dirs(exp)}   # every trial, each once
    for name, g in seen.items():
        assert g["hparams"]["status"] == {"COMPLETE": "completed", "PRUNED": "pruned"}[states[name]]
        values = {m["name"]["tag"]: m["value"] for m in g["metricValues"]}
        assert values["summary/epochs"] == len(results_of(exp / name))
        assert values["accuracy"] == pytest.approx(results_of(exp / name)[-1]["accuracy"])


def test_random_search_without_early_stopping_is_the_baseline(tmp_path):
    r = run(["--space", "smoke", "--samples", "3", "--max-epochs", "2", "--grace-period", "1", "--searcher", "random",
             "--scheduler", "none", "--name", "base", "--results", str(tmp_path), *FAST], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = tmp_path / "base"
    assert "random + none" in r.stdout and "pruned@" not in r.stdout
    trials = study(exp).trials
    assert len(trials) == 3 and {t.state.name for t in trials} == {"COMPLETE"}
    assert all(len(results_of(d)) == 2 for d in trial_dirs(exp))
    assert len({t.params["lr"] for t in trials}) == 3


def test_existing_name_needs_resume_and_nothing_is_touched(smoke, tmp_path):
    _, exp = smoke
    before = sorted(p.name for p in exp.iterdir())
    r = run(["--space", "smoke", "--name", "smoke", "--results", str(exp.parent)], tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr and "--resume" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in exp.iterdir()) == before


def test_a_trial_that_raises_is_recorded_and_the_rest_finish(tmp_path):
    space = tmp_path / "flaky.yaml"
    # fp16 needs a GPU: those trials raise inside the trainable, as a CUDA out-of-memory would
    space.write_text("search: {samples: 4, max_epochs: 2, grace_period: 2}\narch: tiny\nsize: 32\nbs: 16\nworkers: 0\n"
                     "tta: false\nprecision: {choice: [fp32, fp16]}\nlr: {loguniform: [1.0e-3, 1.0e-2]}\n")
    r = run(["--space", str(space), "--name", "flaky", "--results", str(tmp_path), *FAST, "--seed", "1",
             "--gpus-per-trial", "0"], tmp_path)   # trials see no GPU even where the machine has one
    exp = tmp_path / "flaky"
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {d.name: json.loads((d / "params.json").read_text())["precision"] for d in trial_dirs(exp)}
    assert set(rows.values()) == {"fp32", "fp16"}, "the seeded sampler should try both"
    for name, precision in rows.items():
        errored = (exp / name / "error.txt").is_file()
        assert errored == (precision == "fp16")
        if not errored:
            assert len(results_of(exp / name)) == 2
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in study(exp).trials}
    assert {states[n] for n, p in rows.items() if p == "fp16"} == {"FAIL"}
    assert "trial(s) failed" in r.stdout
    lb = (exp / "leaderboard.csv").read_text()
    assert "errored" in lb and "needs a CUDA GPU" in lb
    # the space leaves the data path to the default, and a trial has 1 CPU: no loader process for fastai's
    assert "pipeline=tensor" in r.stdout
    assert {json.loads((d / "params.json").read_text())["pipeline"] for d in trial_dirs(exp)} == {"tensor"}


def test_ctrl_c_says_the_search_was_interrupted_and_how_to_resume_it(tmp_path):
    args = ["--space", "smoke", "--samples", "6", "--max-epochs", "30", "--grace-period", "30", "--name", "cc",
            "--results", str(tmp_path / "results"), *FAST]
    p = subprocess.Popen(RUN + args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any(f.stat().st_size for f in (tmp_path / "results").glob("cc/*/result.json")):
        time.sleep(0.3)
    p.send_signal(signal.SIGINT)   # what Ctrl+C sends
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, out[-2000:] + err[-2000:]
    assert "interrupted: 0 of 6 trials ended, 2 cut short; best so far" in err
    assert err.strip().splitlines()[-1] == "continue it with: python tune/run.py --resume results/cc"
    assert "[W " not in err + out and "train it longer" not in out and "nothing to export" not in err


def test_killed_search_resumes_without_retraining(tmp_path):
    """SIGKILL the driver mid-search, then --resume: every trial runs once, finished ones are not trained again."""
    args = ["--space", "smoke", "--samples", "7", "--max-epochs", "4", "--name", "killed", "--results", str(tmp_path),
            *FAST]
    exp = tmp_path / "killed"
    p = subprocess.Popen(RUN + args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        deadline = time.time() + 300
        done = 0
        while time.time() < deadline and p.poll() is None:
            time.sleep(0.5)
            try:
                with sqlite3.connect(exp / "optuna.db") as c:
                    done = c.execute("select count(*) from trials where state in ('COMPLETE','PRUNED')").fetchone()[0]
            except sqlite3.Error:
                continue
            # and Ray's 2 s snapshot has copied finished trials' logs into results/, which the export reads
            if done >= 3 and sum(f.stat().st_size > 0 for f in exp.glob("*/result.json")) >= 3:
                break
        assert done >= 3 and p.poll() is None, "the search should be mid-way when killed"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)   # the driver and the local Ray it started
        p.wait()
    # TensorBoard reads results/ while the search runs: finished trials' curves are there already
    assert any(d.glob("events.out.tfevents.*") for d in exp.iterdir() if d.is_dir())
    # what the trials had saved when the driver died: epoch -> seconds it took
    saved = {}
    for d in exp.iterdir():
        for ck in d.glob("checkpoint_*/state.json"):
            for m in json.loads(ck.read_text())["history"]:
                saved.setdefault(d.name, {})[m["epoch"]] = m["epoch_s"]

    # an interrupted search exports as it stands: what finished, what was cut off
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "export.py"), str(exp)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (exp / "best_config.json").is_file() and (exp / "report.md").is_file()

    # Ray saves its search generator's count and its snapshot of the trials apart: a kill between the two
    # leaves a count (and a place in the concurrency limit) for a trial the snapshot lacks
    gen = max(exp.glob("search_gen_state-*.json"))
    state = pickle.loads(gen.read_bytes())
    assert state["counter"] < 7
    state["counter"] += 1
    state["name:ConcurrencyLimiter"]["live_trials"].add("lost0000")
    gen.write_bytes(pickle.dumps(state))

    r = run(["--resume", str(exp)], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 trial(s) had started after Ray's last snapshot" in r.stdout
    assert "TPE learns only from finished trials" not in r.stdout   # the launch note is for a new search
    dirs = trial_dirs(exp)
    assert len(dirs) == 7
    for d in dirs:
        rows = results_of(d)
        assert [m["epoch"] for m in rows] == list(range(1, len(rows) + 1)), d.name   # each epoch once
        with open(d / "progress.csv") as fh:
            assert [int(row["epoch"]) for row in csv.DictReader(fh)] == [m["epoch"] for m in rows], d.name
        for m in rows:   # an epoch saved before the kill is replayed, not trained again
            if m["epoch"] in saved.get(d.name, {}):
                assert m["epoch_s"] == saved[d.name][m["epoch"]]
    states = {t.user_attrs.get("ray_trial_id"): t.state.name for t in study(exp).trials}
    assert all(states[d.name] in ("COMPLETE", "PRUNED") for d in dirs)
    assert "RUNNING" not in states.values()


def named_checkpoints(exp: Path) -> dict:
    """{trial id: the checkpoint that Ray's last snapshot of the search names}, read with Ray's own classes."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    named = {}
    for trial, meta in json.loads(max(exp.glob("experiment_state-*.json")).read_text())["trial_data"]:
        latest = _TrainingRunMetadata.from_json_state(meta).checkpoint_manager.latest_checkpoint_result
        if latest:
            named[json.loads(trial)["trial_id"]] = Path(latest.checkpoint.path)
    return named


def test_a_checkpoint_cut_short_by_a_kill_is_passed_over_and_the_older_one_resumed(tmp_path):
    """A kill during Ray's parallel copy leaves a whole state.json beside a truncated model: resume must
    take the checkpoint before it, also where Ray's snapshot names one deleted since (the trial keeps one:
    after Ray's last snapshot it may have reported the next one), and the study, Ray's folders and the export
    must agree afterwards. Trials of 16 short epochs, so that a snapshot (every 2 s) falls mid-way."""
    from tune.trials import checkpoint_state, filesystem
    epochs = 16
    args = ["--space", "smoke", "--samples", "2", "--max-epochs", str(epochs), "--concurrent", "1", "--name", "cut",
            "--results", str(tmp_path), *FAST]
    exp = tmp_path / "cut"
    p = subprocess.Popen(RUN + args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    named = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and named is None:
            time.sleep(0.1)
            with contextlib.suppress(ValueError, OSError, IndexError):   # a file read while it is written
                for ck in named_checkpoints(exp).values():   # the trial may have deleted it since: its newest
                    newest = sorted(ck.parent.glob("checkpoint_*"))[-1]
                    if json.loads((newest / "state.json").read_text())["epoch"] < epochs:
                        os.killpg(p.pid, signal.SIGKILL)
                        named = ck
                        break
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert named is not None, "a trial should be mid-way when killed"
    trial = named.parent
    fs, _ = filesystem(trial)   # the newest whole one: the kill may have cut a copy short
    newest = max((c for c in trial.glob("checkpoint_*") if checkpoint_state(fs, str(c))), key=lambda c: c.name)
    state = json.loads((newest / "state.json").read_text())
    index = int(newest.name.split("_")[1])
    newest = newest.rename(newest.with_name(f"checkpoint_{index + 1:06d}"))
    shutil.rmtree(named, ignore_errors=True)
    assert not named.exists()
    cut = newest.with_name(f"checkpoint_{index + 2:06d}")
    shutil.copytree(newest, cut)
    fake = dict(state["history"][-1], epoch=state["epoch"] + 1, accuracy=-1.0)
    (cut / "state.json").write_text(json.dumps({**state, "epoch": fake["epoch"], "history": state["history"] + [fake]}))
    model = cut / "model.pth"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 3])

    r = run(["--resume", str(exp)], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Error handling checkpoint" not in r.stderr   # Ray's, when the checkpoint it would delete is gone
    states = {t.user_attrs.get("ray_trial_id"): t.state.name for t in study(exp).trials}
    board = {row["trial_id"]: row for row in csv.DictReader(open(exp / "leaderboard.csv"))}
    for d in trial_dirs(exp):
        rows = results_of(d)
        assert [m["epoch"] for m in rows] == list(range(1, len(rows) + 1)), d.name
        assert all(m["accuracy"] >= 0 for m in rows)   # the cut checkpoint's history was never replayed
        assert states[d.name] in ("COMPLETE", "PRUNED") and int(board[d.name]["epochs"]) == len(rows)
        assert len(rows) == epochs or states[d.name] == "PRUNED"
    assert len(list(trial.glob("checkpoint_*"))) <= 1


@pytest.mark.parametrize("args, words", [
    (["--space", "nonexistent"], "unknown space 'nonexistent'"),
    (["--space", "MALFORMED"], "malformed"),
    (["--space", "UNKNOWNKEY"], "unknown config key 'learning_rate'"),
    pytest.param(["--space", "smoke", "--gpus-per-trial", "1"], "has none",
                 marks=pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")),
    (["--space", "smoke", "--gpus-per-trial", "2"], "a trial trains on one GPU"),
    (["--space", "smoke", "--grace-period", "9"], "beyond --max-epochs"),
    (["--space", "smoke", "--set", "mixup_alpha=-2"], "mixup_alpha"),
    (["--space", "smoke", "--data", "/not/a/folder"], "data folder not found"),
    (["--space", "smoke", "--address", "auto"], "--storage"),
    (["--resume", "/not/an/experiment"], "not a search"),
    (["--resume", "EXISTING", "--max-epochs", "3"], "--max-epochs cannot change them"),
    (["--resume", "EXISTING", "--samples", "30"], "cannot be extended"),
    (["--space", "smoke", "--set", "epochs=3"], "--max-epochs"),
    (["--space", "smoke", "--storage", "nosuch://bucket/x"], "cannot reach nosuch://bucket/x"),
    (["--space", "smoke", "--samples", "many"], "invalid int value"),
    (["--space", "smoke", "--sample", "3"], "unrecognized arguments: --sample"),   # no prefix matching
    pytest.param(["--space", "full"], "requires a GPU and its trials would train on CPUs: on this machine's CPUs",
                 marks=pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, words):
    (tmp_path / "malformed.yaml").write_text("lr: [1, 2\n")
    (tmp_path / "unknown.yaml").write_text("learning_rate: {uniform: [0, 1]}\n")
    existing = tmp_path / "old"   # a search's saved settings, enough for --resume to check its flags
    existing.mkdir()
    (existing / "search.json").write_text(json.dumps({
        "space": {"lr": {"loguniform": [1e-3, 1e-2]}}, "space_name": "old", "name": "old", "root": str(tmp_path),
        "samples": 2, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2}))
    args = [{"MALFORMED": str(tmp_path / "malformed.yaml"), "UNKNOWNKEY": str(tmp_path / "unknown.yaml"),
             "EXISTING": str(existing)}.get(a, a) for a in args]
    root = tmp_path / "res"
    extra = [] if "--resume" in args else ["--results", str(root), "--name", "x"]
    r = run(args + extra, tmp_path)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.stderr
    assert not root.exists()


def test_list_spaces(tmp_path):
    r = run(["--list-spaces"], tmp_path)
    assert r.returncode == 0
    for name in ("smoke", "small", "full"):
        assert f"\n{name}:" in "\n" + r.stdout
    assert "mixup_alpha" in r.stdout and "loguniform" in r.stdout


def test_report_has_real_plots(smoke):
    import numpy as np
    from PIL import Image
    _, exp = smoke
    report = (exp / "report.md").read_text()
    for name in ("learning_curves", "optimization_history", "accuracy_by_parameter", "parallel_coordinates",
                 "parameter_importance"):
        if name == "parameter_importance" and f"(report/{name}.png)" not in report:   # too few completed
            assert "(not drawn: " in report and "an importance is noise" in report
            assert not (exp / "report" / f"{name}.png").exists()
            continue
        assert f"(report/{name}.png)" in report, name
        img = np.asarray(Image.open(exp / "report" / f"{name}.png").convert("L"), dtype=float)
        assert img.shape[0] >= 300 and img.shape[1] >= 500
        assert img.std() > 10 and (img < 128).mean() > 0.002   # lines and text, not a blank canvas
    assert "optuna-dashboard sqlite:///" in report


def overlapping_texts(fig) -> list:
    """Pairs of visible texts of a figure (tick labels, titles, annotations) whose drawn extents overlap."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    undrawn = set()   # labels of ticks outside an axis's view: matplotlib keeps them visible but draws none
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for locs, ticks in ((axis.get_majorticklocs(), axis.get_major_ticks),
                                (axis.get_minorticklocs(), axis.get_minor_ticks)):
                for loc, tick in zip(locs, ticks(len(locs))):
                    if not lo - 1e-9 * abs(hi - lo) <= loc <= hi + 1e-9 * abs(hi - lo):
                        undrawn |= {id(tick.label1), id(tick.label2)}
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent"))
             if t.get_visible() and t.get_text().strip() and t.figure is fig and id(t) not in undrawn]
    boxes = [(t.get_text(), t.get_window_extent(r)) for t in texts]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:]
            if ba.overlaps(bb) and ba.width and bb.width
            and not (ba.x0 >= bb.x0 and ba.x1 <= bb.x1 and ba.y0 >= bb.y0 and ba.y1 <= bb.y1)]


def test_each_plot_shows_every_trial_labels_its_axes_and_no_text_overlaps(smoke):
    import matplotlib.pyplot as plt
    from tune.report import figures, kinds_of
    from tune.trials import Experiment
    _, exp = smoke
    e = Experiment(exp)
    study_ = e.study()
    trials = e.trials(study_)
    figs = figures(trials, kinds_of(e.settings()), study_, "holdout accuracy")
    pruned = {round(t.value("accuracy"), 6) for t in trials if t.status == "pruned"}
    assert pruned, "the smoke search should prune"
    for name, (caption, fig) in figs.items():
        if isinstance(fig, str):
            assert name == "parameter_importance" and "not drawn" in fig
            continue
        assert not overlapping_texts(fig), (name, overlapping_texts(fig)[:3])
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            assert ax.get_xlabel() or ax.get_xticklabels(), name
            assert ax.collections or ax.lines or ax.patches, f"an empty panel in {name}"   # every panel drawn
        if name == "optimization_history":
            ax = fig.axes[0]
            drawn = {round(float(y), 6) for c in ax.collections for _, y in c.get_offsets()}
            assert pruned <= drawn and ax.get_ylabel() == "holdout accuracy"
            assert [t.get_text() for t in ax.get_xticklabels()] == sorted(
                [t.trial_id for t in trials if t.history], key=lambda i: next(
                    t.history[0]["timestamp"] - t.history[0]["time_total_s"] for t in trials if t.trial_id == i))
        if name == "accuracy_by_parameter":
            assert len(fig.axes) == 5 and {ax.get_xlabel() for ax in fig.axes} >= {"lr (log)", "mixup_alpha"}
        plt.close(fig)


def test_report_html_is_one_self_contained_page(smoke):
    _, exp = smoke
    page = (exp / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "<script>" in page and "src=\"http" not in page
    best = json.loads((exp / "best_config.json").read_text())["config"]
    assert html_unescape(page.split("<pre id='config'>")[1].split("</pre>")[0]) == json.dumps(best, indent=2)
    assert page.count("<tr>") == 1 + len(trial_dirs(exp))   # the header and every trial


def html_unescape(s: str) -> str:
    import html
    return html.unescape(s)


def test_export_again_with_best_ever_scope_and_the_config_round_trips_through_final(smoke, tmp_path):
    _, exp = smoke
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "export.py"), str(exp), "--scope", "all"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    best = json.loads((exp / "best_config.json").read_text())
    assert best["provenance"]["scope"] == "all"
    assert best["provenance"]["value"] == max(m["accuracy"] for m in results_of(exp / best["provenance"]["trial"]))
    out = exp / "final"   # its default place: the export's report then lists it
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "final.py"), str(exp / "best_config.json"),
                        "--epochs", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    # chosen on the holdout, trained on all of train/ and tested once on val/, beside what the search saw
    assert m["config"] == {**best["config"], "epochs": 2, "split": "val"} and m["tested_on"] == "val/"
    assert "tests on val/" in r.stdout and "in the search" in r.stdout
    assert {k: m["search"][k] for k in ("experiment", "trial", "metric", "value", "git_commit")} == \
        {k: best["provenance"][k] for k in ("experiment", "trial", "metric", "value", "git_commit")}
    assert m["search"]["chosen_on"]["split"] == "holdout" and "warning" not in r.stdout
    assert f"python tune/export.py {exp}" in r.stdout
    assert m["accuracy_tta"] is not None and len(m["history"]) == 2
    # in TensorBoard beside the trials: the same tags, and a filled row of the HParams table
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from trainables.board import SCALARS
    board = EventAccumulator(str(out))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"accuracy", "valid_loss", "accuracy_tta"} <= tags <= set(SCALARS) | {
        "summary/best_accuracy", "summary/epochs", "summary/train_s"}
    assert [e.step for e in board.Scalars("accuracy")] == [1, 2] and board.Scalars("summary/epochs")[-1].value == 2
    start = HParamsPluginData.FromString(board.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["status"].string_value == "completed"
    assert start.session_start_info.hparams["lr"].number_value == pytest.approx(best["config"]["lr"])
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "export.py"), str(exp), "--metric", "accuracy_tta"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tta = json.loads((exp / "best_config.json").read_text())["provenance"]
    assert tta["metric"] == "accuracy_tta" and tta["value"] == results_of(exp / tta["trial"])[-1]["accuracy_tta"]
    report = (exp / "report.md").read_text()
    assert "## Final runs" in report and f"{100 * m['accuracy']:.2f}% on val/" in report


def test_export_of_an_experiment_where_every_trial_failed_is_a_clear_message(tmp_path):
    space = tmp_path / "broken.yaml"
    space.write_text("search: {samples: 2, max_epochs: 1}\narch: tiny\nsize: 32\nworkers: 0\nprecision: fp16\n"
                     "lr: {loguniform: [1.0e-3, 1.0e-2]}\n")
    r = run(["--space", str(space), "--name", "broken", "--results", str(tmp_path), *FAST, "--gpus-per-trial", "0",
             "--set", "pipeline=fastai"], tmp_path)
    assert r.returncode == 1 and "nothing to export" in r.stderr
    assert {json.loads(p.read_text())["pipeline"] for p in (tmp_path / "broken").glob("*/params.json")} == {"fastai"}
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "export.py"), str(tmp_path / "broken")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: no trial reported 'accuracy' yet (2 of 2 errored)"]
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "export.py"), str(tmp_path / "empty")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no trials" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@contextlib.contextmanager
def ray_cluster(env: dict, workers: int = 2):
    """A cluster started with `ray start`, shaped as a real one: a head of 8 CPUs and no GPU, `workers` of
    8 CPUs and 1 GPU each (logical), with token authentication on. Yields its address, the head's node ids,
    the environment of a driver that has the cluster's token, join(cpus, gpus=0, **env): a worker of that
    shape (and environment) joins, and it returns once the worker is up, and the folder that RAY_TMPDIR
    names to find the cluster."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = str(Path(sys.executable).parent / "ray")
    # short: Ray's socket paths must fit in 107 characters. Ray's own layout under it (<temp>/ray), so that
    # RAY_TMPDIR=<temp> finds this cluster as Ray finds a `ray start` of its default folder
    temp = tempfile.mkdtemp(prefix="rt")
    # token authentication on, as on a real cluster (Ray's guidance: RAY_AUTH_MODE=token on every node); the
    # driver gets only the token, from where Ray looks for it, and must turn the mode on itself
    token = Path(temp) / "auth_token"
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    env = {**{k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}, "RAY_AUTH_TOKEN_PATH": str(token)}
    node_env = {**env, "RAY_AUTH_MODE": "token"}
    small = ["--include-dashboard=false", "--object-store-memory=100000000", "--block"]
    # each in its own process group, stopped by signal: `ray stop` would stop every Ray on this machine
    nodes = [subprocess.Popen([ray, "start", "--head", "--num-cpus=8", "--num-gpus=0", f"--port={port}",
                               f"--temp-dir={temp}/ray", *small], env=node_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert nodes[0].poll() is None, "ray start --head failed"
                time.sleep(0.5)
        probe = ("import ray, sys, time; ray.init(address='127.0.0.1:%d')\n"
                 "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[1]): time.sleep(0.5)\n"
                 "print([n['NodeID'] for n in ray.nodes() if n['Alive'] and not n['Resources'].get('GPU')])" % port)

        def alive(n):  # the head's node ids once n nodes are up (a worker started too early gives up)
            return subprocess.run([sys.executable, "-c", probe, str(n)], env=node_env, capture_output=True, text=True,
                                  timeout=180).stdout.strip()
        head_id = alive(1)

        def join(cpus: int, gpus: int = 0, **own):  # one at a time: two started at once here did not both join
            nodes.append(subprocess.Popen([ray, "start", f"--address=127.0.0.1:{port}", f"--num-cpus={cpus}",
                                           f"--num-gpus={gpus}", *small[1:]], env={**node_env, **own},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            alive(len(nodes))
        for _ in range(workers):
            join(8, 1)
        yield f"127.0.0.1:{port}", set(eval(head_id)), env, join, temp
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
        for node in reversed(nodes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)   # whatever of the group outlived SIGTERM
            node.wait()
        shutil.rmtree(temp, ignore_errors=True)


def join_with_other_data(join, home: Path) -> Path:
    """A GPU worker joins whose own data home (`home`) holds FAST's data less one image; returns the folder
    to delete for that node to generate its own, the same as the others'."""
    from trainables.data import prepare
    copy = home / "datasets" / prepare(FAST[1]).name   # where that node's data home keeps it
    shutil.copytree(prepare(FAST[1]), copy)
    next((copy / "train").glob("*/*")).unlink()
    join(8, 1, IMAGENETTE_TUNE_HOME=str(home))
    return home / "datasets"


def refused_for_other_data(r) -> bool:
    said = [line for line in r.stderr.strip().splitlines() if not line.startswith("warning:")]
    return r.returncode == 2 and len(said) == 1 and said[0].startswith(
        f"error: dataset {FAST[1]} is not the same on every node of the cluster (node ")


def test_search_on_a_running_ray_cluster(tmp_path):
    """--address joins a cluster started with `ray start` (ray_cluster), at first its head alone (8 CPUs, no
    GPU), as an autoscaler's cluster starts. A search of GPU trials (a quarter GPU each) finds no node to hold
    one: its trials wait PENDING, two of them (twice the one place counted for a cluster that holds none yet).
    The width follows the nodes Ray has, not those it had at launch: once a GPU worker (8 CPUs, 1 GPU) joins,
    all 8 trials are live at once (4 running there, the rest PENDING, what an autoscaler scales on) and more
    than 2 train at once. A second GPU worker joins, with a copy of the data that lacks an image: refused in
    one line, and once that node has the same copy, a trial asks what a GPU node holds, not a share of the
    cluster's CPUs, so both trials of the next search run, one on each GPU node; the code ships to the
    workers, the storage is checked, and a driver with the wrong token is refused. Without --address, a
    search that Ray's ray.init() would have joined to this cluster is refused."""
    grow = ["--space", "smoke", "--samples", "8", "--max-epochs", "4", "--scheduler", "none", "--searcher", "random",
            "--cpus-per-trial", "2", "--gpus-per-trial", "0.25", "--name", "grow", "--storage", str(tmp_path / "shared"),
            *FAST]
    args = ["--space", "smoke", "--samples", "2", "--max-epochs", "2", "--grace-period", "1", "--searcher", "random",
            "--name", "cl", "--storage", str(tmp_path / "shared"), *FAST]
    grown = tmp_path / "shared" / "grow"
    from tune.trials import ray_snapshot

    def live() -> int:   # trials PENDING or RUNNING in Ray's newest snapshot (0 while it has none or is mid-write)
        with contextlib.suppress(ValueError, OSError):
            return sum(status in ("PENDING", "RUNNING") for status, _ in ray_snapshot(str(grown)).values())
        return 0

    with ray_cluster(os.environ, workers=0) as (address, head_ids, env, join, temp):
        search = subprocess.Popen(RUN + grow + ["--address", address], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while live() < 2 and search.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        # a few of the limiter's re-reads (every 5 s) and Ray's snapshots (every 2 s) on the head alone
        before = live()
        for _ in range(24):
            time.sleep(0.5)
            before = max(before, live())
        join(8, 1)
        after = 0
        while search.poll() is None:
            after = max(after, live())
            time.sleep(0.5)
        out, err = search.communicate(timeout=600)
        # a second GPU worker whose copy of the data lacks an image: refused in one line
        other = join_with_other_data(join, tmp_path / "other-home")
        args += ["--address", address]
        differs = subprocess.run(RUN + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        shutil.rmtree(other)
        wrong = subprocess.run(RUN + args, cwd=tmp_path, env={**env, "RAY_AUTH_TOKEN": uuid.uuid4().hex * 2},
                               capture_output=True, text=True, timeout=600)
        wrote = [p for p in ("shared/cl", "results/cl") if (tmp_path / p).exists()]
        r = subprocess.run(RUN + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        # without --address, a search where Ray's ray.init() would join this cluster is refused: as in a Ray
        # job (RAY_ADDRESS), or on the machine of a `ray start` (the file it leaves in Ray's temp folder)
        own = [subprocess.run(RUN + ["--space", "smoke", "--name", "own", *FAST], cwd=tmp_path, env={**env, **e},
                              capture_output=True, text=True, timeout=600)
               for e in ({"RAY_ADDRESS": address}, {"RAY_TMPDIR": str(temp)})]
    assert search.returncode == 0, out[-3000:] + err[-3000:]
    assert "no node can hold it (no node has a GPU) yet; its trials wait PENDING" in out
    assert (before, after) == (2, 8), (before, after)   # Ray's own cap on waiting trials would stop at 6
    placed = placements(grown)
    assert len(placed) == 8 and not {node for _, _, node, _, _ in placed.values()} & head_ids
    assert {g for _, g, *_ in placed.values()} == {"0"}
    # a row's timestamp is in whole seconds, so a span may start up to 1 s early: trials of 4 epochs overlap longer
    assert most_at_once([(s + 1, e) for *_, s, e in placed.values()]) > 2
    said = [line for line in wrong.stderr.strip().splitlines() if not line.startswith("warning:")]
    assert wrong.returncode == 2 and len(said) == 1, wrong.stderr[-3000:]   # Ray's own retries do not show
    assert "token authentication and refused this driver's token" in wrong.stderr and "RAY_AUTH_TOKEN" in wrong.stderr
    assert not wrote
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "8 CPU / 1 GPU per trial" in r.stdout
    exp, home = tmp_path / "shared" / "cl", tmp_path / "results" / "cl"
    assert len(trial_dirs(exp)) == 2 and not trial_dirs(home)
    # the study lives on the driver's disk (SQLite's locks fail on NFS), mirrored to the storage with the export
    for f in ("optuna.db", "best_config.json", "search.json"):
        assert (home / f).is_file() and (exp / f).is_file(), f
    assert len(study(exp).trials) == len(study(home).trials) == 2
    placed = placements(exp)
    nodes_used = {node for _, _, node, _, _ in placed.values()}
    assert len(nodes_used) == 2 and not nodes_used & head_ids   # one trial on each GPU worker
    assert {g for _, g, *_ in placed.values()} == {"0"}
    assert not list((tmp_path / "shared").glob(".shared-check-*"))   # the storage probe cleans up
    assert refused_for_other_data(differs), differs.stderr[-3000:]
    port = re.escape(address.split(":")[1])   # `ray start` records the node's own IP, not the one given
    for o, words in zip(own, (rf"RAY_ADDRESS is set \(\S+:{port}\), as in a Ray job",
                              rf"a Ray cluster started with `ray start` runs on this machine \(\S+:{port}\)")):
        lines = o.stderr.strip().splitlines()
        assert o.returncode == 2 and len(lines) == 1, o.stderr[-3000:]
        assert re.match(rf"error: {words}: .*give --address \S+:{port} and --storage", lines[0]), lines[0]
    assert not (tmp_path / "results" / "own").exists()


def placements(exp: Path) -> dict:
    """{trial: (device, gpu_ids, node_id, start, end)} from what each trial reported."""
    out = {}
    for d in trial_dirs(exp):
        rows = results_of(d)
        out[d.name] = (rows[0]["device"], rows[0]["gpu_ids"], rows[0]["node_id"],
                       rows[0]["timestamp"] - rows[0]["time_total_s"], rows[-1]["timestamp"])
    return out


def most_at_once(spans) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    n = best = 0
    for _, step in events:
        n += step
        best = max(best, n)
    return best


def test_logical_gpus_pack_trials_and_each_trial_trains_where_ray_put_it(tmp_path):
    """A local Ray given 4 logical GPUs and 8 CPUs (Ray's RAY_OVERRIDE_RESOURCES): at 0.5 GPU per trial, 8
    trials run at once, each told its GPU id, and each in a process of its own (one that ASHA stopped does
    not wait, holding its learner, for the next trial); at 0 GPU per trial no trial gets one. This machine
    has no CUDA, so every trial trains on the CPU either way: the device follows Ray's ids and torch's CUDA."""
    env = {**os.environ, "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": 8, "GPU": 4})}
    common = ["--max-epochs", "2", "--grace-period", "1", "--searcher", "random", "--results", str(tmp_path), *FAST]
    r = subprocess.run(RUN + common + ["--space", "smoke", "--samples", "12", "--name", "half", "--gpus-per-trial",
                                       "0.5"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 CPU / 0.5 GPU per trial" in r.stdout
    placed = placements(tmp_path / "half")
    assert len(placed) == 12 and most_at_once([(s, e) for *_, s, e in placed.values()]) == 8
    ids = {g for _, g, *_ in placed.values()}
    assert ids <= {"0", "1", "2", "3"} and all(
        most_at_once([(s, e) for _, g, _, s, e in placed.values() if g == gid]) <= 2 for gid in ids)
    assert {dev for dev, *_ in placed.values()} == {"cuda" if HAS_GPU else "cpu"}
    first = [results_of(d)[0] for d in trial_dirs(tmp_path / "half")]
    assert len({row["pid"] for row in first}) == 12
    assert {row["cache_on"] for row in first} == {"cuda" if HAS_GPU else "cpu"}   # the tensor path's cache
    # as on a cluster from `ray up`, which sets OMP_NUM_THREADS=1 for Ray's processes: a trial's torch threads
    # and loader processes follow the 2 CPUs Ray gave it all the same; without GPUs, processes are reused
    r = subprocess.run(RUN + common + ["--space", "smoke", "--samples", "6", "--name", "none", "--gpus-per-trial", "0",
                                       "--cpus-per-trial", "2", "--set", "pipeline=fastai"], cwd=tmp_path,
                       env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert {(dev, g) for dev, g, *_ in placements(tmp_path / "none").values()} == {("cpu", "")}
    rows = [results_of(d)[0] for d in trial_dirs(tmp_path / "none")]
    assert len(rows) == 6 and {(row["threads"], row["loader_workers"]) for row in rows} == {(2, 2)}
    assert len({row["pid"] for row in rows}) < 6 and not any("cache_on" in row for row in rows)


def test_bf16_on_gpus_that_only_emulate_it_is_refused_before_a_trial_starts(tmp_path):
    """Ray names a node's GPU (accelerator_type:T4 on a T4 machine, here given as a logical resource): an
    explicit bf16 there would fail in every trial, so the search stops at launch, in one line."""
    env = {**os.environ, "RAY_OVERRIDE_RESOURCES": json.dumps({"CPU": 2, "GPU": 1, "accelerator_type:T4": 1})}
    r = subprocess.run(RUN + ["--space", "smoke", "--set", "precision=bf16", "--gpus-per-trial", "1", "--name", "t4",
                              "--results", str(tmp_path), *FAST], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: precision=bf16: T4 GPUs have no native bfloat16 (only emulated, slower than fp32), and trials given "
        "it there fail; use precision=auto (fp16 with gradient scaling there) or fp16"]
    assert not (tmp_path / "t4").exists()


def test_a_time_budget_stops_starting_trials_and_lets_running_ones_finish_their_epoch(tmp_path):
    r = run(["--space", "smoke", "--samples", "8", "--max-epochs", "4", "--grace-period", "2", "--name", "tb",
             "--results", str(tmp_path), "--time-budget", "4s", *FAST], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    exp = tmp_path / "tb"
    assert "time budget 4s (4s left)" in r.stdout
    # the budget runs out while the first two trials train (a slot frees only after ASHA's grace period): each
    # stops at the first epoch it ends after the budget, and no other trial starts
    trials = study(exp).trials
    assert len(trials) == 2 and len(trial_dirs(exp)) == 2
    assert "time budget 4s spent: 2 running trial(s) stopped once their epoch ended, 6 of 8 trials never started" \
        in r.stdout
    spent = json.loads((exp / "budget.json").read_text())
    assert spent["limit_s"] == 4 and spent["last_seen"] - spent["started"] >= 4
    deadline = spent["started"] + 4
    by_id = {t.user_attrs["ray_trial_id"]: t for t in trials}
    for d in trial_dirs(exp):
        rows, t = results_of(d), by_id[d.name]
        assert t.state.name == "PRUNED" and t.user_attrs["stopped_by"] == "time budget"
        assert list(t.intermediate_values) == list(range(1, len(rows) + 1)) and len(rows) < 4   # each epoch kept
        assert rows[-1]["timestamp"] >= int(deadline) and all(r["timestamp"] <= deadline + 1 for r in rows[:-1])
    assert json.loads((exp / "best_config.json").read_text())["provenance"]["epochs_trained"] >= 1

    # extending a search whose budget is spent: refused in one line, unless the added trials get time of their own
    r = run(["--resume", str(exp), "--samples", "9"], tmp_path)
    assert r.returncode == 2 and "time budget (4s) is spent" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    before = spent["spent_before_s"] + spent["last_seen"] - spent["started"]
    with open(tmp_path / "out.txt", "w+") as out, open(tmp_path / "err.txt", "w+") as err:   # not pipes: unread
        p = subprocess.Popen(RUN + ["--resume", str(exp), "--samples", "9", "--time-budget", "4s"], cwd=tmp_path,
                             stdout=out, stderr=err, text=True)
        # the budget's record as the resumed run writes it: whole at every read, and never back in time (Ray
        # brings the folder's .json files down on a resume and copies them back over it, in place, at snapshots)
        seen, deadline = [], time.time() + 600
        while p.poll() is None and time.time() < deadline:
            seen.append(json.loads((exp / "budget.json").read_text())["last_seen"])
            time.sleep(0.01)
        p.kill()   # if the deadline passed; else it has exited
        p.wait()
    out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert p.returncode == 0, out[-3000:] + err[-3000:]
    assert seen == sorted(seen) and seen[-1] > seen[0]
    assert "extending" in out and len(trial_dirs(exp)) > 2
    assert json.loads((exp / "budget.json").read_text())["limit_s"] == pytest.approx(before + 4)
    assert json.loads((exp / "search.json").read_text())["samples"] == 9


@pytest.mark.parametrize("budget", ["2 hours", "0", "-5m", "1x"])
def test_a_time_budget_that_is_not_a_duration_is_one_line(tmp_path, budget):
    r = run(["--space", "smoke", "--time-budget", budget, "--results", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--time-budget" in r.stderr
    assert not any(tmp_path.iterdir())


def folder_digest(path: Path) -> dict:
    """Every file's hash; not SQLite's side files, which any reader of the study opens (this test's too)."""
    import hashlib
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.endswith(("-shm", "-wal"))}


def test_warm_start_adds_a_past_search_to_the_study_and_extending_it_adds_trials(smoke, tmp_path):
    _, source = smoke
    before = folder_digest(source)
    old = {t.user_attrs["ray_trial_id"]: t for t in study(source).trials}
    r = run(["--space", "smoke", "--samples", "3", "--max-epochs", str(SMOKE_EPOCHS), "--name", "warm",   # its task
             "--results", str(tmp_path), "--warm-start", str(source), "--data", SMOKE_DATA], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert folder_digest(source) == before   # the past search is only read
    done = sum(t.state.name == "COMPLETE" for t in old.values())
    assert f"warm start from smoke: 8 trials into the study ({done} completed, {8 - done} pruned)" in r.stdout
    exp = tmp_path / "warm"
    trials = study(exp).trials
    warm = [t for t in trials if "warm_start" in t.user_attrs]
    assert len(warm) == 8 and len(trials) == 11
    for t in warm:   # as they ended there, with their curves
        o = old[t.user_attrs["source_trial"]]
        assert t.state == o.state and t.intermediate_values == o.intermediate_values and t.params == o.params
    def rank(t):   # the best first: furthest, then most accurate there
        step = max(t.intermediate_values)
        return -step, -t.intermediate_values[step]
    best_two = [t.user_attrs["ray_trial_id"] for t in sorted(old.values(), key=rank)][:2]
    new = [t for t in trials if "warm_start" not in t.user_attrs]
    assert [t.user_attrs.get("source_trial") for t in new[:2]] == best_two   # the source's best two run first
    assert [t.params for t in new[:2]] == [old[i].params for i in best_two]
    assert f"its best 2 config(s) run first: {', '.join(best_two)}" in r.stdout
    assert [t.user_attrs["guided"] for t in new] == [False, False, True]   # then TPE, from the first
    best = json.loads((exp / "best_config.json").read_text())
    assert best["provenance"]["warm_start"] == ["smoke"] and best["provenance"]["trial"] not in old
    assert "started with the trials of smoke" in (exp / "report.md").read_text()

    # extending the finished search: more trials, the same study; nothing else may change
    r = run(["--resume", str(exp), "--samples", "5"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "extending" in r.stdout and len(trial_dirs(exp)) == 5 and len(study(exp).trials) == 13
    assert json.loads((exp / "search.json").read_text())["samples"] == 5
    r = run(["--resume", str(exp), "--samples", "5"], tmp_path)   # as a retry of an extension that failed would
    assert r.returncode == 0 and "extending" not in r.stdout and len(trial_dirs(exp)) == 5, r.stderr[-3000:]
    for args, words in ((["--samples", "4"], "can only add trials"), (["--max-epochs", "9"], "cannot change"),
                        (["--samples", "6", "--time-budget", "1m"], "ran without a time budget")):
        r = run(["--resume", str(exp), *args], tmp_path)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_past_searches_are_named_by_their_folder_unless_two_share_one():
    from tune.warm import source_names
    assert source_names(["/r/a/old", "/r/b/old", "/r/new", "s3://bucket/x/new"]) == {
        "/r/a/old": "/r/a/old", "/r/b/old": "/r/b/old", "/r/new": "new", "s3://bucket/x/new": "s3://bucket/x/new"}
    assert source_names(["/r/old", "/r/old"]) == {"/r/old": "old"}   # one search given twice


def test_warm_start_says_what_it_does_with_each_mismatch(smoke, tmp_path):
    _, source = smoke
    space = tmp_path / "narrow.yaml"   # a narrower lr, wd searched (fixed there), other searched keys fixed
    space.write_text("search: {samples: 2, max_epochs: 3, grace_period: 3}\narch: tiny\nsize: 64\nbs: 32\n"
                     "pipeline: tensor\nlr: {loguniform: [3.0e-3, 2.0e-2]}\nwd: {loguniform: [1.0e-3, 1.0e-1]}\n")
    r = run(["--space", str(space), "--name", "mis", "--results", str(tmp_path), "--warm-start", str(source),
             "--warm-start", str(source), *FAST], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"--warm-start {source} is the search {source} names too: its trials enter once" in r.stdout
    lrs = {t.user_attrs["ray_trial_id"]: t.params["lr"] for t in study(source).trials}
    inside = {k for k, v in lrs.items() if 3e-3 <= v <= 2e-2}
    assert f"warm start from smoke: {len(inside)} trials into the study (0 completed, {len(inside)} pruned)" in r.stdout
    if len(inside) < 8:
        assert f"{8 - len(inside)} trial(s) left out, with values outside this space" in r.stdout
    assert f"its trials ran up to {SMOKE_EPOCHS} epochs, this search's up to 3" in r.stdout
    assert "it searched label_smoothing, mixup_alpha, resize_frac, resize_start, which this space fixes" in r.stdout
    assert "wd fixed there, searched here" in r.stdout
    task = next(line for line in r.stdout.splitlines() if "ran another task" in line)
    assert "enter as pruned, below every completed trial of this search" in task
    assert f"data ('{FAST[1]}' here) differs in {len(inside)}," in task
    assert f"mixup_alpha (0.0 here) differs in {len(inside)}" in task
    warm = [t for t in study(tmp_path / "mis").trials if "warm_start" in t.user_attrs]
    assert sorted(t.user_attrs["source_trial"] for t in warm) == sorted(inside)   # each once, though given twice
    assert all(max(t.intermediate_values) <= 3 for t in warm)
    r = run(["--space", "smoke", "--name", "no", "--results", str(tmp_path), "--warm-start", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and "not a search" in r.stderr and not (tmp_path / "no").exists()
    r = run(["--space", "smoke", "--name", "no", "--results", str(tmp_path), "--warm-start", "nosuch://bucket/x"],
            tmp_path)
    assert r.returncode == 2 and "cannot be read" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for text, words in (("{not json", "cannot be read"), ("[1, 2]", "not one tune/run.py wrote"),
                        ('{"name": "x"}', "not one tune/run.py wrote (no space, max_epochs)")):
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / "search.json").write_text(text)
        r = run(["--space", "smoke", "--name", "no", "--results", str(tmp_path), "--warm-start", str(tmp_path / "bad")],
                tmp_path)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "no").exists()


def test_a_tpe_search_too_few_for_its_width_says_so():
    from tune.search import width_note
    note = width_note("tpe", 16, 16)
    assert "the first 12 of its 12 guided" in note and "--samples 64" in note
    assert "the first 8 of its 23 guided" in width_note("tpe", 30, 8)
    assert width_note("tpe", 64, 16) is None and width_note("tpe", 16, 2) is None   # 4x its width, or more
    assert width_note("random", 16, 16) is None and width_note("tpe", 3, 16) is None   # none guided to lose


def test_the_launch_note_counts_the_width_a_search_starts_with_and_none_for_a_warm_start():
    from tune.search import Settings, launch_note
    from tune.warm import Warm
    s = Settings(space={}, space_name="small", name="x", root="/r", samples=16, max_epochs=8, grace_period=4,
                 reduction_factor=2, address="auto")
    res, nodes = {"cpu": 2, "gpu": 0.25}, [{"CPU": 8.0, "GPU": 0.0}, {"CPU": 16.0, "GPU": 2.0}]
    # a cluster without --concurrent: WideningLimiter's twice the 8 slots, not the 8
    assert "up to 16 at once" in launch_note(s, res, shape=nodes)
    s.concurrent = 6
    assert "up to 6 at once" in launch_note(s, res, shape=nodes)
    assert launch_note(s, res, Warm(trials=["a past trial"]), shape=nodes) is None
    assert "up to 6 at once" in launch_note(s, res, Warm(first=[({}, {})]), shape=nodes)   # configs, no trials
    s.concurrent, s.address = None, None
    assert "up to 8 at once" in launch_note(s, res, shape=nodes)
