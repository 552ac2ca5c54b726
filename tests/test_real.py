"""A short training on real Imagenette photos (a subset, greyscale ones included), where they are at hand."""
import os

from PIL import Image

from conftest import REAL_DATA, needs_real
from trainables.config import TrainConfig
from trainables.train import train


def real_subset(dst, n_train=80, n_val=20):
    """Links to the first images of each class, plus ten greyscale training photos of French horns."""
    for split, n in (("train", n_train), ("val", n_val)):
        for wnid in sorted(os.listdir(REAL_DATA / split)):
            (dst / split / wnid).mkdir(parents=True)
            names = sorted(os.listdir(REAL_DATA / split / wnid))
            chosen = names[:n]
            if split == "train" and wnid == "n03394916":
                chosen += [f for f in names[n:] if Image.open(REAL_DATA / split / wnid / f).mode == "L"][:10]
            for f in chosen:
                os.symlink(REAL_DATA / split / wnid / f, dst / split / wnid / f)
    return dst


@needs_real
def test_short_training_on_real_photos_learns(tmp_path):
    root = real_subset(tmp_path / "real")
    greys = [p for p in (root / "train" / "n03394916").iterdir() if Image.open(p).mode == "L"]
    assert greys, "the subset must include greyscale photos"
    res = train(TrainConfig(data=str(root), arch="tiny", size=64, epochs=5, bs=32, lr=1e-2, seed=1, tta=False))
    xb, _ = res.learn.dls.train.one_batch()
    assert xb.shape[1:] == (3, 64, 64)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.accuracy > 0.2   # chance is 0.1; this setting measured 0.42-0.44 over two seeds
