"""Dataset preparation: names to ready folders (download, generation, checks), safe under concurrency.

Trials ask for a dataset by name and get a path that is complete: every preparation step runs under a
per-dataset file lock and publishes its result with an atomic rename, so several processes starting at
the same moment prepare it once and never see a half-written folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .files import atomic_dir, atomic_file, write_json
from .synthetic import SpecError, SyntheticSpec, generate

REAL = {  # our names -> fastai URLs attribute
    "imagenette": "IMAGENETTE", "imagenette-160": "IMAGENETTE_160", "imagenette-320": "IMAGENETTE_320",
    "imagewoof": "IMAGEWOOF", "imagewoof-160": "IMAGEWOOF_160", "imagewoof-320": "IMAGEWOOF_320",
}
IMAGE_EXTS = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}
# Imagenette's and Imagewoof's wnids -> the names a prediction should say; other folders keep their names
CLASS_NAMES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck",
    "n03425413": "gas pump", "n03445777": "golf ball", "n03888257": "parachute",
    "n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback", "n02088364": "beagle",
    "n02089973": "English foxhound", "n02093754": "Border terrier", "n02096294": "Australian terrier",
    "n02099601": "golden retriever", "n02105641": "Old English sheepdog", "n02111889": "Samoyed",
    "n02115641": "dingo",
}
INDEX_VERSION = 1
TEST_FRAC = 0.2     # of each class of a folder of class folders: its test split, as val/ is
MIN_PER_CLASS = 4   # images a class needs for that split and a 20% holdout of the rest


class DataError(RuntimeError):
    """A dataset cannot be used; the message is one line that says what to do."""


def data_home() -> Path:
    """Where generated datasets, indexes and caches live (IMAGENETTE_TUNE_HOME moves it)."""
    return Path(os.environ.get("IMAGENETTE_TUNE_HOME", Path.home() / ".cache" / "imagenette-tune")).expanduser()


def _lock(key: str) -> FileLock:
    locks = data_home() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"{key}.lock"))


def class_name(path) -> str:
    """The label of an image file: its folder's class name (a fastai get_y, picklable with the learner)."""
    folder = Path(path).parent.name
    return CLASS_NAMES.get(folder, folder)


def is_name(data: str) -> bool:
    return data in REAL or data.split(":")[0] == "synthetic"


def check(data: str) -> None:
    """What can be told of a dataset without preparing it: a generator spec that parses, a folder that exists."""
    if data.split(":")[0] == "synthetic":
        try:
            SyntheticSpec.parse(data)
        except SpecError as e:
            raise DataError(str(e)) from None
    elif data not in REAL:
        path = Path(data).expanduser().resolve()
        if not path.is_dir():
            raise DataError(f"data folder not found: {path} (give --data a folder of class folders, one in the "
                            f"Imagenette layout, or one of: synthetic, {', '.join(REAL)})")
        check_layout(path)


def prepare(data: str) -> Path:
    """Return the absolute path of a complete dataset in the Imagenette layout, preparing it if needed."""
    check(data)
    if data.split(":")[0] == "synthetic":
        spec = SyntheticSpec.parse(data)
        final = data_home() / "datasets" / spec.dirname
        if not final.is_dir():
            with _lock(spec.dirname):
                if not final.is_dir():
                    print(f"generating {data} into {final} ...", flush=True)
                    atomic_dir(final, lambda tmp: generate(spec, tmp))
        path = final
    elif data in REAL:
        path = _fetch_real(data)
    else:
        path = Path(data).expanduser().resolve()
    check_layout(path)
    return path


def _fetch_real(name: str) -> Path:
    from fastai.data.external import URLs, untar_data
    url = getattr(URLs, REAL[name])
    with _lock(name):
        try:
            return Path(untar_data(url)).resolve()
        except Exception as e:  # offline, DNS, HTTP: all mean the same to the user
            reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise DataError(f"{name} is not in the fastai cache and could not be downloaded from {url} "
                            f"({reason}); download it elsewhere and pass --data PATH (the extracted folder "
                            "with train/ and val/)") from None


def layout(path: Path) -> str:
    """"imagenette" (train/ and val/, each of class folders) or "classes" (a folder of class folders: a user's
    own photos, whose test split this module draws). Half of the Imagenette layout is refused."""
    has = [d for d in ("train", "val") if (path / d).is_dir()]
    if len(has) == 1:
        missing = "val" if has == ["train"] else "train"
        raise DataError(f"{path} has {has[0]}/ but no {missing}/ folder: give both (train/<class>/<image> and "
                        "val/<class>/<image>), or a folder of class folders (<class>/<image>)")
    return "imagenette" if has else "classes"


def class_images(path: Path) -> dict[str, list[str]]:
    """{class folder: its images, relative to `path`} of a folder of class folders; images are taken from the
    class folders themselves (an image's label is the folder that holds it)."""
    out = {}
    for d in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[d.name] = sorted(f"{d.name}/{f.name}" for f in d.iterdir()
                             if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
    return out


def held_for_test(classes: dict[str, list[str]]) -> set[str]:
    """A folder of class folders has no val/: a stratified TEST_FRAC of each class, drawn by class alone
    (seeded), plays its part, so adding images to one class does not move another's test images."""
    test = set()
    for label, members in classes.items():
        members = sorted(members)
        random.Random(f"test:{label}").shuffle(members)
        test.update(members[:round(TEST_FRAC * len(members))])
    return test


def check_layout(path: Path) -> None:
    """One line for a folder that cannot be trained on, before anything is indexed or written."""
    if layout(path) == "imagenette":
        return
    classes = class_images(path)
    if not any(classes.values()):
        raise DataError(f"no images found in {path}: give a folder with one folder of images per class "
                        "(<class>/<image>: .jpg, .jpeg, .png, .bmp or .webp) or the Imagenette layout (train/, val/)")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise DataError(f"class folder '{empty[0]}' in {path} has no images" +
                        (f" (nor do {len(empty) - 1} more)" if len(empty) > 1 else "") +
                        "; remove it or add images")
    if len(classes) < 2:
        raise DataError(f"{path} has one class folder ('{next(iter(classes))}'): a classifier needs at least two")
    for c, files in classes.items():
        if len(files) < MIN_PER_CLASS:
            raise DataError(f"class '{c}' in {path} has {len(files)} image(s): its {TEST_FRAC:.0%} test split "
                            f"and the search's {TEST_FRAC:.0%} holdout need at least {MIN_PER_CLASS} per class")


def describe_folder(data: str) -> str | None:
    """What was found in a user's folder of class folders, in one line (None for any other dataset)."""
    if is_name(data):
        return None
    path = Path(data).expanduser().resolve()
    if layout(path) != "classes":
        return None
    classes = class_images(path)
    n, test = sum(map(len, classes.values())), len(held_for_test(classes))
    return (f"{path}: {n} images in {len(classes)} classes, no val/ folder: a seeded, stratified "
            f"{TEST_FRAC:.0%} of each class ({test} images) is its test split (split=val), the rest its train/")


@dataclass
class DatasetIndex:
    """Every usable image of a dataset folder with its label; unreadable files are listed, not used."""
    root: Path
    files: list[str]        # relative to root
    labels: list[str]
    is_valid: list[bool]    # in val/ (or in the test split of a folder of class folders)
    skipped: list[str]      # unreadable images, relative to root
    fingerprint: str = ""   # of the file names and sizes: caches built from the index key on it

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def split(self, how: str, seed: int, holdout_frac: float = 0.2) -> tuple[list[int], list[int]]:
        """Indices of (train, valid): the val/ folder; a holdout of train/ (`holdout_frac` of each class,
        drawn with `seed`); or fastbook's seeded random 20% of everything."""
        n = len(self.files)
        if how == "val":
            return [i for i in range(n) if not self.is_valid[i]], [i for i in range(n) if self.is_valid[i]]
        if how == "holdout":
            return holdout(self, seed, holdout_frac)
        idx = list(range(n))
        random.Random(seed).shuffle(idx)
        cut = int(0.2 * n)
        return sorted(idx[cut:]), sorted(idx[:cut])


def holdout(idx: DatasetIndex, seed: int, frac: float) -> tuple[list[int], list[int]]:
    """Stratified: the same fraction of each class of train/ is held out, drawn by (seed, class) alone, so a
    class's holdout does not move when another class gains or loses images."""
    by_class: dict[str, list[int]] = {}
    for i, (label, valid) in enumerate(zip(idx.labels, idx.is_valid)):
        if not valid:
            by_class.setdefault(label, []).append(i)
    train, held = [], []
    for label, members in sorted(by_class.items()):
        k = round(frac * len(members))
        if not 0 < k < len(members):
            raise DataError(f"class '{label}' has {len(members)} training image(s): a {frac:.0%} holdout would "
                            f"leave {'it none to validate on' if k == 0 else 'none to train on'}; "
                            "use split=val or more images")
        random.Random(f"{seed}:{label}").shuffle(members)
        held += members[:k]
        train += members[k:]
    return sorted(train), sorted(held)


def _cache_key(root: Path) -> str:
    return hashlib.sha1(str(root).encode()).hexdigest()[:16]


def _listing(root: Path, folders: tuple[str, ...]) -> tuple[list[tuple[str, int]], set[str]]:
    """(sorted [(file relative to root, size)], the files of val/ or of the test split) of the folders read."""
    if layout(root) == "classes":
        classes = class_images(root)
        test = held_for_test(classes)
        keep = [f for files in classes.values() for f in files if ("val" if f in test else "train") in folders]
        return sorted((f, (root / f).stat().st_size) for f in keep), test
    out = []
    for split in folders:
        for dirpath, _, names in os.walk(root / split):
            for n in names:
                if Path(n).suffix.lower() in IMAGE_EXTS:
                    p = Path(dirpath) / n
                    out.append((str(p.relative_to(root)), p.stat().st_size))
    return sorted(out), {f for f, _ in out if Path(f).parts[0] == "val"}


def unreadable(files: list[Path]) -> list[str]:
    """The images PIL cannot decode, by fastai's own check (imported here only, when a dataset is first indexed)."""
    from fastai.vision.utils import verify_images
    return [str(f) for f in verify_images(files)]


def folders_for(split: str) -> tuple[str, ...]:
    """The folders a split reads: a holdout is carved from train/, and val/ is not even listed."""
    return ("train",) if split == "holdout" else ("train", "val")


def index(root: Path, folders: tuple[str, ...] = ("train", "val")) -> DatasetIndex:
    """The index of the dataset's `folders`, verified once (every image opened) and cached until their files
    change."""
    root = Path(root).resolve()
    listing, in_val = _listing(root, folders)
    if not listing:
        raise DataError(f"no images found under {' or '.join(f'{root}/{f}' for f in folders)}")
    fingerprint = hashlib.sha1(json.dumps(listing).encode()).hexdigest()
    part = "" if folders == ("train", "val") else "-" + "-".join(folders)
    cache = data_home() / "index" / f"{_cache_key(root)}{part}.json"
    cached = _read_json(cache)
    if not (cached and cached.get("fingerprint") == fingerprint and cached.get("version") == INDEX_VERSION):
        with _lock(f"index-{_cache_key(root)}{part}"):
            cached = _read_json(cache)
            if not (cached and cached.get("fingerprint") == fingerprint and cached.get("version") == INDEX_VERSION):
                bad = unreadable([root / rel for rel, _ in listing])
                cached = {"version": INDEX_VERSION, "root": str(root), "fingerprint": fingerprint,
                          "skipped": sorted(str(Path(b).relative_to(root)) for b in bad)}
                write_json(cache, cached, indent=None)
    skipped = set(cached["skipped"])
    if skipped:
        shown = ", ".join(sorted(skipped)[:3]) + (" ..." if len(skipped) > 3 else "")
        print(f"warning: skipping {len(skipped)} unreadable image(s) in {root}: {shown}", flush=True)
    files = [rel for rel, _ in listing if rel not in skipped]
    idx = DatasetIndex(root, files, [class_name(f) for f in files], [f in in_val for f in files], sorted(skipped),
                       fingerprint)
    for name, part in (("train", False), ("val", True)):
        if name in folders and part not in idx.is_valid:
            raise DataError(f"no readable images in {root}/{name}" if layout(root) == "imagenette" else
                            f"no readable images in the {'test' if part else 'training'} split of {root}")
    lost = sorted({class_name(f) for f, _ in listing} - set(idx.labels))
    if lost:  # a class of unreadable files only would silently vanish from the classifier
        raise DataError(f"class '{lost[0]}' in {root} has no readable image; fix or remove its files")
    return idx


def dataset_stats(idx: DatasetIndex, n: int = 512, size: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images (a fixed sample), cached beside the index."""
    import numpy as np
    from PIL import Image

    cache = data_home() / "index" / f"{_cache_key(idx.root)}-stats.json"
    train = [f for f, v in zip(idx.files, idx.is_valid) if not v]
    key = hashlib.sha1(json.dumps([train, idx.fingerprint, n, size]).encode()).hexdigest()
    cached = _read_json(cache)
    if cached and cached.get("key") == key:
        return cached["mean"], cached["std"]
    sample = random.Random(0).sample(train, min(n, len(train)))
    px = np.concatenate([np.asarray(Image.open(idx.root / f).convert("RGB").resize((size, size)),
                                    np.float32).reshape(-1, 3) / 255 for f in sample])
    mean, std = px.mean(0).tolist(), px.std(0).tolist()
    write_json(cache, {"key": key, "mean": mean, "std": std}, indent=None)
    return mean, std


def _decode_into(args) -> None:
    """Decode images[lo:hi] into the cache file: short side to `px`, centre square (fastai's valid-time Resize)."""
    from PIL import Image
    path, files, lo, px = args
    import numpy as np
    out = np.lib.format.open_memmap(path, mode="r+")
    for i, f in enumerate(files):
        im = Image.open(f)
        im.draft("RGB", (px, px))  # JPEG decodes at a reduced scale when the image is much larger
        im = im.convert("RGB")
        w, h = im.size
        k = px / min(w, h)
        im = im.resize((max(px, round(w * k)), max(px, round(h * k))), Image.BILINEAR)
        left, top = (im.width - px) // 2, (im.height - px) // 2
        out[lo + i] = np.asarray(im.crop((left, top, left + px, top + px)))
    out.flush()


def presize(size: int) -> int:
    """Pixels kept per side before the final crop: room for random crops (fastbook's presizing)."""
    return int(size * 1.25 + 7) // 8 * 8


def tensor_cache(idx: DatasetIndex, size: int):
    """Every image of the index decoded once into a uint8 [N, px, px, 3] array for training at `size`
    (px = presize(size)), memory-mapped read-only.

    One file per dataset and size, built under the dataset's lock and renamed into place, so every
    trial on a node shares it (through the page cache) and none sees it half-written.
    """
    import numpy as np
    from concurrent.futures import ProcessPoolExecutor

    px = presize(size)
    key = hashlib.sha1(json.dumps([str(idx.root), idx.fingerprint, idx.files]).encode()).hexdigest()[:16]
    final = data_home() / "tensors" / f"{key}-{px}.npy"

    def build(tmp: Path) -> None:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(idx.files), px, px, 3)).flush()
        files = [str(idx.root / f) for f in idx.files]
        step = max(64, len(files) // (4 * (os.cpu_count() or 1)))
        jobs = [(str(tmp), files[i:i + step], i, px) for i in range(0, len(files), step)]
        with ProcessPoolExecutor(min(os.cpu_count() or 1, 8)) as ex:
            list(ex.map(_decode_into, jobs))

    if not final.is_file():
        with _lock(f"tensors-{key}-{px}"):
            if not final.is_file():
                print(f"decoding {len(idx.files)} images of {idx.root} at {px} px into {final} ...", flush=True)
                atomic_file(final, build)
    return np.load(final, mmap_mode="r")


def _shrink(rel: str, src: Path, dst: Path, size: int, quality: int) -> None:
    """One image with its shorter side at most `size` (fastai's resize_image bounds the longer side)."""
    from PIL import Image
    out = dst / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src / rel) as im:
        im.draft("RGB", (size, size))   # JPEG decodes at a reduced scale that still covers `size`
        im = im.convert("RGB")
        k = size / min(im.size)
        if k < 1:
            im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))), Image.BILINEAR)
        im.save(out, quality=quality)


def small_copy(idx: DatasetIndex, dst: Path, size: int, quality: int, workers: int, progress: bool = False) -> Path:
    """The readable images of an index with their shorter side at most `size` (as fastai's imagenette-160),
    plus the dataset's top-level files, published at `dst` by an atomic rename."""
    from fastcore.parallel import parallel

    def build(tmp: Path) -> None:
        parallel(_shrink, idx.files, src=idx.root, dst=tmp, size=size, quality=quality, n_workers=workers,
                 progress=progress)
        for f in idx.root.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
    return atomic_dir(dst, build)


def _read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
