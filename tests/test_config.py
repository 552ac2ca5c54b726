import json

import pytest

from trainables.config import FIELDS, ConfigError, TrainConfig, load_config_file, parse_overrides


def test_defaults_follow_fastbook_chapter_7():
    c = TrainConfig()
    assert (c.arch, c.lr_schedule, c.lr, c.bs, c.normalize, c.min_scale) == \
        ("xresnet50", "one_cycle", 3e-3, 64, "imagenet", 0.75)
    assert c.mixup_alpha == 0 and c.label_smoothing == 0 and not c.progressive
    assert c.split == "val" and c.data == "synthetic"


def test_every_issue_key_exists():
    for k in ("data", "split", "arch", "epochs", "bs", "lr", "lr_schedule", "wd", "opt", "mixup_alpha",
              "label_smoothing", "size", "resize_start", "resize_frac", "normalize", "min_scale", "tta",
              "precision", "seed", "workers"):
        assert k in FIELDS


@pytest.mark.parametrize("changes, words", [
    ({"mixup_alpha": -0.1}, "mixup_alpha"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"label_smoothing": -0.01}, "label_smoothing"),
    ({"size": 0}, "size"),
    ({"size": -5}, "size"),
    ({"resize_start": 0}, "resize_start"),
    ({"bs": 0}, "bs"),
    ({"epochs": 0}, "epochs"),
    ({"lr": 0}, "lr"),
    ({"resize_start": 160, "size": 128}, "larger than size"),
    ({"arch": "resnet9"}, "arch"),
    ({"lr_schedule": "cosine"}, "lr_schedule"),
    ({"precision": "fp8"}, "precision"),
    ({"size": "big"}, "size"),
    ({"epochs": 2.5}, "epochs"),
    ({"lerning_rate": 1e-3}, "unknown config key"),
])
def test_bad_values_name_the_problem(changes, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig.from_dict(changes)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean 'label_smoothing'"):
        TrainConfig.from_dict({"label_smothing": 0.1})


def test_overrides_are_typed_by_the_config():
    d = parse_overrides(["lr=1e-2", "epochs=7", "tta=off", "resize_start=none", "arch=tiny", "mixup_alpha=0"])
    assert d == {"lr": 0.01, "epochs": 7, "tta": False, "resize_start": None, "arch": "tiny", "mixup_alpha": 0.0}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])


def test_progressive_schedule_switches_at_resize_frac():
    c = TrainConfig(size=128, resize_start=64, resize_frac=0.5, epochs=5)
    assert [c.size_at(e) for e in range(5)] == [64, 64, 64, 128, 128]   # 2.5 rounds up to 3
    c = TrainConfig(size=128, resize_start=64, resize_frac=0.9, epochs=4)
    assert [c.size_at(e) for e in range(4)] == [64, 64, 64, 128]        # always ends at the final size
    off = TrainConfig(size=128, resize_start=128, resize_frac=0.5, epochs=4)
    assert not off.progressive and {off.size_at(e) for e in range(4)} == {128}


def test_config_files_flat_or_exported(tmp_path):
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"arch": "tiny", "lr": 0.01}))
    exported = tmp_path / "best.json"
    exported.write_text(json.dumps({"config": TrainConfig(arch="tiny").to_dict(), "provenance": {"trial": "x"}}))
    values, provenance = load_config_file(flat)
    assert TrainConfig.from_dict(values).lr == 0.01 and provenance is None
    values, provenance = load_config_file(exported)
    assert TrainConfig.from_dict(values) == TrainConfig(arch="tiny") and provenance == {"trial": "x"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"arch": "tiny",')
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "missing.json")


def test_round_trip_through_dict():
    c = TrainConfig(arch="tiny", mixup_alpha=0.3, resize_start=96, size=128)
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
