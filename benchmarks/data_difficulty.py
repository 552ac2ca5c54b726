"""How hard the generated data is next to real photos: one small config trained on both.

python benchmarks/data_difficulty.py    (about 3 minutes on a 2-core CPU)
Writes benchmarks/results/data_difficulty.json.
"""
import statistics
import tempfile
from pathlib import Path

from common import REAL_DATA, real_subset, save

from trainables.config import TrainConfig
from trainables.train import train

SMALL = dict(arch="tiny", size=64, epochs=5, bs=32, lr=1e-2, tta=False)
SEEDS = (1, 2, 3)


def run(name: str, data: str) -> dict:
    accs = [train(TrainConfig(data=data, seed=s, **SMALL)).accuracy for s in SEEDS]
    print(f"{name}: {[round(a, 3) for a in accs]}", flush=True)
    return {"accuracy": accs, "mean": statistics.mean(accs), "std": statistics.stdev(accs)}


def main():
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        if REAL_DATA.is_dir():
            name = "real photos (80 train / 20 val per class)"
            rows[name] = run(name, str(real_subset(Path(tmp), 80, 20)))
        rows["synthetic:train=80,val=20"] = run("synthetic:train=80,val=20", "synthetic:train=80,val=20")
    default = train(TrainConfig(data="synthetic", seed=1, **{**SMALL, "epochs": 8}))
    save("data_difficulty", {"config": SMALL, "seeds": SEEDS, "rows": rows,
                             "default_synthetic_8_epochs": {"accuracy": default.accuracy,
                                                            "seconds": sum(h["epoch_s"] for h in default.history)}})


if __name__ == "__main__":
    main()
