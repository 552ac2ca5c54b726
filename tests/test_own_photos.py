"""A user's own photos: a folder of class folders (no train/ or val/), with the odd files real folders hold."""
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT
from trainables.config import TrainConfig
from trainables.data import DataError, class_images, describe_folder, folders_for, index, prepare, held_for_test
from trainables.learner import split_indices
from trainables.train import train

SOURCE = "synthetic:train=12,val=4,px=64,seed=31"   # 16 images a class, as the generator draws them


def photos(dst: Path, classes: int = 3) -> Path:
    """Class folders made from generated images: names with spaces, .jpg/.png/.JPEG mixed, and in the first
    class a greyscale, an RGBA, a CMYK image and a file that is no image at all."""
    src = prepare(SOURCE)
    folders = sorted((src / "train").iterdir())[:classes]
    for c, folder in enumerate(folders):
        out = dst / f"my class {c}"
        out.mkdir(parents=True)
        for i, f in enumerate(sorted(folder.iterdir()) + sorted((src / "val" / folder.name).iterdir())):
            im = Image.open(f).convert("RGB")
            if c == 0 and i < 3:
                im, ext = [(im.convert("L"), ".png"), (im.convert("RGBA"), ".png"), (im.convert("CMYK"), ".jpg")][i]
            else:
                ext = [".jpg", ".png", ".JPEG"][i % 3]
            im.save(out / f"photo {i}{ext}")
        if c == 0:
            (out / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (dst / "notes.txt").write_text("not a class")
    return dst


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return photos(tmp_path_factory.mktemp("photos") / "my photos")


def test_a_folder_of_class_folders_is_found_counted_and_split_by_class(folder):
    line = describe_folder(str(folder))
    assert "49 images in 3 classes" in line and "(9 images) is its test split" in line  # 17 + 16 + 16; 3 + 3 + 3
    test = held_for_test(class_images(folder))
    assert Counter(Path(f).parent.name for f in test) == {"my class 0": 3, "my class 1": 3, "my class 2": 3}
    assert held_for_test(class_images(folder)) == test                      # seeded: drawn again the same
    full = index(prepare(str(folder)), folders_for("val"))
    assert full.skipped == ["my class 0/broken.jpg"]                     # named, not trained on
    assert full.classes == ["my class 0", "my class 1", "my class 2"]
    assert {f for f, v in zip(full.files, full.is_valid) if v} == test
    train_only = index(prepare(str(folder)), folders_for("holdout"))    # the search never lists the test split
    assert not set(train_only.files) & test and len(train_only.files) == 48 - 9
    train_i, held = split_indices(TrainConfig(data=str(folder), split="holdout"), train_only)
    assert Counter(train_only.labels[i] for i in held) == {c: 3 for c in full.classes}  # 20% of 13, rounded


@pytest.mark.parametrize("pipeline", ["fastai", "tensor"])
def test_greyscale_rgba_and_cmyk_images_train_on_both_data_paths(folder, pipeline):
    cfg = TrainConfig(data=str(folder), arch="tiny", size=32, epochs=1, bs=8, workers=0, tta=False,
                      pipeline=pipeline, split="holdout")
    res = train(cfg)
    assert 0 <= res.accuracy <= 1 and len(res.learn.dls.vocab) == 3
    assert len(res.learn.dls.valid.dataset) == 9                          # the holdout: 3 a class


@pytest.mark.parametrize("make, words", [
    (lambda d: None, "no images found"),
    (lambda d: (d / "only").mkdir() or photos(d / "tmp", 1) and shutil.move(d / "tmp" / "my class 0", d / "cats"),
     "has no images"),
    (lambda d: photos(d, 1), "one class folder"),
    (lambda d: photos(d, 2) and [f.unlink() for f in sorted((d / "my class 1").iterdir())[3:]], "has 3 image(s)"),
    (lambda d: (d / "train").mkdir(), "no val/"),
])
def test_what_cannot_be_trained_on_is_one_line(tmp_path, make, words):
    d = tmp_path / "data"
    d.mkdir()
    make(d)
    with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)")):
        prepare(str(d))


def test_a_search_and_a_final_run_on_own_photos(folder, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "run.py"), "--space", "smoke", "--data", str(folder),
                        "--samples", "2", "--max-epochs", "1", "--grace-period", "1", "--name", "mine", "--results", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "49 images in 3 classes" in r.stdout
    best = json.loads((tmp_path / "mine" / "best_config.json").read_text())
    assert best["config"]["data"] == str(folder) and best["provenance"]["chosen_on"]["split"] == "holdout"
    r = subprocess.run([sys.executable, str(ROOT / "tune" / "final.py"), str(tmp_path / "mine" / "best_config.json"),
                        "--epochs", "1", "--out", str(tmp_path / "final")], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert metrics["config"]["split"] == "val" and metrics["tested_on"].startswith("its test split")
