"""What every command shares: one-line errors with exit status 2, quiet library warnings, output folders."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

USAGE_ERROR = 2


class UsageError(Exception):
    """Bad input from the user; reported as one line and exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with the project's habits: a bad argument is one line and exit status 2, not the usage block,
    and an option is taken only as spelt (argparse would read `--sample 3` as `--samples 3`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def quiet() -> None:
    """Silence warnings the user cannot act on (fastai's use of deprecated torch APIs)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*upsample.*|.*grid_sample.*")


def run(main, argv=None) -> int:
    """Call main(argv); turn the project's input errors into one line on stderr and exit status 2."""
    from trainables.config import ConfigError
    from trainables.data import DataError
    try:
        return main(argv) or 0
    except (UsageError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def compact(v, exp_digits: int = 2) -> str:
    """A value in as few characters as still tell configs apart: 3 significant digits, very small or
    large floats in exponent form."""
    if isinstance(v, float):
        return f"{v:.{exp_digits}e}" if v and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3g}"
    return str(v)


def shown(path: Path) -> str:
    """A path as a user types it: relative to the working directory when under it (files stay portable)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def free_folder(path: Path, force: bool, what: str) -> Path:
    """An output folder that holds nothing yet (or --force); refuses to mix a new run into an old one."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UsageError(f"{what} {path} already exists; choose another or pass --force")
    return path
