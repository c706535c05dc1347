"""`catalog validate` checks align_with masks against the grid their imagery is read on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from geocmid.cli import main
from tests.data.test_sources import write_mixed_resolution_scene
from tests.rasters import smooth_field, write_entry

LABELS = "kind: raster_labels\npaths: ../{mask}\nclasses: {{1: a, 2: b}}\nalign_with: {ref}\n"


def validate(capsys, catalog: Path, name: str) -> tuple[int, str]:
    code = main(["--catalog", str(catalog), "catalog", "validate", name])
    out = capsys.readouterr()
    return code, out.out + out.err


def write_mask(folder: Path, name: str, shape: tuple[int, int]) -> None:
    Image.fromarray(np.ones(shape, np.uint8)).save(folder / name)


def test_masks_are_checked_against_the_finest_band_grid(tmp_path: Path, capsys) -> None:
    """Band files listed coarsest first (B01 at 30 m): a mask the size of the 10 m grid that
    training reads validates; one the size of B01, which training would misplace, does not."""
    scene = write_mixed_resolution_scene(tmp_path)
    h, w = scene.shape
    write_mask(tmp_path, "fine.png", (h, w))
    write_mask(tmp_path, "coarse.png", (h // 3, w // 3))
    (scene.catalog / "fine.yaml").write_text(LABELS.format(mask="fine.png", ref="s2"))
    (scene.catalog / "coarse.yaml").write_text(LABELS.format(mask="coarse.png", ref="s2"))

    code, out = validate(capsys, scene.catalog, "fine")
    assert code == 0, out

    code, out = validate(capsys, scene.catalog, "coarse")
    assert code == 2 and "Traceback" not in out
    for fragment in (
        "coarse.png",
        f"is {w // 3}x{h // 3} pixels",
        f"'s2' is read on a {w}x{h}-pixel grid",
        "10 m pixels, the resolution of its finest band file",
        "fix:",
        f"make the mask {w}x{h} pixels",
        "set 'res' in 's2'",
    ):
        assert fragment in out, f"{fragment!r} missing from: {out}"


def test_masks_follow_the_entry_res(tmp_path: Path, capsys) -> None:
    """With ``res: 20`` the entry is read on a 20 m grid: masks must be that size."""
    scene = write_mixed_resolution_scene(tmp_path)
    h, w = scene.shape
    write_mask(tmp_path, "m20.png", (h // 2, w // 2))
    write_mask(tmp_path, "m10.png", (h, w))
    (scene.catalog / "m20.yaml").write_text(LABELS.format(mask="m20.png", ref="s2-20m"))
    (scene.catalog / "m10.yaml").write_text(LABELS.format(mask="m10.png", ref="s2-20m"))
    assert validate(capsys, scene.catalog, "m20")[0] == 0
    code, out = validate(capsys, scene.catalog, "m10")
    assert code == 2
    assert f"'s2-20m' is read on a {w // 2}x{h // 2}-pixel grid" in out
    assert "20 m pixels, the resolution of its 'res'" in out


def test_bitemporal_dates_with_assign_crs(tmp_path: Path, capsys) -> None:
    """Files without a CRS, supplied by the entries' ``assign_crs``: the overlap check reads them
    in that CRS, as training does (it used to fail with a traceback)."""
    for name in ("a", "b"):
        with rasterio.open(
            tmp_path / f"{name}.tif", "w", driver="GTiff", width=32, height=32, count=3,
            dtype="uint16", transform=from_origin(500_000.0, 5_000_000.0, 10.0, 10.0),
        ) as dst:  # fmt: skip
            dst.write(smooth_field((32, 32)))
        write_entry(
            tmp_path / "cat",
            name,
            f"kind: imagery\npaths: ../{name}.tif\nbands: 3\nassign_crs: EPSG:32633\n",
        )
    write_entry(tmp_path / "cat", "pair", "kind: bitemporal\nbefore: a\nafter: b\n")
    code, out = validate(capsys, tmp_path / "cat", "pair")
    assert code == 0 and "ok      pair" in out, out
