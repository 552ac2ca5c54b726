"""The project's one way to publish a file or a folder: build it beside its final place, then rename it in.

A reader (another trial, a resumed search, TensorBoard) never sees half of it; a writer killed midway
leaves a hidden `.<name>.*.partial` beside it and never a half-written file under the final name.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable


def atomic_file(path: Path, build: Callable[[Path], None]) -> Path:
    """Run build(tmp) on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")  # unique per writer
    try:
        build(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic_file(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, obj, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def atomic_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Run build(tmp) on a temporary folder beside `final`, then rename it to `final` (which must not exist)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        build(tmp)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
