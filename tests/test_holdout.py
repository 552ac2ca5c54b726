"""The selection split: a stratified, seeded holdout of train/, and a search that never reads val/."""
import json
import subprocess
import sys
from collections import Counter

import pytest

from conftest import ROOT
from trainables.config import TrainConfig
from trainables.data import DataError, folders_for, index, prepare
from trainables.learner import split_indices

DATA = "synthetic:train=20,val=10,px=64,seed=11"


def test_the_holdout_is_stratified_seeded_and_only_train():
    idx = index(prepare(DATA), folders_for("holdout"))
    assert idx.files and all(f.startswith("train/") for f in idx.files)   # val/ is not even listed
    cfg = TrainConfig(data=DATA, split="holdout", holdout_frac=0.2)
    train, held = split_indices(cfg, idx)
    assert sorted(train + held) == list(range(len(idx.files))) and not set(train) & set(held)
    assert Counter(idx.labels[i] for i in held) == {c: 4 for c in idx.classes}        # 20% of 20, per class
    # the training seed does not move it; its own seed does, and the same seed draws it again
    assert split_indices(cfg.replace(seed=1), idx) == (train, held)
    assert split_indices(cfg.replace(holdout_seed=0), index(prepare(DATA), ("train",))) == (train, held)
    other = split_indices(cfg.replace(holdout_seed=1), idx)[1]
    assert other != held and Counter(idx.labels[i] for i in other) == {c: 4 for c in idx.classes}
    assert len(split_indices(cfg.replace(holdout_frac=0.1), idx)[1]) == 10 * 2


def test_a_class_too_small_for_the_holdout_is_one_clear_line():
    idx = index(prepare("synthetic:train=2,val=2,px=32,seed=1"), ("train",))
    with pytest.raises(DataError, match="none to validate on"):
        split_indices(TrainConfig(split="holdout", holdout_frac=0.2), idx)


# A trial in its own process, with Python's audit hook on every file it or its forked decoders open (they
# inherit the hook and the log's descriptor; os.write raises no audit event of its own)
AUDITED = """
import json, os, sys
log = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
sys.addaudithook(lambda event, args: os.write(log, (os.fsdecode(args[0]) + "\\n").encode()) if event == "open"
                 and args and isinstance(args[0], (str, bytes, os.PathLike)) else None)
from trainables.config import TrainConfig
from trainables.data import prepare
from trainables.train import train
cfg = TrainConfig(**json.loads(sys.argv[1]))
print(json.dumps({"root": str(prepare(cfg.data)), "accuracy": train(cfg).accuracy}))
"""


@pytest.mark.parametrize("pipeline", ["fastai", "tensor"])
def test_a_trial_on_the_holdout_opens_no_file_of_val(tmp_path, pipeline):
    data = f"synthetic:train=8,val=4,px=64,seed={21 if pipeline == 'fastai' else 22}"  # fresh: indexed here
    cfg = {"data": data, "arch": "tiny", "size": 32, "epochs": 1, "bs": 16, "workers": 0, "tta": True,
           "pipeline": pipeline}

    def audited(split):
        log = tmp_path / f"{split}.log"
        r = subprocess.run([sys.executable, "-c", AUDITED, json.dumps({**cfg, "split": split}), str(log)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        opened = log.read_text().splitlines()
        return {"accuracy": out["accuracy"], "val": [p for p in opened if p.startswith(out["root"] + "/val")],
                "train": sum(p.startswith(out["root"] + "/train") for p in opened)}

    held = audited("holdout")
    assert held["val"] == [] and held["train"] > 0 and held["accuracy"] is not None
    # the same check sees val/ when a run does read it, so the empty list above is not for want of looking
    assert audited("val")["val"]
