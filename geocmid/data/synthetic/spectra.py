"""Land-cover classes, surface materials and their reflectance spectra.

Spectra are surface reflectance (0–1) at the centre wavelengths of the 13 Sentinel-2 bands,
hand-set from typical library values (water dark in the NIR and SWIR, vegetation with a red edge
and a bright NIR plateau, soils and roofs rising towards the SWIR). Any other band is linearly
interpolated from them by its centre wavelength.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Land-cover classes of the label rasters and vectors (0 = unlabelled / nodata).
CLASSES: dict[int, tuple[str, str]] = {
    1: ("water", "#1f78b4"),
    2: ("forest", "#33a02c"),
    3: ("cropland", "#ffd92f"),
    4: ("grassland", "#b2df8a"),
    5: ("urban", "#e31a1c"),
}
UNLABELLED, WATER, FOREST, CROPLAND, GRASSLAND, URBAN = 0, 1, 2, 3, 4, 5

#: Centre wavelengths (nm) of the spectral nodes: the 13 Sentinel-2 bands B01…B12 (with B8A).
NODES_NM = np.array([443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1375, 1610, 2190], float)

#: Sentinel-2 band names in file order, used when ``bands`` is the integer 13.
SENTINEL2_BANDS = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip

#: Band name → centre wavelength in nm (case-insensitive lookup).
BAND_WAVELENGTHS: dict[str, float] = {
    "coastal": 443, "blue": 490, "green": 560, "red": 665, "rededge1": 705, "rededge2": 740,
    "rededge3": 783, "nir": 842, "nir08": 865, "narrow_nir": 865, "water_vapour": 945,
    "cirrus": 1375, "swir1": 1610, "swir16": 1610, "swir2": 2190, "swir22": 2190, "pan": 600,
    **{name.lower(): float(nm) for name, nm in zip(SENTINEL2_BANDS, NODES_NM, strict=True)},
}  # fmt: skip

# Material name → reflectance at NODES_NM. Row order defines the material ids (0 = nodata).
_SPECTRA: dict[str, Sequence[float]] = {
    "nodata":        [0] * 13,
    "water":         [.046, .040, .042, .024, .018, .013, .011, .009, .008, .005, .001, .004, .003],
    "water_turbid":  [.052, .054, .070, .052, .062, .042, .036, .030, .028, .015, .001, .010, .006],
    "deciduous":     [.025, .030, .062, .032, .095, .250, .320, .350, .360, .250, .003, .170, .080],
    "conifer":       [.018, .021, .042, .022, .062, .160, .210, .235, .240, .170, .003, .110, .050],
    "grass":         [.034, .040, .082, .052, .125, .280, .330, .360, .370, .270, .003, .220, .120],
    "grass_dry":     [.052, .062, .092, .095, .140, .220, .250, .270, .280, .210, .004, .290, .190],
    "wheat":         [.030, .036, .072, .042, .112, .300, .380, .410, .420, .300, .003, .200, .100],
    "barley_ripe":   [.050, .066, .112, .135, .170, .250, .280, .300, .310, .240, .004, .330, .230],
    "rapeseed":      [.028, .034, .076, .040, .120, .330, .420, .460, .470, .340, .003, .210, .100],
    "beet":          [.024, .029, .066, .030, .100, .320, .430, .480, .490, .350, .003, .190, .090],
    "maize_young":   [.058, .066, .094, .110, .140, .210, .250, .280, .290, .230, .004, .280, .210],
    "soil":          [.050, .066, .105, .150, .170, .190, .210, .230, .240, .200, .005, .320, .260],
    "soil_dark":     [.034, .043, .066, .092, .115, .130, .140, .150, .160, .130, .004, .220, .170],
    "roof_red":      [.070, .076, .092, .215, .250, .270, .280, .290, .292, .260, .005, .330, .280],
    "roof_grey":     [.130, .140, .150, .160, .165, .170, .175, .180, .182, .170, .005, .220, .200],
    "roof_dark":     [.058, .064, .070, .075, .078, .080, .082, .085, .086, .080, .003, .100, .090],
    "asphalt":       [.058, .066, .078, .088, .092, .096, .100, .104, .106, .098, .004, .120, .110],
    "gravel":        [.120, .140, .170, .195, .235, .245, .255, .265, .270, .250, .006, .300, .270],
    "sand":          [.120, .140, .180, .220, .240, .255, .265, .280, .285, .260, .006, .380, .320],
    "garden":        [.036, .044, .080, .058, .120, .250, .290, .315, .320, .240, .003, .210, .120],
}  # fmt: skip

MATERIALS: tuple[str, ...] = tuple(_SPECTRA)
#: Material name → material id (index into :data:`MATERIALS`).
MAT: dict[str, int] = {name: i for i, name in enumerate(MATERIALS)}
_SPECTRA_TABLE = np.array(list(_SPECTRA.values()), dtype=np.float64)

#: Additive path radiance (haze) at NODES_NM, as reflectance: strong in the blue, none in SWIR.
_HAZE = np.array(
    [0.045, 0.035, 0.022, 0.012, 0.010, 0.008, 0.007, 0.005, 0.005, 0.004, 0.0, 0.001, 0.0]
)
#: Fraction of direct light that still reaches a shadowed surface (skylight is bluish).
_SHADOW = np.array([0.62, 0.55, 0.45, 0.38, 0.36, 0.34, 0.33, 0.32, 0.32, 0.32, 0.5, 0.30, 0.30])


def resolve_bands(bands: Sequence[str] | int) -> tuple[tuple[str, ...], np.ndarray]:
    """Return band names and their centre wavelengths (nm).

    Args:
        bands: band names (``"blue"``, ``"nir"``, ``"B8A"``, ``"swir1"`` …, or ``"nm<wavelength>"``
            such as ``"nm550"``), or an integer: 3 (RGB), 4 (blue, green, red, nir) or 13
            (Sentinel-2 B01…B12).
    """
    if isinstance(bands, int):
        presets = {3: ("red", "green", "blue"), 4: ("blue", "green", "red", "nir")}
        presets[13] = SENTINEL2_BANDS
        if bands not in presets:
            raise ValueError(f"bands={bands}: give band names, or 3, 4 or 13")
        bands = presets[bands]
    names = tuple(str(b) for b in bands)
    wavelengths = []
    for name in names:
        key = name.lower()
        if key.startswith("nm") and key[2:].replace(".", "", 1).isdigit():
            wavelengths.append(float(key[2:]))
        elif key in BAND_WAVELENGTHS:
            wavelengths.append(float(BAND_WAVELENGTHS[key]))
        else:
            known = ", ".join(sorted(BAND_WAVELENGTHS))
            raise ValueError(f"unknown band {name!r}: use one of {known} or 'nm<wavelength>'")
    return names, np.array(wavelengths)


def _interp(table: np.ndarray, wavelengths: np.ndarray) -> np.ndarray:
    """Interpolate node values (last axis over NODES_NM) at ``wavelengths`` (nm)."""
    table = np.atleast_2d(table)
    return np.stack([np.interp(wavelengths, NODES_NM, row) for row in table])


def band_tables(wavelengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-band tables for band centres ``wavelengths`` (nm).

    Returns spectra ``(n_materials, n_bands)``, haze ``(n_bands,)`` and shadow ``(n_bands,)``.
    """
    spectra = _interp(_SPECTRA_TABLE, wavelengths).astype(np.float32)
    haze = _interp(_HAZE, wavelengths)[0].astype(np.float32)
    shadow = _interp(_SHADOW, wavelengths)[0].astype(np.float32)
    return spectra, haze, shadow
