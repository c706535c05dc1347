"""Bad input gets one clear error; the predict command end to end."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import rasterio
import torch
import toymodels

from geocmid.errors import DataError, GeocmidError, ModelError
from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene

FAST = RunSettings(window=64, overlap=16, block_size=128)
NO_EXTRAS = OutputOptions(vectors=False, quicklook=False)


def test_model_bands_differ_from_image_bands(smooth_scene, tmp_path):
    predictor = Predictor(toymodels.PerPixel(in_chans=4), toymodels.card(in_chans=4))
    with pytest.raises(ModelError, match="expects 4 band"):
        predict_scene(predictor, [smooth_scene], tmp_path, progress=False)


def test_model_classes_differ_from_card(smooth_scene, tmp_path):
    predictor = Predictor(toymodels.PerPixel(classes=3), toymodels.card(classes=2))
    with pytest.raises(ModelError, match="3 classes but the model card lists 2"):
        predict_scene(
            predictor,
            [smooth_scene],
            tmp_path / "o",
            settings=FAST,
            options=NO_EXTRAS,
            progress=False,
        )


def test_unwritable_output_folder(smooth_scene, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    predictor = Predictor(toymodels.PerPixel(), toymodels.card())
    with pytest.raises(DataError, match="not a writable folder"):
        predict_scene(predictor, [smooth_scene], blocker / "out", progress=False)


def test_existing_output_is_refused_unless_overwrite(smooth_scene, tmp_path):
    predictor = Predictor(toymodels.PerPixel(), toymodels.card())
    run = dict(settings=FAST, options=NO_EXTRAS, progress=False)
    predict_scene(predictor, [smooth_scene], tmp_path, **run)
    with pytest.raises(DataError, match="already exists") as info:
        predict_scene(predictor, [smooth_scene], tmp_path, **run)
    assert "--overwrite" in info.value.fix
    predict_scene(predictor, [smooth_scene], tmp_path, overwrite=True, **run)


def test_missing_input(tmp_path):
    predictor = Predictor(toymodels.PerPixel(), toymodels.card())
    with pytest.raises(DataError, match="file not found"):
        predict_scene(predictor, [tmp_path / "nope.tif"], tmp_path, progress=False)


def _parser() -> argparse.ArgumentParser:
    from geocmid.cli.predict import register

    parser = argparse.ArgumentParser(prog="geocmid")
    register(parser.add_subparsers())
    return parser


def test_cli_predicts_with_a_torchscript_model(smooth_scene, tmp_path, capsys):
    model = torch.jit.script(toymodels.PerPixel())
    model.save(str(tmp_path / "model.pt"))
    (tmp_path / "card.json").write_text(json.dumps(toymodels.card()))
    args = _parser().parse_args(
        ["predict", str(smooth_scene), "-o", str(tmp_path / "out"), "--model",
         str(tmp_path / "model.pt"), "--card", str(tmp_path / "card.json"), "--window", "64",
         "--overlap", "16", "--probabilities", "--no-progress"]
    )  # fmt: skip
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "scene_classes.tif" in printed and "scene.gpkg" in printed
    with rasterio.open(tmp_path / "out" / "scene_classes.tif") as ds:
        classes = ds.read(1)
        assert set(np.unique(classes).tolist()) <= {0, 1, ds.nodata}
        assert (classes != ds.nodata).sum() == 310 * 230 - 20 * 30, (
            "only the nodata corner is empty"
        )
    summary = json.loads((tmp_path / "out" / "scene_summary.json").read_text())
    assert sum(c["pixels"] for c in summary["classes"]) == 310 * 230 - 20 * 30
    assert summary["settings"]["precision"] == "32-true"
    # Lightning's short precision names are accepted
    for short, full in (("bf16", "bf16-mixed"), ("32", "32-true"), ("16", "16-mixed")):
        argv = ["predict", "x.tif", "-o", "out", "--model", "m.pt", "--precision", short]
        parsed = _parser().parse_args(argv)
        assert parsed.precision == full


def test_cli_errors_are_geocmid_errors(smooth_scene, tmp_path):
    (tmp_path / "card.json").write_text(json.dumps(toymodels.card(in_chans=5)))
    args = _parser().parse_args(
        ["predict", str(smooth_scene), "-o", str(tmp_path), "--card", str(tmp_path / "card.json"),
         "--model", "toymodels:per_pixel_factory"]
    )  # fmt: skip
    with pytest.raises(GeocmidError, match="expects 5 band"):
        args.func(args)
    args = _parser().parse_args(
        ["predict", str(smooth_scene), "-o", str(tmp_path), "--card", str(tmp_path / "card.json"),
         "--model", "missing.pt"]
    )  # fmt: skip
    with pytest.raises(ModelError, match="does not exist"):
        args.func(args)


def test_cli_registered_in_main_when_listed(smooth_scene, tmp_path, capsys):
    from geocmid import cli

    if "predict" not in cli.COMMAND_MODULES:
        pytest.skip("predict is not yet listed in geocmid.cli.COMMAND_MODULES")
    (tmp_path / "card.json").write_text(json.dumps(toymodels.card(in_chans=5)))
    code = cli.main(
        ["predict", str(smooth_scene), "-o", str(tmp_path), "--card", str(tmp_path / "card.json"),
         "--model", "toymodels:per_pixel_factory"]
    )  # fmt: skip
    assert code != 0 and "expects 5 band" in capsys.readouterr().err


def test_xarray_input_and_output(smooth_scene, tmp_path):
    import rioxarray

    from geocmid.inference import predict

    da = rioxarray.open_rasterio(smooth_scene, masked=False).load()
    predictor = Predictor(toymodels.PerPixel(), toymodels.card())
    result = predict(predictor, da, window=64, overlap=16, progress=False)  # no output folder
    assert result.classes.rio.crs == da.rio.crs
    assert result.classes.rio.transform() == da.rio.transform()
    assert result.classes.shape == da.shape[1:]
    assert int(result.classes.values[0, 0]) == 255  # nodata corner carried through
    assert np.isin(np.unique(result.classes.values), [0, 1, 255]).all()
