"""Callbacks of CMID pretraining: collapse health metrics, kNN probe, reconstruction quick-looks.

All three work on what :class:`~geocmid.cmid.task.CMIDTask` already has (its last two-view batch,
its teacher) and run once per epoch (or every N epochs), never per step: the official code's
per-iteration plot hook (spec §9.4) is exactly what is avoided here.

Their arguments are plain values, so a Lightning CLI config lists them under
``trainer.callbacks`` (``class_path: geocmid.cmid.callbacks.HealthMonitor``). What depends on the
run (the run folder, the data's statistics and RGB bands) is looked up when training starts:
folders default to ``trainer.default_root_dir``, the kNN probe uses the task's ``mean`` / ``std``
/ ``chip_size`` as :meth:`CMIDTask.setup <geocmid.cmid.task.CMIDTask.setup>` filled them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from geocmid.errors import ConfigError

log = logging.getLogger(__name__)

#: The kNN entry's setting, as errors name it.
KNN_KEY = "trainer.callbacks.HealthMonitor.knn_entry"


# ------------------------------------------------------------------------------------------------
# health: embedding spread and kNN accuracy
def embedding_health(z: Tensor) -> dict[str, float]:
    """Collapse indicators of a batch of embeddings ``z`` ``[B, D]`` (any scale).

    Returns:
        ``std``: mean over dimensions of the per-dimension std of the L2-normalised embeddings
        (0 = collapsed; ≈ 1/√D when spread uniformly over the sphere);
        ``std_norm``: ``std × √D`` (≈ 1 healthy, → 0 collapse, comparable across D);
        ``cos``: mean pairwise cosine similarity over distinct pairs (→ 1 collapse).
    """
    z = F.normalize(z.float(), dim=1)
    b, d = z.shape
    std = float(z.std(dim=0).mean()) if b > 1 else 0.0
    sim = z @ z.T
    cos = float((sim.sum() - sim.diagonal().sum()) / max(b * (b - 1), 1))
    return {"std": std, "std_norm": std * d**0.5, "cos": cos}


def knn_accuracy(
    train_z: Tensor,
    train_y: Tensor,
    test_z: Tensor,
    test_y: Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Weighted cosine kNN top-1 accuracy (DINO-style: votes ``exp(sim / T)`` of the k nearest).

    Args:
        train_z, test_z: ``[N, D]`` embeddings (normalised here).
        train_y, test_y: ``[N]`` integer labels.
        k: neighbours (20, as the official kNN hook).
        temperature: vote temperature T (0.07).
    """
    train_z, test_z = F.normalize(train_z.float(), dim=1), F.normalize(test_z.float(), dim=1)
    k = min(k, len(train_z))
    sims, idx = (test_z @ train_z.T).topk(k, dim=1)
    classes = int(max(train_y.max(), test_y.max())) + 1
    votes = torch.zeros(len(test_z), classes, device=test_z.device)
    votes.scatter_add_(1, train_y[idx], (sims / temperature).exp())
    return float((votes.argmax(1) == test_y).float().mean())


@dataclass
class LabelledImages:
    """The labelled images of a catalog entry, as the kNN probe reads them.

    Attributes:
        name: the entry's name; where: the entry, as errors name it.
        classes: class names (label order).
        paths: per image, its file (``split[index]`` for TorchGeo datasets).
        labels: per image, its label when known without reading it (image folders), else None.
        memory: indices of the kNN memory (the ``train`` split), or of every image when
            ``queries`` is None (the probe then holds out every ``holdout``-th one).
        queries: indices of the queries (the ``val`` split, else ``test``), or None when the
            entry defines no such split.
        query_split: name of the queries' split (``val`` / ``test``), or None.
        load: index → (``[C, H, W]`` float image in raw units, integer label).
    """

    name: str
    where: str
    classes: list[str]
    paths: list[str]
    labels: list[int] | None
    memory: list[int]
    queries: list[int] | None
    query_split: str | None
    load: Callable[[int], tuple[Tensor, int]]


def _not_a_probe(entry: Any, problem: str) -> ConfigError:
    return ConfigError(
        f"setting '{KNN_KEY}'",
        f"entry '{entry.name}' {problem}, so it cannot serve as a kNN probe",
        "name an image_folder entry with one sub-folder per class, or a torchgeo_dataset "
        "entry with task: classification",
    )


def check_probe_entry(entry: Any) -> None:
    """Raise a :class:`ConfigError` naming ``entry`` unless its kind has one class per image:
    an ``image_folder`` entry with class folders, or a ``torchgeo_dataset`` entry whose task
    is ``classification`` (or unset). Reads no file."""
    from geocmid.data.catalog.schema import ImageFolderEntry, TorchGeoDatasetEntry

    if isinstance(entry, ImageFolderEntry):
        if entry.labels == "none":
            raise _not_a_probe(entry, "has no labels ('labels: none')")
        return
    if isinstance(entry, TorchGeoDatasetEntry):
        if entry.task not in (None, "classification"):
            raise _not_a_probe(entry, f"is a {entry.task} dataset (no class per image)")
        return
    raise _not_a_probe(entry, f"is {_a(entry.kind)} entry (no class per image)")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _splits_of(splits: Sequence[str | None]) -> tuple[list[int], list[int] | None, str | None]:
    """(memory, queries, query split) from each image's split: ``train`` vs ``val`` (else
    ``test``) when both are there, else (every image of ``train`` or all, None, None)."""
    given = {s: [i for i, x in enumerate(splits) if x == s] for s in ("train", "val", "test")}
    name = "val" if given["val"] else "test" if given["test"] else None
    if given["train"] and name:
        return given["train"], given[name], name
    return given["train"] or list(range(len(splits))), None, None


def _thin(ids: list[int], labels: list[int] | None, keep: int) -> list[int]:
    """``keep`` of ``ids`` spread evenly: round-robin over the classes when ``labels`` are
    known (every class keeps images), else every n-th; in their original order."""
    if keep >= len(ids):
        return list(ids)
    if labels is None:
        return list(ids[:: -(-len(ids) // keep)])
    seen: dict[int, int] = {}
    ranked = []
    for i in ids:
        seen[labels[i]] = seen.get(labels[i], -1) + 1
        ranked.append((seen[labels[i]], labels[i], i))
    return sorted(i for _, _, i in sorted(ranked)[:keep])


def labelled_images(entry: str, catalog: str | Path | None) -> LabelledImages:
    """The labelled images of catalog entry ``entry`` for a kNN probe.

    * ``image_folder`` with class folders: its images; with ``splits``, ``train`` is the
      memory and ``val`` (else ``test``) the queries;
    * ``torchgeo_dataset`` (task ``classification``): TorchGeo's ``train`` split as memory and
      its ``val`` (else ``test``) split as queries when the class defines them and their files
      are there, else the entry's dataset as given; labels must be one class per image.

    Raises:
        ConfigError: any other kind, or an image folder without labels (names the entry).
    """
    from geocmid.data.catalog import Catalog
    from geocmid.data.catalog.schema import ImageFolderEntry, TorchGeoDatasetEntry

    found = Catalog(catalog).get(entry)
    check_probe_entry(found)
    if isinstance(found, ImageFolderEntry):
        from geocmid.data.chipsets import image_folder_records, read_image

        recs = image_folder_records(found)
        files = [g[0] for g in recs.files]
        labels = recs.labels or []

        def load_file(i: int) -> tuple[Tensor, int]:
            return torch.from_numpy(read_image(files[i]).astype(np.float32)), labels[i]

        memory, queries, name = _splits_of(recs.splits)
        return LabelledImages(
            found.name, found.where, list(recs.classes), [str(f) for f in files], labels,
            memory, queries, name, load_file,
        )  # fmt: skip
    assert isinstance(found, TorchGeoDatasetEntry)
    return _torchgeo_images(found)


def _torchgeo_images(entry: Any) -> LabelledImages:
    from geocmid.data.catalog.validate import torchgeo_dataset_class
    from geocmid.data.datasets.factory import torchgeo_dataset
    from geocmid.datamodules.torchgeo_chips import dataset_splits
    from geocmid.errors import GeocmidError

    available = dataset_splits(torchgeo_dataset_class(entry))
    args = {k: v for k, v in entry.args.items() if k != "split"}
    name = next((s for s in ("val", "test") if s in available), None)
    parts: list[tuple[str | None, Any]] = []
    if "train" in available and name:
        try:
            parts = [("train", torchgeo_dataset(entry, **args, split="train")),
                     (name, torchgeo_dataset(entry, **args, split=name))]  # fmt: skip
        except (GeocmidError, OSError) as error:  # e.g. Million-AID without its test folder
            log.info("%s: no %s split to probe with (%s); a fixed holdout is used instead",
                     entry.where, name, str(error).splitlines()[0])  # fmt: skip
            parts = []
    if not parts:
        parts = [(None, torchgeo_dataset(entry))]
    index = [(p, i) for p, (_, ds) in enumerate(parts) for i in range(len(ds))]
    splits = [parts[p][0] for p, _ in index]
    paths = [f"{parts[p][0] or 'all'}[{i}]" for p, i in index]
    classes = [str(c) for c in (getattr(parts[0][1], "classes", None) or [])]

    def load_sample(k: int) -> tuple[Tensor, int]:
        p, i = index[k]
        sample = parts[p][1][i]
        label = torch.as_tensor(sample["label"])
        if label.numel() != 1:
            raise _not_a_probe(entry, f"has {label.numel()} labels per image (multi-label)")
        image = torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32)
        return image, int(label)

    memory, queries, query_split = _splits_of(splits)
    return LabelledImages(
        entry.name, entry.where, classes, paths, None, memory, queries, query_split, load_sample
    )


class KNNProbe:
    """A small labelled set for a per-epoch kNN probe on teacher GAP features.

    ``query`` marks the queries; the other images are the kNN memory. By default every
    ``holdout``-th image (in dataset order, so every class is represented) is a query. Images
    must already be normalised like the pretraining data and be ``chip_size`` square; they are
    kept in half precision (1,000 RGB images of 224 px: 300 MB).

    Args:
        images: ``[N, C, S, S]`` normalised float images.
        labels: ``[N]`` integer labels.
        k, temperature: kNN parameters (20, 0.07).
        holdout: one query image out of every ``holdout`` (5 → 20 % queries) unless ``query``.
        query: ``[N]`` bool, True for the queries (e.g. an entry's test split).
        paths: per image, its file (or ``split[index]``), for checks.
        name: the entry, as the console line names it.
        num_classes: classes of the entry (chance = 1 / num_classes; default: labels seen).

    Attributes:
        description: what the probe holds, in words (set by :meth:`from_entry`).
    """

    def __init__(
        self, images: Tensor, labels: Tensor, k: int = 20, temperature: float = 0.07,
        holdout: int = 5, query: Tensor | None = None, paths: Sequence[str] | None = None,
        name: str = "", num_classes: int | None = None,
    ) -> None:  # fmt: skip
        where = f"kNN probe on '{name}'" if name else "kNN probe"
        if query is None:
            if len(images) < 2 * holdout:
                raise ConfigError(
                    where, f"needs at least {2 * holdout} labelled images, got {len(images)}"
                )
            query = torch.arange(len(images)) % holdout == 0
        query = torch.as_tensor(query, dtype=torch.bool)
        if len(query) != len(images) or bool(query.all()) or not bool(query.any()):
            raise ConfigError(
                where,
                f"needs memory and query images, got {int((~query).sum())} memory and "
                f"{int(query.sum())} query",
                "use an entry with more labelled images or raise knn_max_images",
            )
        self.images, self.labels = images.half(), labels.long()
        self.k, self.temperature = k, temperature
        self.query = query
        self.paths = list(paths) if paths is not None else None
        self.name = name
        self.num_classes = num_classes or len(self.labels.unique())
        self.description = f"{int((~query).sum())} memory and {int(query.sum())} query images"

    @property
    def chance(self) -> float:
        """Top-1 accuracy of guessing (1 / classes)."""
        return 1.0 / max(self.num_classes, 1)

    @classmethod
    def from_entry(
        cls,
        entry: str,
        catalog: str | Path | None,
        chip_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        max_images: int = 1000,
        **kw: Any,
    ) -> KNNProbe:
        """Load a labelled catalog entry (:func:`labelled_images`), resize to ``chip_size`` and
        normalise.

        With the entry's splits, ``train`` is the memory and ``val`` (else ``test``) the
        queries; without, every ``holdout``-th image is a query. At most ``max_images`` images
        are read, thinned evenly within each split (round-robin over the classes when the
        labels are known without reading the images). ``mean``/``std`` are the pretraining
        data's statistics (raw units): the labelled images must come from the same kind of
        sensor and radiometry.
        """
        source = labelled_images(entry, catalog)
        pools = [source.memory] + ([source.queries] if source.queries is not None else [])
        total = sum(map(len, pools))
        if total > max_images:
            pools = [_thin(p, source.labels, max(1, max_images * len(p) // total)) for p in pools]
        chosen = [i for p in pools for i in p]
        m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        s = torch.tensor(std, dtype=torch.float32)[:, None, None]
        images, labels = [], []
        for i in chosen:
            img, label = source.load(i)
            if img.shape[0] != len(mean):
                raise ConfigError(
                    f"setting '{KNN_KEY}' ({source.where})",
                    f"images have {img.shape[0]} bands, the pretraining data {len(mean)}",
                    "use labelled images of the same bands as the pretraining data",
                )
            img = F.interpolate(
                img[None], size=(chip_size, chip_size), mode="bilinear", antialias=True
            )[0]
            images.append(((img - m) / s).half())
            labels.append(label)
        if len(pools) == 2:
            kw["query"] = torch.arange(len(chosen)) >= len(pools[0])
        probe = cls(
            torch.stack(images), torch.tensor(labels), paths=[source.paths[i] for i in chosen],
            name=source.name, num_classes=len(source.classes) or None, **kw,
        )  # fmt: skip
        n_mem, n_query = int((~probe.query).sum()), int(probe.query.sum())
        if source.query_split:
            text = (f"{n_mem} train images as memory, {n_query} {source.query_split} images as "
                    "queries")  # fmt: skip
        else:
            text = f"no val/test split, 1 image in {kw.get('holdout', 5)} is a query ({n_query})"
        probe.description = f"'{source.name}': {text}, {probe.num_classes} classes" + (
            f" ({len(chosen)} of {total} images)" if len(chosen) < total else ""
        )
        return probe

    @torch.no_grad()
    def accuracy(self, embed: Any, batch_size: int = 64) -> float:
        """Top-1 kNN accuracy of ``embed`` (``[B, C, S, S]`` → ``[B, D]``) on this set."""
        z = torch.cat([embed(x.float()).cpu() for x in self.images.split(batch_size)])
        q = self.query
        return knn_accuracy(z[~q], self.labels[~q], z[q], self.labels[q], self.k, self.temperature)


class HealthMonitor(L.Callback):
    """Per-epoch collapse metrics (and kNN accuracy) logged next to the losses, and a line on
    the console.

    Logs ``health/feat_std``, ``health/feat_std_norm``, ``health/feat_cos`` of the teacher's GAP
    features of the epoch's last batch (view 1, unmasked), and ``health/knn_acc`` with a kNN
    probe; rank 0 prints them as one line, e.g. ``epoch 3/10 health: feature std 0.41 (healthy
    > 0.1), mean cosine 0.23 (healthy < 0.95), kNN top-1 48 % on 'nwpu' (chance 8 %)`` (feature
    std = ``feat_std_norm``, ≈ 1 when spread, → 0 when collapsed). A warning is logged when the
    mean cosine similarity exceeds ``collapse_cos`` or the feature std falls below
    ``collapse_std``.

    Args:
        every_n_epochs: collapse metrics (and kNN) every N epochs (and at the last epoch).
        knn_entry: labelled catalog entry of the same bands for a kNN probe: an image_folder
            with class folders (its train split as memory, val or test as queries when it has
            splits) or a torchgeo_dataset classification entry (loaded when training starts,
            normalised with the pretraining statistics).
        knn_catalog: catalog folder of knn_entry (default: the datamodule's catalog).
        knn_k: kNN neighbours.
        knn_temperature: kNN vote temperature.
        knn_max_images: labelled images used at most.
        collapse_cos: mean-cosine threshold of the collapse warning.
        collapse_std: feature std (std×√D) threshold of the collapse warning.

    Attributes:
        knn: the :class:`KNNProbe` (built from ``knn_entry`` at fit start; may be set directly).
        lines: the console lines printed so far.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        knn_entry: str | None = None,
        knn_catalog: str | None = None,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        knn_max_images: int = 1000,
        collapse_cos: float = 0.95,
        collapse_std: float = 0.1,
    ) -> None:
        self.every = max(1, every_n_epochs)
        self.knn_entry, self.knn_catalog = knn_entry, knn_catalog
        self.knn_k, self.knn_temperature = knn_k, knn_temperature
        self.knn_max_images = knn_max_images
        self.collapse_cos, self.collapse_std = collapse_cos, collapse_std
        self.knn: KNNProbe | None = None
        self.lines: list[str] = []

    def catalog_of(self, datamodule: Any) -> Any:
        """Catalog folder of ``knn_entry``: ``knn_catalog``, else the datamodule's catalog."""
        if self.knn_catalog is not None:
            return self.knn_catalog
        catalog = getattr(datamodule, "catalog", None)
        return getattr(catalog, "folder", catalog)

    def check(self, datamodule: Any) -> None:
        """Fail early (before training) if ``knn_entry`` is missing or holds no class labels
        (:func:`check_probe_entry`; reads no image)."""
        if self.knn_entry is None:
            return
        from geocmid.data.catalog import Catalog

        check_probe_entry(Catalog(self.catalog_of(datamodule)).get(self.knn_entry))

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        """Load the kNN probe (the task's statistics and chip size are known by now)."""
        if self.knn_entry is None or self.knn is not None:
            return
        hp = pl_module.hparams
        catalog = self.catalog_of(trainer.datamodule if trainer is not None else None)
        if hp.get("mean") is None or hp.get("std") is None:
            raise ConfigError(
                f"setting '{KNN_KEY}'",
                "the kNN probe needs the pretraining data's mean and std, and the task has none",
                "set model.init_args.mean and std, or train with a PretrainDataModule",
            )
        self.knn = KNNProbe.from_entry(
            self.knn_entry, catalog, int(hp["chip_size"]), hp["mean"], hp["std"],
            self.knn_max_images, k=self.knn_k, temperature=self.knn_temperature,
        )  # fmt: skip
        if trainer is None or trainer.is_global_zero:
            log.info("kNN probe on %s", self.knn.description)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every and epoch + 1 != trainer.max_epochs:
            return
        views = getattr(pl_module, "last_views", None)
        metrics: dict[str, float] = {}
        health: dict[str, float] | None = None
        if views is not None:
            health = embedding_health(pl_module.teacher_embeddings(views["img"]))
            metrics |= {f"health/feat_{k}": v for k, v in health.items()}
        if self.knn is not None:
            metrics["health/knn_acc"] = self.knn.accuracy(pl_module.teacher_embeddings)
        if not metrics:
            return
        # every rank computes on its own batch; average so all ranks log the same value
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True)
        if not trainer.is_global_zero:
            return
        line = self.line(trainer, health, metrics.get("health/knn_acc"))
        self.lines.append(line)
        log.info("%s", line)
        if health is not None and (
            health["cos"] > self.collapse_cos or health["std_norm"] < self.collapse_std
        ):
            log.warning(
                "epoch %d: teacher embeddings look collapsed (mean cosine %.3f, feature std "
                "%.3f); check the learning rate and the EMA momentum", epoch + 1, health["cos"],
                health["std_norm"],
            )  # fmt: skip

    def line(self, trainer: L.Trainer, health: dict[str, float] | None, knn: float | None) -> str:
        """The console line of an epoch: feature std, mean cosine, kNN top-1 vs chance."""
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        parts = []
        if health is not None:
            parts += [
                f"feature std {health['std_norm']:.2f} (healthy > {self.collapse_std:g})",
                f"mean cosine {health['cos']:.2f} (healthy < {self.collapse_cos:g})",
            ]
        if knn is not None and self.knn is not None:
            on = f" on '{self.knn.name}'" if self.knn.name else ""
            parts.append(f"kNN top-1 {100 * knn:.0f} %{on} (chance {100 * self.knn.chance:.0f} %)")
        return f"epoch {trainer.current_epoch + 1}/{epochs} health: " + ", ".join(parts)


# ------------------------------------------------------------------------------------------------
# reconstruction quick-look
def _display(x: Tensor, rgb: Sequence[int]) -> np.ndarray:
    """``[C, H, W]`` normalised → ``[H, W, 3]`` in 0–1 with a 2–98 % stretch per image."""
    img = x[list(rgb)].float() if x.shape[0] >= 3 else x[:1].float().expand(3, -1, -1)
    lo, hi = torch.quantile(img.flatten(), torch.tensor([0.02, 0.98], device=img.device))
    img = ((img - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return img.permute(1, 2, 0).cpu().numpy()


class QuickLook(L.Callback):
    """Every N epochs, a PNG of input, masked input and reconstruction of a few chips (rank 0).

    Written to ``out_dir/recon_epoch{EPOCH:04d}.png`` (temp name, then renamed).

    Args:
        every_n_epochs: a reconstruction PNG every N epochs (and after the last epoch).
        out_dir: folder of the PNGs (default: the run folder's quicklook/).
        rgb_indices: channels shown as red, green, blue (default: the task's rgb_bands, else the
            first 3, or band 1 as grey).
        max_images: chips per figure (rows).
    """

    def __init__(
        self, every_n_epochs: int = 10, out_dir: str | Path | None = None,
        rgb_indices: list[int] | None = None, max_images: int = 4,
    ) -> None:  # fmt: skip
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.every = max(1, every_n_epochs)
        self.rgb_indices = list(rgb_indices) if rgb_indices else None
        self.rgb = self.rgb_indices or [0, 1, 2]
        self.max_images = max_images
        self.written: list[Path] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        """Resolve the folder (run folder) and the colours (the task's RGB bands)."""
        if self.out_dir is None:
            self.out_dir = Path(trainer.default_root_dir) / "quicklook"
        if self.rgb_indices is None:
            self.rgb = getattr(pl_module, "rgb_indices", None) or [0, 1, 2]

    @torch.no_grad()
    def reconstruct(self, pl_module: Any, views: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """(input, masked input, reconstruction) of view 1, each ``[n, C, S, S]`` on the CPU."""
        model = pl_module.model
        n = min(self.max_images, views["img"].shape[0])
        was_training = model.training
        model.eval()
        try:
            feats = model.student(views["mim_img"][:n], views["mask"][:n])
            rec = model.decoder(feats).float()
        finally:
            model.train(was_training)
        return views["img"][:n].cpu(), views["mim_img"][:n].cpu(), rec.cpu()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        views = getattr(pl_module, "last_views", None)
        due = (epoch + 1) % self.every == 0 or epoch + 1 == trainer.max_epochs
        if not (due and trainer.is_global_zero and views is not None):
            return
        self.written.append(self.write(pl_module, views, epoch))

    def write(self, pl_module: Any, views: dict[str, Tensor], epoch: int) -> Path:
        import matplotlib

        matplotlib.use("Agg")  # no display on training nodes
        import matplotlib.pyplot as plt

        img, masked, rec = self.reconstruct(pl_module, views)
        rgb = [i for i in self.rgb if i < img.shape[1]] if img.shape[1] >= 3 else [0]
        rgb = rgb if len(rgb) == 3 else [0, 1, 2][: min(3, img.shape[1])]
        n = img.shape[0]
        fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
        for row in range(n):
            for col, (title, x) in enumerate(
                (("input", img), ("masked input", masked), ("reconstruction", rec))
            ):
                ax = axes[row][col]
                ax.imshow(_display(x[row], rgb))
                ax.set_axis_off()
                if row == 0:
                    ax.set_title(title, fontsize=9)
        fig.suptitle(f"CMID reconstruction, epoch {epoch + 1}", fontsize=10)
        fig.tight_layout()
        self.out_dir = self.out_dir or Path("quicklook")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"recon_epoch{epoch + 1:04d}.png"
        tmp = path.with_name(path.stem + ".part.png")
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, path)
        return path


# ------------------------------------------------------------------------------------------------
class RankStateDump(L.Callback):
    """Diagnostics for distributed runs: each rank saves what it saw and its method state.

    ``out_dir/rank{R}.pt`` holds ``bounds`` (every chip's bounds, ``[N, ...]``), ``queue``
    (the MoCo key queue) and ``center`` (the DINO centre) at the end of training. Used by the
    DDP tests: ranks must see different chips yet hold identical queue and centre.

    Args:
        out_dir: folder of the dumps (default: the run folder's debug/).
    """

    def __init__(self, out_dir: str | Path | None = None) -> None:
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.bounds: list[Tensor] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.out_dir is None:
            self.out_dir = Path(trainer.default_root_dir) / "debug"

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        if isinstance(batch, dict) and isinstance(batch.get("bounds"), Tensor):
            self.bounds.append(batch["bounds"].detach().cpu())

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        model = pl_module.model
        queue = model.global_loss.queue
        state = {
            "bounds": torch.cat(self.bounds) if self.bounds else torch.empty(0),
            "queue": queue.bank.detach().cpu().clone(),
            "queue_ptr": queue.bank_ptr.detach().cpu().clone(),
            "center": model.local_loss.center.detach().cpu().clone(),
            "world_size": trainer.world_size,
        }
        self.out_dir = self.out_dir or Path(trainer.default_root_dir) / "debug"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank{trainer.global_rank}.pt"
        tmp = path.with_suffix(".part")
        torch.save(state, tmp)
        os.replace(tmp, path)
