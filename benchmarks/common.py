"""What every benchmark shares: the project on the path, the real photos if present, JSON results with the machine."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# a run that must not replace the committed results (benchmarks/gpu_session.sh --dry-run) writes elsewhere
RESULTS = Path(os.environ.get("IMAGENETTE_TUNE_RESULTS", ROOT / "benchmarks" / "results"))
# Real Imagenette photos sit beside the project on the machines that build it; users pass their own.
REAL_DATA = Path(os.environ.get("IMAGENETTE_REAL", ROOT.parent / "shared" / "data" / "imagenette2-224sq"))


def label(data: str) -> str:
    """A dataset as results name it: no machine's path in what is committed."""
    if Path(data).resolve() == REAL_DATA.resolve():
        return "real photos (imagenette2, squished to 224x224)"
    return Path(data).name if Path(data).is_dir() else data


def save(name: str, payload: dict) -> Path:
    from trainables.provenance import git_commit, machine, versions
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "git_commit": git_commit(), "versions": versions(), **payload}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def real_subset(dst: Path, n_train: int, n_val: int, src: Path = REAL_DATA) -> Path:
    """Links to the first n images of each class of an Imagenette-layout folder (the real photos by default)."""
    src = Path(src).resolve()
    for split, n in (("train", n_train), ("val", n_val)):
        for wnid in sorted(os.listdir(src / split)):
            (dst / split / wnid).mkdir(parents=True, exist_ok=True)
            for f in sorted(os.listdir(src / split / wnid))[:n]:
                link = dst / split / wnid / f
                if not link.exists():
                    os.symlink(src / split / wnid / f, link)
    return dst
