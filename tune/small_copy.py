"""A smaller copy of an Imagenette-layout dataset, to carry to a machine with no network:
python tune/small_copy.py SRC DST [--size 160] [--quality 85]

SRC is a folder in the Imagenette layout or a dataset name (imagenette-320, ...). Every readable image of
train/ and val/ is written in RGB with its shorter side at most --size pixels, as fastai's imagenette-160
is (never enlarged; JPEG files at --quality); unreadable ones are left out and named; noisy_imagenette.csv
and the other top-level files are copied. The copy is built beside DST and renamed into place, so an
interrupted copy never looks complete. Training at size S reads images at presize(S) (160 px for 128), so
--size below that trades some sharpness for a smaller copy.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a clone without installing

from tune.cli import Parser, UsageError, quiet, run  # noqa: E402


def parse_args(argv):
    p = Parser(prog="tune/small_copy.py", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="Imagenette-layout folder or dataset name")
    p.add_argument("dst", help="new folder for the copy (must not exist or be empty)")
    p.add_argument("--size", type=int, default=160, help="shorter side at most this many pixels (default 160)")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality, 1-95 (default 85)")
    p.add_argument("--workers", type=int, help="processes (default: every core)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.size < 8:
        raise UsageError(f"--size {args.size}: use at least 8 pixels")
    if not 1 <= args.quality <= 95:
        raise UsageError(f"--quality {args.quality}: use 1 to 95 (PIL's useful range)")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: use at least 1")
    quiet()
    from trainables.data import index, prepare, small_copy
    dst = Path(args.dst).expanduser().resolve()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UsageError(f"destination {dst} already exists; choose another or remove it")
    root = prepare(args.src)
    if dst == root or root in dst.parents:
        raise UsageError(f"the copy cannot go inside its source {root}")
    idx = index(root)   # the verified file list: unreadable images are named there and left out here
    t0 = time.time()
    print(f"copying {len(idx.files)} images of {root}, shorter side at most {args.size} px, JPEG quality "
          f"{args.quality} ...", flush=True)
    small_copy(idx, dst, args.size, args.quality, args.workers or os.cpu_count() or 1, sys.stdout.isatty())
    mib = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()) / 2**20
    print(f"wrote {dst}: {len(idx.files)} images ({len(idx.skipped)} unreadable left out), {mib:.1f} MiB, "
          f"in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
