import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The real photos sit beside the project on the machines that build it; users never need them.
REAL_DATA = ROOT.parent / "shared" / "data" / "imagenette2-224sq"
TINY_DATA = "synthetic:train=8,val=4,px=64,seed=7"   # 80 + 40 images: seconds to generate and train

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session", autouse=True)
def data_home(tmp_path_factory):
    """Generated datasets and indexes live in one temporary home for the whole test session."""
    home = tmp_path_factory.mktemp("data-home")
    old = os.environ.get("IMAGENETTE_TUNE_HOME")
    os.environ["IMAGENETTE_TUNE_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("IMAGENETTE_TUNE_HOME", None)
    else:
        os.environ["IMAGENETTE_TUNE_HOME"] = old


@pytest.fixture
def tiny_cfg():
    from trainables.config import TrainConfig
    return TrainConfig(data=TINY_DATA, arch="tiny", size=32, epochs=2, bs=16, workers=0, tta=False)


needs_real = pytest.mark.skipif(not REAL_DATA.is_dir(), reason="real Imagenette photos not beside the project")
