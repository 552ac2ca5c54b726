import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import REAL_DATA, ROOT, TINY_DATA, needs_real
from trainables.data import DataError, index, prepare
from trainables.synthetic import WNIDS, SyntheticSpec, render


def test_synthetic_has_the_imagenette_layout():
    root = prepare(TINY_DATA)
    spec = SyntheticSpec.parse(TINY_DATA)
    for split, n in (("train", spec.train), ("val", spec.val)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(WNIDS)
        for w in WNIDS:
            files = list((root / split / w).glob("*.JPEG"))
            assert len(files) == n
    rows = list(csv.reader(open(root / "noisy_imagenette.csv")))
    assert rows[0] == ["path", "noisy_labels_0", "noisy_labels_1", "noisy_labels_5", "noisy_labels_25",
                       "noisy_labels_50", "is_valid"]
    assert len(rows) - 1 == 10 * (spec.train + spec.val)
    for r in rows[1:]:
        assert (root / r[0]).is_file() and r[1] == r[0].split("/")[1]
        if r[6] == "True":
            assert set(r[1:6]) == {r[1]}   # validation labels are never noisy, as in the real file


def test_synthetic_images_vary_in_aspect_and_keep_the_short_side():
    spec = SyntheticSpec(px=160)
    sizes = {render(spec, "train", c, i).size for c in range(10) for i in range(3)}
    assert all(min(s) == 160 for s in sizes)
    ratios = {round(max(s) / min(s), 2) for s in sizes}
    assert len(ratios) > 5 and max(ratios) > 1.2
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)


def test_synthetic_is_deterministic_and_seed_dependent():
    a = render(SyntheticSpec(seed=1), "val", 3, 5).tobytes()
    assert a == render(SyntheticSpec(seed=1), "val", 3, 5).tobytes()
    assert a != render(SyntheticSpec(seed=2), "val", 3, 5).tobytes()


def test_synthetic_spec_parsing():
    assert SyntheticSpec.parse("synthetic") == SyntheticSpec()
    assert SyntheticSpec.parse("synthetic:train=5,px=96") == SyntheticSpec(train=5, px=96)
    for bad in ("synthetic:train=x", "synthetic:foo=1", "synthetic:px=8"):
        with pytest.raises(DataError):
            prepare(bad)


RACE = """
import sys
sys.path.insert(0, {root!r})
from trainables.data import prepare
print("PATH", prepare({name!r}))
"""


def test_concurrent_preparation_generates_once(tmp_path):
    name = "synthetic:train=12,val=4,px=64,seed=99"
    env = {**os.environ, "IMAGENETTE_TUNE_HOME": str(tmp_path)}
    # a crashed earlier attempt leaves a partial folder behind; it must never be used
    stale = tmp_path / "datasets" / ".synthetic-t12-v4-px64-s99.partial-dead"
    (stale / "train").mkdir(parents=True)
    code = RACE.format(root=str(ROOT), name=name)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    paths = {line.split(" ", 1)[1] for o in outs for line in o.splitlines() if line.startswith("PATH")}
    assert len(paths) == 1
    assert sum(o.count("generating") for o in outs) == 1
    root = Path(paths.pop())
    assert len(list(root.glob("*/*/*.JPEG"))) == 10 * 16
    assert (root / "noisy_imagenette.csv").is_file()


CACHE_RACE = """
import sys
sys.path.insert(0, {root!r})
from trainables.data import index, prepare, tensor_cache
arr = tensor_cache(index(prepare({name!r})), 32)   # trains at 32 px: 40 px cached
print("SHAPE", arr.shape, int(arr[-1].sum()))
"""


def test_concurrent_trials_build_the_tensor_cache_once(tmp_path):
    name = "synthetic:train=6,val=2,px=64,seed=5"
    env = {**os.environ, "IMAGENETTE_TUNE_HOME": str(tmp_path)}
    code = CACHE_RACE.format(root=str(ROOT), name=name)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(o.count("decoding") for o in outs) == 1
    shapes = {line for o in outs for line in o.splitlines() if line.startswith("SHAPE")}
    assert len(shapes) == 1 and "(80, 40, 40, 3)" in shapes.pop()
    assert not list((tmp_path / "tensors").glob(".*partial"))


def test_missing_and_malformed_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        prepare(str(tmp_path / "nope"))
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no val"):
        prepare(str(tmp_path))


def test_offline_real_name_says_how_to_pass_a_path(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTAI_HOME", str(tmp_path / "fastai"))   # an empty cache: fastai must download
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")        # and cannot, even where a network exists
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with pytest.raises(DataError, match="--data PATH"):
        prepare("imagenette-160")


def test_corrupt_images_are_skipped_and_named(tmp_path, capsys):
    src = prepare(TINY_DATA)
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    victims = sorted(root.glob("train/*/*.JPEG"))[:2]
    victims[0].write_bytes(b"not a jpeg at all")
    data = victims[1].read_bytes()
    victims[1].write_bytes(data[: len(data) // 3])                  # truncated mid-scan
    idx = index(root)
    assert sorted(idx.skipped) == sorted(str(v.relative_to(root)) for v in victims)
    assert len(idx.files) == 10 * 12 - 2
    out = capsys.readouterr().out
    assert "skipping 2 unreadable image(s)" in out and victims[0].name in out


@needs_real
def test_real_photos_index_and_load_including_greyscale():
    from fastai.vision.core import PILImage
    idx = index(REAL_DATA)
    assert len(idx.files) == 13394 and not idx.skipped
    assert idx.is_valid.count(True) == 3925 and len(idx.classes) == 10
    grey = next(f for f in idx.files if Image.open(REAL_DATA / f).mode == "L")
    img = PILImage.create(REAL_DATA / grey)
    assert img.mode == "RGB"


def test_small_copy_resizes_keeps_the_layout_and_leaves_out_unreadable_images(tmp_path):
    root = tmp_path / "src"
    shutil.copytree(prepare(TINY_DATA), root)
    bad = sorted(root.glob("val/*/*.JPEG"))[0]
    bad.write_bytes(b"not a jpeg at all")
    copy = [sys.executable, str(ROOT / "tune" / "small_copy.py"), str(root), str(tmp_path / "small"),
            "--size", "40", "--workers", "1"]
    r = subprocess.run(copy, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    small = tmp_path / "small"
    kept = sorted(p.relative_to(root) for p in root.rglob("*.JPEG") if p != bad)
    assert sorted(p.relative_to(small) for p in small.rglob("*.JPEG")) == kept
    for f in kept:
        (w, h), (w0, h0) = Image.open(small / f).size, Image.open(root / f).size
        assert min(w, h) == 40 and abs(w / h - w0 / h0) < 0.05       # shorter side 40 (all were larger), shape kept
    assert {Image.open(small / f).mode for f in kept} == {"RGB"}
    assert (small / "noisy_imagenette.csv").read_bytes() == (root / "noisy_imagenette.csv").read_bytes()
    assert "1 unreadable left out" in r.stdout and not list(tmp_path.glob(".small.partial-*"))
    assert len(index(small).files) == len(kept)
    again = subprocess.run(copy, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
