"""The raster contract: grid, nodata, COG layout, provenance, seamless blending."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import toymodels

from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene
from geocmid.inference.reader import BlockReader, plan_scenes


def reference(predictor: Predictor, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The model run on the whole scene at once: class index (-1 nodata), probability %."""
    plan = plan_scenes([path], predictor.model_card)
    with BlockReader(plan) as reader:
        data, valid = reader.read(0, plan.grid.height, 0, plan.grid.width)
    x = predictor.normalise(data[0], valid)[None]
    with torch.inference_mode():
        probs = torch.softmax(predictor.model(torch.from_numpy(x)), 1)[0].numpy()
    cls = probs.argmax(0)
    cls[~valid] = -1
    return cls, np.rint(probs * 100)


def run(predictor, path, out, **settings) -> dict[str, Path]:
    options = OutputOptions(probabilities=True, vectors=False, quicklook=False)
    result = predict_scene(
        predictor, [path], out, settings=RunSettings(**settings), options=options, progress=False
    )
    return result.outputs


@pytest.fixture
def per_pixel() -> Predictor:
    return Predictor(toymodels.PerPixel(classes=3, seed=3), toymodels.card(classes=3))


def test_output_grid_nodata_and_cog(per_pixel, smooth_scene, tmp_path):
    outputs = run(per_pixel, smooth_scene, tmp_path / "out", window=64, overlap=16, block_size=96)
    with rasterio.open(smooth_scene) as src, rasterio.open(outputs["classes"]) as out:
        assert out.crs == src.crs
        assert out.transform == src.transform
        assert (out.width, out.height) == (src.width, src.height)
        assert out.nodata == 255 and out.dtypes[0] == "uint8"
        cls = out.read(1)
        nodata_in = ~src.read_masks(1).astype(bool)
        assert ((cls == 255) == nodata_in).all()  # nodata in ⇔ nodata out
        # COG: tiled, compressed, overviews, colour table, class names and provenance.
        assert out.profile["tiled"] and out.compression.name.lower() == "deflate"
        assert out.overviews(1) == []  # scene smaller than one 512 px tile: COG needs none
        assert out.colormap(1)[1][:3] == (230, 25, 75)
        names = json.loads(out.tags(1)["CLASS_NAMES"])
        assert names == {"0": "class0", "1": "class1", "2": "class2"}
        tags = out.tags()
        assert json.loads(tags["GEOCMID_MODEL_CARD"])["name"] == "toy"
        assert "GEOCMID_VERSION" in tags and "window" in tags["GEOCMID_CONFIG"]
    with rasterio.open(outputs["probabilities"]) as prob:
        assert prob.count == 3 and prob.nodata == 255 and prob.scales == (0.01,) * 3
        assert prob.transform == src.transform
        p = prob.read().astype(int)
        assert (p[:, ~nodata_in].sum(0) >= 97).all() and (p[:, nodata_in] == 255).all()
    assert not list((tmp_path / "out").glob(".*"))  # no temporaries or work folder left


@pytest.mark.parametrize(
    ("window", "overlap", "block_size", "tta"),
    [(64, 0, 64, "none"), (64, 16, 100, "none"), (96, 48, 1000, "flips"), (128, 32, 150, "d4")],
)
def test_seamless_per_pixel_model_equals_whole_scene(
    per_pixel, smooth_scene, tmp_path, window, overlap, block_size, tta
):
    """A per-pixel model gives the whole-scene result for any window, overlap, block, TTA."""
    cls_ref, pct_ref = reference(per_pixel, smooth_scene)
    outputs = run(
        per_pixel,
        smooth_scene,
        tmp_path,
        window=window,
        overlap=overlap,
        block_size=block_size,
        tta=tta,
    )
    with rasterio.open(outputs["classes"]) as out, rasterio.open(outputs["probabilities"]) as pr:
        cls, pct = out.read(1).astype(int), pr.read().astype(int)
    cls[cls == 255] = -1
    np.testing.assert_array_equal(cls, cls_ref)
    valid = cls_ref >= 0
    assert np.abs(pct[:, valid] - pct_ref[:, valid]).max() <= 1


def test_context_model_does_not_depend_on_block_size(smooth_scene, tmp_path):
    """With a 3x3 CNN the window layout is global: block size changes nothing but float order."""
    predictor = Predictor(toymodels.TinyCNN(seed=1), toymodels.card())
    a = run(predictor, smooth_scene, tmp_path / "a", window=64, overlap=16, block_size=64)
    b = run(predictor, smooth_scene, tmp_path / "b", window=64, overlap=16, block_size=4096)
    with rasterio.open(a["classes"]) as ra, rasterio.open(b["classes"]) as rb:
        assert (ra.read(1) != rb.read(1)).mean() <= 1e-4
    with rasterio.open(a["probabilities"]) as ra, rasterio.open(b["probabilities"]) as rb:
        assert np.abs(ra.read().astype(int) - rb.read().astype(int)).max() <= 1


def test_channels_last_and_bf16_give_the_fp32_map(smooth_scene, tmp_path):
    """Channels-last is a layout, not a model change: the same classes as the NCHW run, float
    noise only; bf16 autocast keeps float32 probabilities that agree to a few percent. A mixed
    precision is part of the resume key, so it never mixes with fp32 blocks."""
    from geocmid.errors import ConfigError

    model, card = toymodels.TinyCNN(seed=1), toymodels.card()
    nchw = Predictor(model, card, channels_last=False)
    assert next(nchw.model.parameters()).is_contiguous()
    a = run(nchw, smooth_scene, tmp_path / "a", window=64, overlap=16)
    cl = Predictor(toymodels.TinyCNN(seed=1), card)  # the default
    weight = next(p for p in cl.model.parameters() if p.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    b = run(cl, smooth_scene, tmp_path / "b", window=64, overlap=16)
    bf16 = Predictor(toymodels.TinyCNN(seed=1), card, precision="bf16-mixed")
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    probs = bf16.dense_probabilities(x)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-5)
    fp32 = cl.dense_probabilities(x)
    assert 0 < np.abs(probs - fp32).max() < 0.05  # bf16 did run (its rounding shows)
    c = run(bf16, smooth_scene, tmp_path / "c", window=64, overlap=16)
    with rasterio.open(a["classes"]) as ra, rasterio.open(b["classes"]) as rb:
        assert (ra.read(1) != rb.read(1)).mean() <= 1e-4
    with rasterio.open(a["classes"]) as ra, rasterio.open(c["classes"]) as rc:
        assert (ra.read(1) != rc.read(1)).mean() <= 0.02
    with rasterio.open(c["classes"]) as rc:
        assert json.loads(rc.tags()["GEOCMID_CONFIG"])["precision"] == "bf16-mixed"
    with rasterio.open(a["classes"]) as ra:
        assert "precision" not in json.loads(ra.tags()["GEOCMID_CONFIG"])  # fp32: key unchanged
    with pytest.raises(ConfigError, match="16-mixed needs a CUDA device"):
        Predictor(model, card, precision="16-mixed")
    with pytest.raises(ConfigError, match="not a precision"):
        Predictor(model, card, precision="fp8")
    if not torch.cuda.is_available():  # a device this machine lacks: one line, not a traceback
        with pytest.raises(ConfigError, match="no usable CUDA GPU"):
            Predictor(model, card, device="cuda")
