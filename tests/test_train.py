"""Real fastai training on a tiny generated dataset: every technique on and off, the schedule, resume."""
import math
from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.mixup import MixUp
from fastai.data.transforms import Normalize
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat

from trainables.data import dataset_stats, index, prepare
from trainables.reporting import EPOCH_KEYS, TIMING_KEYS, Reporter
from trainables.train import train


class Collect(Reporter):
    """Keeps what the trainer reports; saves a checkpoint after epoch `save_at`."""

    def __init__(self, save_at=None, folder=None):
        self.metrics, self.save_at, self.folder, self.ended = [], save_at, folder, None

    def epoch(self, metrics, save):
        self.metrics.append(metrics)
        if metrics["epoch"] == self.save_at:
            save(self.folder)

    def end(self, result):
        self.ended = result


class Shapes(Callback):
    """Records the image size of every training and validation batch, by epoch."""

    def before_fit(self):
        self.seen = {}

    def before_batch(self):
        self.seen.setdefault((self.epoch, self.training), set()).add(tuple(self.x.shape[-2:]))


class LRTrace(Callback):
    def before_fit(self):
        self.lrs = []

    def after_batch(self):
        if self.training:
            self.lrs.append(self.opt.hypers[-1]["lr"])


def deterministic(history):
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in history]


def test_reports_every_epoch_with_every_metric(tiny_cfg):
    rep = Collect()
    res = train(tiny_cfg.replace(epochs=3), [rep])
    assert [m["epoch"] for m in rep.metrics] == [1, 2, 3]
    for m in rep.metrics:
        assert set(EPOCH_KEYS) <= set(m) and all(math.isfinite(m[k]) for k in EPOCH_KEYS)
        assert 0 <= m["accuracy"] <= 1 and m["images_per_s"] > 0 and m["size"] == 32
    assert rep.ended["accuracy"] == rep.metrics[-1]["accuracy"] == res.accuracy
    assert "accuracy_tta" not in rep.metrics[-1]


PIPELINES = pytest.mark.parametrize("pipeline", ["fastai", "tensor"])


@PIPELINES
def test_progressive_resizing_trains_small_then_large_and_always_validates_at_final_size(tiny_cfg, pipeline):
    cfg = tiny_cfg.replace(size=48, resize_start=24, resize_frac=0.5, epochs=4, pipeline=pipeline)
    rep, shapes = Collect(), Shapes()
    train(cfg, [rep], cbs=[shapes])
    assert [m["size"] for m in rep.metrics] == [24, 24, 48, 48]
    for epoch in range(4):
        want = 24 if epoch < 2 else 48
        assert shapes.seen[(epoch, True)] == {(want, want)}
        assert shapes.seen[(epoch, False)] == {(48, 48)}


@pytest.mark.parametrize("schedule", ["one_cycle", "flat_cos"])
def test_one_schedule_spans_all_epochs_across_the_size_switch(tiny_cfg, schedule):
    cfg = tiny_cfg.replace(size=48, resize_start=24, resize_frac=0.5, epochs=4, lr=1e-2, lr_schedule=schedule)
    trace = LRTrace()
    train(cfg, [], cbs=[trace])
    lrs = trace.lrs
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(1e-2, rel=0.05)
    assert lrs[-1] < 1e-2 * 0.15                                  # annealed only at the very end
    assert all(b <= a + 1e-12 for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # never restarts at the switch
    if schedule == "one_cycle":
        assert 0.1 < peak / len(lrs) < 0.4 and lrs[0] < 1e-2 / 10   # warm-up over the first quarter of all batches
    else:
        assert peak / len(lrs) < 0.05 and lrs[len(lrs) // 2] == pytest.approx(1e-2)  # flat, then cosine


@PIPELINES
def test_resume_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(tiny_cfg, tmp_path, pipeline):
    cfg = tiny_cfg.replace(epochs=4, size=48, resize_start=32, resize_frac=0.5, mixup_alpha=0.4,
                           label_smoothing=0.1, tta=True, pipeline=pipeline)
    full = Collect(save_at=2, folder=tmp_path)
    train(cfg, [full])
    resumed = Collect()
    res = train(cfg, [resumed], resume_from=tmp_path)
    assert [m["epoch"] for m in resumed.metrics] == [3, 4]
    assert deterministic(resumed.metrics) == deterministic(full.metrics[2:])
    assert deterministic(res.history) == deterministic(full.metrics)
    assert res.accuracy_tta == full.metrics[-1]["accuracy_tta"]


class SaveAll(Reporter):
    """A checkpoint of every epoch, each in a folder of its own as Ray names them."""

    def __init__(self, folder: Path):
        self.folder = folder

    def epoch(self, metrics, save):
        d = self.folder / f"checkpoint_{metrics['epoch']:06d}"
        d.mkdir()
        save(d)


def test_a_checkpoint_is_trusted_only_whole_and_the_last_one_holds_no_optimizer(tiny_cfg, tmp_path):
    from tune.trials import checkpoint_state, checkpoints, filesystem

    train(tiny_cfg.replace(epochs=3), [SaveAll(tmp_path)])
    fs, root = filesystem(tmp_path)
    found = checkpoints(fs, root)
    assert [checkpoint_state(fs, c)["epoch"] for c in found] == [1, 2, 3]
    models = [tmp_path / f"checkpoint_{e:06d}" / "model.pth" for e in (1, 2, 3)]
    assert models[2].stat().st_size < models[1].stat().st_size   # the optimizer's state is left out
    # what a kill during Ray's parallel copy leaves: the whole state beside a model cut short, or none
    models[1].write_bytes(models[1].read_bytes()[: models[1].stat().st_size // 2])
    models[2].unlink()
    assert [checkpoint_state(fs, c) is not None for c in found] == [True, False, False]
    (tmp_path / "checkpoint_000001" / "state.json").write_text('{"epoch": 1, "hist')
    assert checkpoint_state(fs, found[0]) is None


def test_old_checkpoints_go_and_the_newest_whole_one_stays(tiny_cfg, tmp_path):
    from tune.trials import checkpoints, delete_checkpoints, filesystem

    train(tiny_cfg.replace(epochs=3), [SaveAll(tmp_path)])
    model = tmp_path / "checkpoint_000003" / "model.pth"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])   # a copy cut short by a kill
    fs, root = filesystem(tmp_path)
    assert delete_checkpoints(fs, root, keep_newest=True) > 0
    assert [Path(c).name for c in checkpoints(fs, root)] == ["checkpoint_000002"]
    assert delete_checkpoints(fs, root, keep_newest=True) == 0 and len(checkpoints(fs, root)) == 1  # a lone one
    assert delete_checkpoints(fs, root) > 0 and checkpoints(fs, root) == []


def test_a_restarted_trial_writes_no_checkpoint_into_a_folder_it_already_has(tiny_cfg, tmp_path):
    """After a kill, Ray numbers a trial's next checkpoint from its last snapshot, which can predate the
    trial's newest checkpoint folder. Here a new trial finds a whole checkpoint of epoch 1 in its folder, named
    as Ray names its first one: its replay of that epoch and its later checkpoints must each take a folder
    of their own (a copy into the existing one, cut short by a kill, would spoil the only whole one). Real
    Ray Tune, one trial in this process."""
    import json
    import shutil

    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from trainables.tune_report import tune_trainable
    from tune.trials import checkpoint_state, checkpoints, filesystem

    cfg = tiny_cfg.replace(epochs=3)
    (kept := tmp_path / "kept").mkdir()
    train(cfg.replace(epochs=1), [SaveAll(kept)])   # epoch 1 of this config: the newer folder
    first = kept / "checkpoint_000001"

    def restarted(config):
        trial = Path(tune.get_context().get_storage().trial_fs_path)
        shutil.copytree(first, trial / "checkpoint_000000")   # Ray's first number, as its snapshot would give
        tune_trainable(config)

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        result = tune.Tuner(restarted, param_space=cfg.to_dict(),
                            # named: importing tune.search turns Ray's automatic loggers off in this process
                            run_config=tune.RunConfig(storage_path=str(tmp_path / "runs"), name="t",
                                                      callbacks=[JsonLoggerCallback()])).fit()[0]
    finally:
        ray.shutdown()
    assert result.error is None, result.error
    rows = [json.loads(line) for line in (Path(result.path) / "result.json").read_text().splitlines()]
    named = [r["checkpoint_dir_name"] for r in rows if r.get("checkpoint_dir_name")]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and named[0] != "checkpoint_000000", named
    assert len(set(named)) == len(named), named
    fs, root = filesystem(Path(result.path))
    assert [(Path(c).name, checkpoint_state(fs, c)["epoch"]) for c in checkpoints(fs, root)] == [(named[-1], 3)]


@PIPELINES
def test_same_seed_same_metrics_and_another_seed_differs(tiny_cfg, pipeline):
    tiny_cfg = tiny_cfg.replace(pipeline=pipeline)
    a, b, c = Collect(), Collect(), Collect()
    train(tiny_cfg, [a])
    train(tiny_cfg, [b])
    train(tiny_cfg.replace(seed=43), [c])
    assert deterministic(a.metrics) == deterministic(b.metrics)
    assert deterministic(a.metrics) != deterministic(c.metrics)


@PIPELINES
def test_mixup_and_label_smoothing_on_and_off(tiny_cfg, pipeline):
    tiny_cfg = tiny_cfg.replace(pipeline=pipeline)
    plain = train(tiny_cfg)
    assert isinstance(plain.learn.loss_func, CrossEntropyLossFlat)
    assert not any(isinstance(cb, MixUp) for cb in plain.learn.cbs)
    mixed = train(tiny_cfg.replace(mixup_alpha=0.4, label_smoothing=0.2))
    assert isinstance(mixed.learn.loss_func, LabelSmoothingCrossEntropyFlat)
    assert mixed.learn.loss_func.func.eps == 0.2
    assert any(isinstance(cb, MixUp) for cb in mixed.learn.cbs)
    # same seed and data: the techniques change what is learned
    assert plain.history[0]["train_loss"] != mixed.history[0]["train_loss"]


@PIPELINES
@pytest.mark.parametrize("normalize", ["imagenet", "dataset", "none"])
def test_normalization_choices(tiny_cfg, normalize, pipeline):
    res = train(tiny_cfg.replace(epochs=1, normalize=normalize, pipeline=pipeline))
    xb, _ = res.learn.dls.valid.one_batch()
    if pipeline == "tensor":
        mean = None if res.learn.dls.train.stats is None else list(res.learn.dls.train.stats[0])
    else:
        norms = [t for t in res.learn.dls.train.after_batch.fs if isinstance(t, Normalize)]
        mean = norms[0].mean.flatten().tolist() if norms else None
    if normalize == "none":
        assert mean is None and 0 <= float(xb.min()) and float(xb.max()) <= 1
        return
    if normalize == "imagenet":
        assert mean == pytest.approx([0.485, 0.456, 0.406])
    else:
        want, _ = dataset_stats(index(prepare(tiny_cfg.data)))
        assert mean == pytest.approx(want) and mean != pytest.approx([0.485, 0.456, 0.406], abs=1e-3)
    assert abs(float(xb.mean())) < 1.5 and float(xb.min()) < 0


@PIPELINES
def test_tta_is_reported_on_the_last_epoch(tiny_cfg, pipeline):
    rep = Collect()
    res = train(tiny_cfg.replace(tta=True, pipeline=pipeline), [rep])
    assert "accuracy_tta" not in rep.metrics[0]
    assert rep.metrics[-1]["accuracy_tta"] == res.accuracy_tta and 0 <= res.accuracy_tta <= 1
    assert rep.metrics[-1]["tta_s"] > 0 and "tta_s" not in rep.metrics[0]


@PIPELINES
def test_random_split_holds_out_a_fifth_of_all_images(tiny_cfg, pipeline):
    res = train(tiny_cfg.replace(split="random", epochs=1, pipeline=pipeline))
    n_train, n_valid = len(res.learn.dls.train_ds), len(res.learn.dls.valid_ds)
    assert n_valid == int(0.2 * (n_train + n_valid))


@pytest.mark.parametrize("opt", ["ranger", "sgd", "lamb"])
def test_other_optimizers_and_activation_train(tiny_cfg, opt):
    res = train(tiny_cfg.replace(epochs=1, opt=opt, act="mish"))
    assert math.isfinite(res.history[0]["train_loss"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only message")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_without_a_gpu_is_a_clear_error(tiny_cfg, precision):
    from trainables.config import ConfigError
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        train(tiny_cfg.replace(precision=precision))


@pytest.mark.parametrize("arch", ["xresnet18", "xse_resnext18"])
def test_xresnet_family_builds_for_ten_classes(tiny_cfg, arch):
    from trainables.learner import make_model
    out = make_model(tiny_cfg.replace(arch=arch), 10)(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_tensor_path_validates_the_same_images_as_fastai(tiny_cfg):
    """Both paths show validation the whole centre square of each image at the final size."""
    fa = train(tiny_cfg.replace(epochs=1, normalize="none", size=48)).learn.dls.valid
    te = train(tiny_cfg.replace(epochs=1, normalize="none", size=48, pipeline="tensor")).learn.dls.valid
    (xa, ya), (xt, yt) = fa.one_batch(), te.one_batch()
    assert xa.shape == xt.shape and torch.equal(ya.cpu(), yt.cpu())
    assert float((xa - xt).abs().mean()) < 0.05     # resampling differs a little; the content does not


def test_tensor_augmentation_changes_train_batches_not_validation(tiny_cfg):
    dl = train(tiny_cfg.replace(epochs=1, pipeline="tensor")).learn.dls
    idx = torch.arange(8)
    a, b = dl.train.make_batch(idx)[0], dl.train.make_batch(idx)[0]
    assert not torch.equal(a, b)
    v1, v2 = dl.valid.make_batch(idx)[0], dl.valid.make_batch(idx)[0]
    assert torch.equal(v1, v2)


class Stop(Reporter):
    """Raises what Ray raises inside tune.report when ASHA stops a trial."""

    def epoch(self, metrics, save):
        raise SystemExit(0)


class Probe(Callback):
    """Weak references to what holds a trial's memory: the model's weights and the loaders."""

    def before_fit(self):
        import weakref
        self.refs = [weakref.ref(p) for p in self.learn.model.parameters()] + [weakref.ref(self.learn.dls.train)]


@PIPELINES
def test_a_stopped_trial_frees_its_model_and_data_while_the_stop_propagates(tiny_cfg, pipeline):
    import gc
    probe = Probe()
    try:
        train(tiny_cfg.replace(pipeline=pipeline), [Stop()], cbs=[probe])
    except SystemExit as e:
        held = e  # the exception (and its traceback of the trainer's frames) is still alive here
        gc.collect()
        assert all(r() is None for r in probe.refs)
        assert held is not None
    else:
        pytest.fail("the trainer should let the stop through")


@pytest.mark.parametrize("precision, cuda, native_bf16, want", [
    ("auto", True, True, "bf16"), ("auto", True, False, "fp16"), ("auto", False, False, "fp32"),
    ("fp16", True, False, "fp16"), ("fp32", True, True, "fp32"), ("bf16", True, True, "bf16")])
def test_precision_auto_is_native_bf16_else_fp16_else_fp32(precision, cuda, native_bf16, want):
    from trainables.learner import choose_precision
    assert choose_precision(precision, cuda, native_bf16, "a GPU") == want


def test_bf16_is_refused_where_the_gpu_only_emulates_it():
    from trainables.config import ConfigError
    from trainables.learner import choose_precision
    with pytest.raises(ConfigError, match="no native bfloat16"):
        choose_precision("bf16", True, False, "Tesla T4")


@pytest.mark.parametrize("gpu_ids, cuda, want", [([], True, "cpu"), ([], False, "cpu"), ([0], True, "cuda"),
                                                 ([0], False, "cpu")])
def test_a_trial_trains_where_ray_put_it(gpu_ids, cuda, want):
    """A trial given no GPU trains on the CPU even where CUDA is visible (Ray leaves CUDA_VISIBLE_DEVICES
    alone for it); logical GPUs without CUDA train on the CPU."""
    from trainables.tune_report import trial_device
    assert trial_device(gpu_ids, cuda) == want



@pytest.mark.parametrize("gib, gpu_gib, share, on_gpu", [
    (0.96, 80, 0.25, True),    # imagenette-160 at 128 px, four trials on an H100: 0.96 of a 20 GiB share
    (0.96, 16, 0.25, False),   # the same on a 16 GiB T4: 4 GiB each, the cache stays in host memory
    (7.7, 80, 0.5, True), (7.7, 80, 0.25, False)])
def test_the_tensor_cache_goes_to_the_gpu_only_within_a_fifth_of_the_trials_share(gib, gpu_gib, share, on_gpu):
    from trainables.tensor_pipeline import cache_on_device
    assert cache_on_device(int(gib * 2**30), gpu_gib * 2**30 * share) == on_gpu
