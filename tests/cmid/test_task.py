"""CMIDTask: lr schedule and scaling, weight-decay groups, EMA after the optimizer step, logging,
health metrics and the kNN probe."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from geocmid.cmid.callbacks import HealthMonitor, KNNProbe, embedding_health, knn_accuracy
from geocmid.cmid.task import CMIDTask, fill_data_args, lr_factor, param_groups
from geocmid.errors import ConfigError
from tests.cmid.test_pretrain_cli import TINY_MODEL
from tests.rasters import write_entry, write_raster


def test_lr_schedule_warmup_then_cosine() -> None:
    lr, min_lr, total, warm = 4e-3, 1e-6, 1000, 100
    f = [lr * lr_factor(k, total, warm, lr, min_lr, 0.01) for k in range(total + 1)]
    cos = [min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * k / total)) for k in (0, 50)]
    assert f[0] == pytest.approx(0.01 * lr)  # starts at 1 %
    assert f[50] == pytest.approx((0.01 + 0.99 * 0.5) * cos[1])  # warmup multiplies the cosine
    assert max(f) == pytest.approx(f[warm]) and f[warm] < lr  # peak at the warmup end
    assert f[-1] == pytest.approx(min_lr)
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1 :], strict=False))


def test_no_weight_decay_on_1d_params_and_frozen_teacher() -> None:
    task = CMIDTask("resnet18", 3, 64, **TINY_MODEL)
    decay, no_decay = param_groups(task.model, 0.02)
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(
        p.ndim <= 1 for p in no_decay["params"]
    )
    ids = {id(p) for g in (decay, no_decay) for p in g["params"]}
    assert id(task.model.student.mask_token) in {id(p) for p in decay["params"]}
    assert not any(id(p) in ids for p in task.model.teacher.parameters())
    n_trainable = sum(1 for p in task.model.parameters() if p.requires_grad)
    assert len(ids) == n_trainable


class _Probe(L.Callback):
    """Teacher/student snapshots around the first EMA update."""

    def __init__(self) -> None:
        self.snap: dict[str, torch.Tensor | float] = {}

    @staticmethod
    def _conv1(module) -> torch.Tensor:
        return module.model.conv1.weight.detach().clone()

    def on_train_start(self, trainer, task) -> None:
        self.snap["teacher_initial"] = self._conv1(task.model.teacher)

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        # callbacks run before the task's own hook: the optimizer has stepped, the EMA not yet
        if trainer.global_step == 1 and "student" not in self.snap:
            self.snap["student"] = self._conv1(task.model.student.backbone)
            self.snap["teacher_before"] = self._conv1(task.model.teacher)
            self.snap["lr"] = trainer.optimizers[0].param_groups[0]["initial_lr"]

    def on_train_batch_start(self, trainer, task, batch, batch_idx) -> None:
        if "student" in self.snap and "teacher_after" not in self.snap:
            self.snap["teacher_after"] = self._conv1(task.model.teacher)
            self.snap["tau"] = task.ema_tau


def test_training_step_ema_lr_scaling_and_logging(tmp_path: Path) -> None:
    L.seed_everything(0)
    loader = DataLoader([{"image": torch.randn(3, 64, 64)} for _ in range(4)], batch_size=2)
    task = CMIDTask(
        "resnet18", 3, 64, bands=["r", "g", "b"], rgb_bands=["r", "g", "b"],
        **TINY_MODEL, batch_size=2, base_lr=2.56e-2, warmup_epochs=0.5,
        ema_momentum=(0.996, 1.0),  # explicit: a 2-step run would derive a lower start
    )  # fmt: skip
    probe = _Probe()
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=2, accumulate_grad_batches=2, accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        callbacks=[probe, HealthMonitor()], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(task, loader)
    s = probe.snap
    # lr = base_lr × (2 per device × 1 device × 2 accumulated) / 256
    assert s["lr"] == pytest.approx(2.56e-2 * 4 / 256)
    assert trainer.global_step == 2  # 2 epochs × 1 optimizer step (accumulation 2)
    # batch 0 did not step the optimizer, so it did not move the teacher either
    assert torch.equal(s["teacher_before"], s["teacher_initial"])
    # the teacher follows the student *after* its step: θ_t ← τ θ_t + (1 − τ) θ_s, τ_0 = 0.996
    assert s["tau"] == pytest.approx(0.996)
    expected = s["tau"] * s["teacher_before"] + (1 - s["tau"]) * s["student"]
    assert torch.allclose(s["teacher_after"], expected, atol=1e-7)
    assert not torch.equal(s["student"], s["teacher_before"])
    m = trainer.callback_metrics
    for key in ("train/loss_epoch", "train/loss_rec_epoch", "train/loss_fft_epoch",
                "train/loss_global_epoch", "train/loss_local_epoch", "health/feat_std",
                "health/feat_cos", "health/feat_std_norm"):  # fmt: skip
        assert key in m, key
    # teacher temperature: linear over the paper's 25 % of the run's 2 steps (round(0.5) = 0)
    assert task.run_schedule().teacher_temp_warmup_steps == 0
    assert float(m["train/teacher_temp"]) == pytest.approx(task.teacher_temperature(1)) == 0.07


def test_health_metrics_detect_collapse() -> None:
    g = torch.Generator().manual_seed(0)
    spread = embedding_health(torch.randn(64, 128, generator=g))
    collapsed = embedding_health(torch.ones(64, 128) + 1e-4 * torch.randn(64, 128, generator=g))
    assert spread["std_norm"] > 0.8 and abs(spread["cos"]) < 0.1
    assert collapsed["std_norm"] < 0.05 and collapsed["cos"] > 0.99


def test_knn_accuracy_on_separable_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 5
    y = torch.arange(60) % 3
    z = centres[y] + 0.1 * torch.randn(60, 16, generator=g)
    assert knn_accuracy(z[:45], y[:45], z[45:], y[45:], k=20) == 1.0
    shuffled = y[torch.randperm(60, generator=g)]
    assert knn_accuracy(z[:45], shuffled[:45], z[45:], y[45:], k=20) < 0.8


def test_knn_probe_from_image_folder_entry(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c, level in (("water", 200), ("field", 900)):
        for i in range(6):
            img = (level + 20 * rng.standard_normal((3, 32, 32))).astype(np.uint16)
            write_raster(tmp_path / "chips" / c / f"{i}.tif", img)
    write_entry(tmp_path / "cat", "scenes", "kind: image_folder\nroot: ../chips\n")
    probe = KNNProbe.from_entry(
        "scenes", tmp_path / "cat", 64, mean=[500] * 3, std=[300] * 3, k=3, holdout=3
    )
    assert probe.images.shape == (12, 3, 64, 64) and probe.query.sum() == 4
    # the raw mean intensity separates these two classes perfectly
    assert probe.accuracy(lambda x: x.mean(dim=(2, 3)) + torch.tensor([0.0, 1.0, 0.0])) == 1.0


# ------------------------------------------------------------------------------------------------
# settings: flat arguments, data-derived values, old checkpoints
def test_networks_wait_for_the_data() -> None:
    task = CMIDTask()  # the paper's settings; band count and chip size come from the data
    assert not task.built and task.hparams["in_chans"] is None
    assert task.hparams["base_lr"] == 4e-3 and task.hparams["optimizer"] == "adan"
    built = CMIDTask("resnet18", 4, 64, **TINY_MODEL)
    assert built.built and built.model.global_loss.queue.bank.shape[0] == 64


DATA = {
    "bands": ["b", "g", "r"], "rgb_bands": ["r", "g", "b"], "mean": [1.0, 2.0, 3.0],
    "std": [4.0, 5.0, 6.0], "gsd": 10.0, "data": "scene", "chip_size": 64, "batch_size": 2,
}  # fmt: skip


def test_data_args_filled_and_checked() -> None:
    hp = dict(CMIDTask().hparams)
    filled = fill_data_args(hp, DATA)
    assert filled["in_chans"] == 3 and filled["bands"] == ["b", "g", "r"]
    assert filled["mean"] == [1.0, 2.0, 3.0] and filled["chip_size"] == 64
    # set values that agree pass; rgb_bands / gsd / data may be chosen freely
    same = {**hp, "in_chans": 3, "chip_size": 64, "rgb_bands": ["b", "g", "r"], "gsd": 2.0}
    assert fill_data_args(same, DATA)["rgb_bands"] == ["b", "g", "r"]
    assert fill_data_args(same, DATA)["gsd"] == 2.0
    for key, value in (("in_chans", 4), ("bands", ["r", "g", "b"]), ("chip_size", 96),
                       ("batch_size", 8), ("mean", [1.0, 2.0, 9.0]),
                       ("rgb_bands", ["r", "g", "nir"])):  # fmt: skip
        with pytest.raises(ConfigError, match=f"model.init_args.{key}"):
            fill_data_args({**hp, key: value}, DATA)


def test_old_checkpoint_model_kwargs() -> None:
    legacy = {**TINY_MODEL, "mask_ratio": 0.5, "backbone_kwargs": {}}
    task = CMIDTask("resnet18", 3, 64, model_kwargs=legacy)
    assert task.hparams["mask_ratio"] == 0.5 and task.hparams["queue_size"] == 64
    assert task.model.mask_ratio == 0.5 and task.hparams["model_kwargs"] is None
    with pytest.raises(ConfigError, match="did you mean 'mask_ratio'"):
        CMIDTask("resnet18", 3, 64, model_kwargs={"mask_ration": 0.5})


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"optimizer": "adamx"}, "optimizer"),
        ({"backbone": "resnet51"}, "backbone"),
        ({"mask_block": 30}, "mask_block"),
        ({"chip_size": 80, "in_chans": 3}, "chip_size"),
        ({"teacher_temp": (0.04,)}, "teacher_temp"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, key) -> None:
    with pytest.raises(ConfigError, match=f"model.init_args.{key}"):
        CMIDTask(**{"backbone": "resnet18", **kwargs})


@pytest.mark.slow
def test_checkpoint_carries_queue_pointer_centre_and_teacher(tmp_path: Path) -> None:
    """A resumed run is the run it continues: every piece of method state is in the checkpoint."""
    L.seed_everything(0)
    loader = DataLoader([{"image": torch.randn(3, 64, 64)} for _ in range(6)], batch_size=2)
    task = CMIDTask("resnet18", 3, 64, **TINY_MODEL, batch_size=2)
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(task, loader)
    queue, dense = task.model.global_loss.queue, task.model.local_loss
    assert int(queue.bank_ptr) == 3 * 2 * 2  # 3 steps × (k2, k1) × batch 2
    assert dense.center.abs().sum() > 0
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)

    fresh = CMIDTask.load_from_checkpoint(path)
    fq, fd = fresh.model.global_loss.queue, fresh.model.local_loss
    assert torch.equal(fq.bank, queue.bank) and torch.equal(fq.bank_ptr, queue.bank_ptr)
    assert torch.equal(fd.center, dense.center)
    for a, b in zip(fresh.model.teacher.parameters(), task.model.teacher.parameters(), strict=True):
        assert torch.equal(a, b)
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["global_step"] == 3  # the schedules (lr, EMA, teacher temperature) count steps
    assert "lr_schedulers" in ckpt and ckpt["optimizer_states"]

    # a checkpoint written before the queue was saved still loads (with a fresh queue)
    old = {k: v for k, v in ckpt["state_dict"].items() if ".queue.bank" not in k}
    again = CMIDTask("resnet18", 3, 64, **TINY_MODEL)
    again.load_state_dict(old, strict=True)
    assert int(again.model.global_loss.queue.bank_ptr) == 0


def test_vit_position_embedding_and_class_token_not_decayed() -> None:
    task = CMIDTask("vit_small", 3, 64, **TINY_MODEL)
    decay, no_decay = param_groups(task.model, 0.02)
    names = {id(p): n for n, p in task.model.named_parameters()}
    undecayed = {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"] if p.ndim > 1}
    assert undecayed == {"pos_embed", "cls_token"}
    assert all(names[id(p)].endswith("weight") or "token" in names[id(p)] for p in decay["params"])


def test_channels_last_weights_give_the_same_losses() -> None:
    """``channels_last`` (default) keeps conv weights NHWC, student and teacher alike, and the
    step's losses equal the NCHW ones up to float rounding."""
    torch.manual_seed(0)
    fast = CMIDTask("resnet18", 3, 64, **TINY_MODEL)
    torch.manual_seed(0)
    plain = CMIDTask("resnet18", 3, 64, **TINY_MODEL, channels_last=False)
    convs = [m.weight for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(
        m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in plain.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1
    )  # fmt: skip
    batch = {"image": torch.randn(2, 3, 64, 64)}
    views = fast.views(batch, torch.Generator().manual_seed(0))
    a = fast.model.forward_losses(views, 0.04)
    b = plain.model.forward_losses(views, 0.04)
    for key in ("loss", *[k for k in a if k != "loss"]):
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_queue_size_derived_from_the_distinct_images(tmp_path: Path) -> None:
    """Unset ``queue_size`` follows the data: a chip set of 40 images at batch 2 gets a queue of
    20 keys (half a key per image, whole steps of 4 keys), also when the networks were built
    before the data were known; the checkpoint keeps that length."""
    L.seed_everything(0)
    tiny = {k: v for k, v in TINY_MODEL.items() if k != "queue_size"}
    loader = DataLoader([{"image": torch.randn(3, 64, 64)} for _ in range(4)], batch_size=2)

    class Data(L.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return loader

        def task_args(self) -> dict:
            return {"batch_size": 2, "chip_size": 64, "num_images": 40}

    task = CMIDTask("resnet18", 3, 64, **tiny)  # built now, with the paper's queue
    assert task.model.global_loss.queue.bank.shape == (65536, 32)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(task, datamodule=Data())
    queue = task.model.global_loss.queue
    assert task.hparams["queue_size"] == 20 and queue.bank.shape == (20, 32)
    assert int(queue.bank_ptr) == 2 * 4 % 20  # two steps of (k2, k1) × batch 2
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    fresh = CMIDTask.load_from_checkpoint(tmp_path / "last.ckpt")
    assert torch.equal(fresh.model.global_loss.queue.bank, queue.bank)
    # scenes (no count of distinct images): the paper's 65,536
    assert CMIDTask("resnet18", 3, 64, **tiny).hparams["queue_size"] is None

    # resumed with another batch (which alone would derive 18 keys): the checkpoint's 20 stay
    class Batch3(Data):
        def task_args(self) -> dict:
            return {"batch_size": 3, "chip_size": 64, "num_images": 40}

    resumed = CMIDTask("resnet18", 3, 64, **tiny)
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(resumed, datamodule=Batch3(), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.hparams["queue_size"] == 20 and trainer.global_step == 3
