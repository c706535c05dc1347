"""A procedural landscape defined as a pure function of map coordinates.

:class:`Landscape` answers "what is at map point (x, y)?" for any points in its CRS: a land-cover
class, a surface material and brightness modifiers. Features are: a meandering river (plus rare
lakes), villages (a street grid with rectangular buildings on lots along the streets, gardens
around them), two main roads crossing the landscape, forests from thresholded fractal noise, and
farmland cut into rectangular fields (each field one crop or a meadow). Because nothing depends on
the window being drawn, adjacent tiles join exactly and any window can be drawn alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import shapely

from geocmid.data.synthetic.noise import fbm, hash01, value_noise
from geocmid.data.synthetic.spectra import CROPLAND, FOREST, GRASSLAND, MAT, URBAN, WATER

# Street grid of the villages (metres, in the rotated village frame).
BLOCK_P, BLOCK_Q, STREET_HALF = 90.0, 72.0, 2.75
ROAD_HALF = 4.0  # main roads
VILLAGE_CELL = 3000.0  # one possible extra village per cell of this size
# Unit vector pointing from the ground towards the sun (azimuth 150°, south-south-east).
SUN = (math.sin(math.radians(150)), math.cos(math.radians(150)))
SHADOW_LENGTH = 3.5  # metres of building shadow on the ground
RIVER_EXACT = 150.0  # river distances are exact below this many metres

CHANGE_KINDS = {1: "new_buildings", 2: "forest_clearing", 3: "flooding"}
# Noise field keys (any distinct integers).
K_LAKE, K_URB, K_URB_EDGE, K_FOR, K_CONIF, K_FINE, K_MID, K_CROWN, K_ILL, K_HAZE, K_AG = range(11)

_CROPS = ("wheat", "barley_ripe", "rapeseed", "beet", "maize_young", "soil", "soil_dark")
_CROP_P = np.cumsum([0.27, 0.18, 0.12, 0.10, 0.17, 0.07, 0.09])
_CROP_IDS = np.array([MAT[c] for c in _CROPS], dtype=np.uint8)
_ROOFS = np.array([MAT["roof_red"], MAT["roof_red"], MAT["roof_grey"], MAT["roof_dark"]], np.uint8)


@dataclass(frozen=True)
class ChangeZone:
    """A planted change between the two dates, in the landscape CRS.

    ``kind``: 1 new buildings (construction on former cropland/grass), 2 forest clearing,
    3 flooding.
    """

    kind: int
    polygon: shapely.Polygon

    @property
    def name(self) -> str:
        return CHANGE_KINDS[self.kind]


class Sample(NamedTuple):
    """What a landscape holds at each sampled point (all arrays of the sample shape)."""

    cls: np.ndarray  # uint8 land-cover class (1…5)
    mat: np.ndarray  # uint8 material id (see spectra.MATERIALS)
    gain: np.ndarray  # float32 brightness factor (texture, illumination)
    shadow: np.ndarray  # bool, in a building's shadow
    haze: np.ndarray  # float32 haze strength (≈0.2–1)
    change: np.ndarray  # uint8 change kind applied here (0 = unchanged)


def _lattice(i: np.ndarray, j: np.ndarray, fn) -> tuple[np.ndarray, ...]:
    """Evaluate ``fn(ii, jj)`` once per lattice node spanned by ``i``, ``j`` and gather per point.

    ``fn`` returns a tuple of arrays over the node grid; per-point values are gathered from them,
    which is far cheaper than evaluating per-node functions (hashes, noise) at every pixel.
    """
    i0, j0 = int(i.min()), int(j.min())
    ni, nj = int(i.max()) - i0 + 1, int(j.max()) - j0 + 1
    ii, jj = np.meshgrid(np.arange(i0, i0 + ni), np.arange(j0, j0 + nj), indexing="ij")
    tables = fn(ii, jj)
    flat = (i - i0) * nj + (j - j0)
    return tuple(t.ravel()[flat] for t in tables)


def _rotate(x, y, origin: tuple[float, float], angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of map points in a frame rotated by ``angle`` (radians) about ``origin``."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - origin[0], y - origin[1]
    return dx * c + dy * s, dy * c - dx * s


@dataclass
class Landscape:
    """A deterministic synthetic landscape around ``center`` (map metres in ``crs``).

    The landscape is unbounded; ``center`` only anchors the features that every scene around it
    should show (a river, a village, a forest within a few hundred metres). Use one Landscape for
    all tiles of a mosaic and for both dates of a change pair.
    """

    seed: int = 0
    center: tuple[float, float] = (500_000.0, 5_000_000.0)
    crs: str = "EPSG:32633"
    params: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 1])
        cx, cy = self.center
        a = float(rng.uniform(-0.5, 0.5)) + (math.pi / 2 if rng.random() < 0.5 else 0.0)
        side = float(rng.choice([-1.0, 1.0]))
        # The river runs near the centre; the village sits on its bank, the forest further out.
        normal = (-math.sin(a), math.cos(a))
        along = float(rng.uniform(-120, 120))
        village = (
            cx + normal[0] * -side * 130 + math.cos(a) * along,
            cy + normal[1] * -side * 130 + math.sin(a) * along,
        )
        fa = float(rng.uniform(0, 2 * math.pi))
        forest = (cx + 380 * math.cos(fa), cy + 380 * math.sin(fa))
        self.params = {
            "river_angle": a,
            "river_offset": side * float(rng.uniform(60, 120)),
            "meanders": [
                (
                    float(rng.uniform(50, 80)),
                    float(rng.uniform(800, 1200)),
                    float(rng.uniform(0, 6.3)),
                ),
                (
                    float(rng.uniform(15, 30)),
                    float(rng.uniform(300, 450)),
                    float(rng.uniform(0, 6.3)),
                ),
                (
                    float(rng.uniform(4, 9)),
                    float(rng.uniform(110, 170)),
                    float(rng.uniform(0, 6.3)),
                ),
            ],
            "river_width": float(rng.uniform(20, 30)),
            "village": village,
            "village_radius": float(rng.uniform(210, 260)),
            "village_angle": a + float(rng.uniform(-0.3, 0.3)),
            "field_angle": a + float(rng.uniform(-0.4, 0.4)),
            "field_block": (float(rng.uniform(230, 300)), float(rng.uniform(150, 210))),
            "forest": forest,
            "road_phase": float(rng.uniform(0, 6.3)),
        }

    # ----------------------------------------------------------------------------- river
    def river_distance(self, x, y) -> np.ndarray:
        """Signed distance (m) from map points to the river bank; negative inside the river.

        Exact (across the river's axis) up to :data:`RIVER_EXACT` metres from the bank; where
        every point is farther, a cheap lower bound (still ≥ RIVER_EXACT) is returned instead, so
        callers must only compare it with thresholds below RIVER_EXACT.
        """
        pr = self.params
        u, v = _rotate(x, y, self.center, pr["river_angle"])
        reach = sum(m[0] for m in pr["meanders"]) + 0.625 * pr["river_width"]
        far = np.abs(v - pr["river_offset"]) - reach
        if far.size and far.min() >= RIVER_EXACT:
            return far
        centre = np.full_like(u, pr["river_offset"])
        for amp, wavelength, phase in pr["meanders"]:
            centre += amp * np.sin(u * (2 * math.pi / wavelength) + phase)
        half = 0.5 * pr["river_width"] * (1.0 + 0.25 * np.sin(u * (2 * math.pi / 700.0) + 1.0))
        return np.abs(v - centre) - half

    def _water(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        bank = self.river_distance(x, y)
        lake = fbm(x, y, 600.0, 3, K_LAKE, self.seed) > 0.62
        return (bank < 0) | lake, bank

    # ----------------------------------------------------------------------------- villages
    def _village_frame(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        return _rotate(x, y, self.params["village"], self.params["village_angle"])

    def urban_field(self, x, y) -> np.ndarray:
        """Urban intensity at map points: > 0.5 is built-up (villages with noisy edges)."""
        vx, vy = self.params["village"]
        radius = self.params["village_radius"]
        bump = np.exp(-((x - vx) ** 2 + (y - vy) ** 2) / radius**2)
        # Extra villages: at most one per VILLAGE_CELL cell, well inside it so that its bump is
        # negligible at the cell edge (keeps the field a function of the own cell only).
        ci, cj = np.floor(x / VILLAGE_CELL), np.floor(y / VILLAGE_CELL)
        ci, cj = np.broadcast_arrays(ci.astype(np.int64), cj.astype(np.int64))

        def villages(ii, jj):
            keep = hash01(ii, jj, 1, seed=self.seed) < 0.55
            px = (ii + 0.27 + 0.46 * hash01(ii, jj, 2, seed=self.seed)) * VILLAGE_CELL
            py = (jj + 0.27 + 0.46 * hash01(ii, jj, 3, seed=self.seed)) * VILLAGE_CELL
            r = np.where(keep, 120 + 100 * hash01(ii, jj, 4, seed=self.seed), 1.0)
            return px, py, r

        px, py, r = _lattice(ci, cj, villages)
        px, py, r = (a.reshape(ci.shape) for a in (px, py, r))
        bump = np.maximum(bump, np.exp(-((x - px) ** 2 + (y - py) ** 2) / r**2))
        edge = 0.5 * fbm(x, y, 1100.0, 2, K_URB, self.seed) + 0.14 * fbm(
            x, y, 90.0, 2, K_URB_EDGE, self.seed
        )
        return (bump + edge).astype(np.float32)

    def _main_roads(self, p, q, margin: float = 0.0) -> np.ndarray:
        """Two main roads through the village (along and across the street grid).

        ``margin`` widens each side of the road (metres), to keep buildings off it.
        """
        ph = self.params["road_phase"]
        p, q = np.broadcast_arrays(p, q)
        out = np.zeros(p.shape, bool)
        half = ROAD_HALF + margin
        # Skip the sines where no point comes near a road (most of a large scene).
        if p.size and np.abs(q - 14.0).min() < 12.0 + half:
            out |= np.abs(q - 14.0 - 12.0 * np.sin(p / 260.0 + ph)) < half
        if p.size and np.abs(p - 30.0).min() < 16.0 + half:
            out |= np.abs(p - 30.0 - 16.0 * np.sin(q / 330.0 + 2 * ph)) < half
        return out

    def _streets(self, p, q) -> np.ndarray:
        """Village street grid with some segments left out (so it is not a perfect lattice)."""
        k = np.rint(p / BLOCK_P).astype(np.int64)
        j = np.rint(q / BLOCK_Q).astype(np.int64)
        bp = np.floor(p / BLOCK_P).astype(np.int64)
        bq = np.floor(q / BLOCK_Q).astype(np.int64)
        near_v = np.abs(p - k * BLOCK_P) < STREET_HALF
        near_h = np.abs(q - j * BLOCK_Q) < STREET_HALF
        out = np.zeros(near_v.shape, bool)
        if near_v.any():
            (keep,) = _lattice(
                k[near_v], bq[near_v], lambda a, b: (hash01(a, b, 5, seed=self.seed) > 0.2,)
            )
            out[near_v] = keep
        if near_h.any():
            (keep,) = _lattice(
                bp[near_h], j[near_h], lambda a, b: (hash01(a, b, 6, seed=self.seed) > 0.2,)
            )
            out[near_h] |= keep
        return out

    # ----------------------------------------------------------------------------- buildings
    def _lots(
        self, ii: np.ndarray, jj: np.ndarray, zones: list[ChangeZone]
    ) -> dict[str, np.ndarray]:
        """Building parameters of lots ``ii = bp*10 + row*5 + col``, ``jj = bq`` (any shapes).

        Returns lot-frame rectangles (``ox``, ``w`` along the street, ``s`` setback, ``d`` depth,
        metres), roof material and gable flag, whether a building stands there (``ok``, first
        date) or is new (``new``, second date), and the rectangle corners in map coordinates.
        """
        seed = self.seed
        bp, rem = np.divmod(ii, 10)
        row, col = np.divmod(rem, 5)
        bq = jj
        h = [hash01(bp, bq, row, col, k, seed=seed) for k in range(8)]
        nlots, btype = self._blocks(bp, bq)
        farm = (btype >= 0.1) & (btype < 0.2)
        width = (BLOCK_P - 2 * STREET_HALF) / nlots
        w = np.where(farm, width * (0.6 + 0.25 * h[0]), np.clip(width * (0.5 + 0.3 * h[0]), 7, 18))
        d = np.where(farm, 14 + 8 * h[1], 8 + 5 * h[1])
        s = 2.0 + 3.0 * h[2]
        ox = 1.0 + (width - w - 2.0) * h[3]
        roof = _ROOFS[np.minimum((h[4] * 4).astype(np.int64), 3)]
        roof = np.where(farm & (h[4] < 0.5), _ROOFS[2], roof)
        gable = ~farm | (h[5] < 0.5)
        present = (col < nlots) & (btype >= 0.1) & (h[6] > np.where(farm, 0.3, 0.12))
        # Rectangle in the village frame, then in map coordinates.
        p_lo = bp * BLOCK_P + STREET_HALF + col * width + ox
        q_lo = np.where(
            row == 0, bq * BLOCK_Q + STREET_HALF + s, (bq + 1) * BLOCK_Q - STREET_HALF - s - d
        )
        pc, qc = p_lo + w / 2, q_lo + d / 2
        a = self.params["village_angle"]
        c, sn = math.cos(a), math.sin(a)
        vx, vy = self.params["village"]
        corners_p = np.stack([p_lo, p_lo + w, p_lo + w, p_lo], -1)
        corners_q = np.stack([q_lo, q_lo, q_lo + d, q_lo + d], -1)
        cx = vx + corners_p * c - corners_q * sn
        cy = vy + corners_p * sn + corners_q * c
        mx, my = vx + pc * c - qc * sn, vy + pc * sn + qc * c
        # Buildings stand where the centre is built-up, and never on water or a main road
        # (checked at the corners, edge midpoints and centre).
        px = np.concatenate([cx, (cx + np.roll(cx, -1, -1)) / 2, mx[..., None]], -1)
        py = np.concatenate([cy, (cy + np.roll(cy, -1, -1)) / 2, my[..., None]], -1)
        wat, bank = self._water(px, py)
        pp, qq = self._village_frame(px, py)
        clear = ~(wat | (bank < 3) | self._main_roads(pp, qq, margin=2.0)).any(-1)
        ok = present & clear & (self.urban_field(mx, my) > 0.5)
        new = np.zeros_like(ok)
        for zone in zones:
            if zone.kind == 1:
                inside = shapely.contains_xy(zone.polygon, cx, cy).all(-1)
                new |= inside & (col < nlots) & (h[7] > 0.15) & clear & ~ok
        return {"nlots": nlots, "ox": ox, "w": w, "s": s, "d": d, "roof": roof, "gable": gable,
                "ok": ok, "new": new, "x": cx, "y": cy}  # fmt: skip

    def _blocks(self, bp: np.ndarray, bq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lots per village block (2 on farm blocks, else 3–5) and the block type draw.

        Block type: < 0.1 park (no buildings), < 0.2 farm (large sheds), else houses.
        """
        btype = hash01(bp, bq, 11, seed=self.seed)
        farm = (btype >= 0.1) & (btype < 0.2)
        nlots = np.where(farm, 2, 3 + np.floor(hash01(bp, bq, 10, seed=self.seed) * 3))
        return nlots.astype(np.int64), btype

    def _buildings(self, p, q, zones: list[ChangeZone]) -> tuple[np.ndarray, ...]:
        """Per point: inside a building (bool), roof material, roof brightness, building shadow."""
        a = self.params["village_angle"]
        c, sn = math.cos(a), math.sin(a)
        # Sun vector in the village frame: the shadow of a building falls away from the sun.
        sun_p, sun_q = SUN[0] * c + SUN[1] * sn, SUN[1] * c - SUN[0] * sn
        p, q = np.broadcast_arrays(p, q)
        results = []
        for dp, dq in ((0.0, 0.0), (SHADOW_LENGTH * sun_p, SHADOW_LENGTH * sun_q)):
            pp, qq = p + dp, q + dq
            bp = np.floor(pp / BLOCK_P).astype(np.int64)
            bq = np.floor(qq / BLOCK_Q).astype(np.int64)
            lp = pp - bp * BLOCK_P - STREET_HALF
            lq = qq - bq * BLOCK_Q
            row = (lq >= BLOCK_Q / 2).astype(np.int64)

            nlots, _ = _lattice(bp, bq, self._blocks)
            width = (BLOCK_P - 2 * STREET_HALF) / nlots.reshape(bp.shape)
            col = np.clip(np.floor(lp / width), 0, nlots.reshape(bp.shape) - 1).astype(np.int64)
            lx = lp - col * width
            ly = np.where(row == 0, lq - STREET_HALF, BLOCK_Q - STREET_HALF - lq)
            keys = ("ox", "w", "s", "d", "ok", "new", "roof", "gable")

            def lot_table(i, j, keys=keys):
                lots = self._lots(i, j, zones)
                return tuple(lots[k] for k in keys)

            vals = _lattice(bp * 10 + row * 5 + col, bq, lot_table)
            v = dict(zip(keys, (t.reshape(bp.shape) for t in vals), strict=True))
            exists = v["ok"] | v["new"] if zones else v["ok"]
            inside = exists & (lx >= v["ox"]) & (lx < v["ox"] + v["w"])
            inside &= (ly >= v["s"]) & (ly < v["s"] + v["d"])
            results.append((inside, v, lx, ly, row))
        (inside, v, lx, ly, row), (shade, *_) = results
        # Gabled roofs: the half facing the sun is brighter. Ridge along the longer side.
        along_p = v["w"] >= v["d"]
        across = np.where(along_p, ly - (v["s"] + v["d"] / 2), lx - (v["ox"] + v["w"] / 2))
        facing = np.where(along_p, np.where(row == 0, 1.0, -1.0) * sun_q, sun_p)
        tilt = np.sign(across) * facing * v["gable"]
        roof_gain = (1.0 + 0.25 * tilt).astype(np.float32)
        return inside, v["roof"].astype(np.uint8), roof_gain, shade & ~inside

    def buildings(
        self, bounds: tuple[float, float, float, float], zones=()
    ) -> dict[str, np.ndarray]:
        """Building rectangles intersecting ``bounds`` (minx, miny, maxx, maxy, landscape CRS).

        Returns ``{"polygons": shapely array, "new": bool array}``; with ``zones`` the second
        date's new buildings are included (``new`` True).
        """
        minx, miny, maxx, maxy = bounds
        xs = np.array([minx, maxx, maxx, minx])
        ys = np.array([miny, miny, maxy, maxy])
        p, q = self._village_frame(xs, ys)
        b0, b1 = int(np.floor(p.min() / BLOCK_P)) - 1, int(np.floor(p.max() / BLOCK_P)) + 1
        q0, q1 = int(np.floor(q.min() / BLOCK_Q)) - 1, int(np.floor(q.max() / BLOCK_Q)) + 1
        ii, jj = np.meshgrid(np.arange(b0 * 10, b1 * 10 + 10), np.arange(q0, q1 + 1), indexing="ij")
        lots = self._lots(ii.ravel(), jj.ravel(), list(zones))
        keep = lots["ok"] | lots["new"]
        polys = shapely.polygons(np.stack([lots["x"][keep], lots["y"][keep]], -1))
        hit = shapely.intersects(polys, shapely.box(*bounds))
        return {"polygons": polys[hit], "new": lots["new"][keep][hit]}

    # ----------------------------------------------------------------------------- farmland
    def _fields(self, x, y) -> tuple[np.ndarray, ...]:
        """Rectangular fields: material, class (cropland/grassland), brightness, hedge flag."""
        seed = self.seed
        fp_size, fq_size = self.params["field_block"]
        angle = self.params["field_angle"]
        fp, fq = _rotate(x, y, self.center, angle)
        bp = np.floor(fp / fp_size).astype(np.int64)
        bq = np.floor(fq / fq_size).astype(np.int64)
        lp, lq = fp - bp * fp_size, fq - bq * fq_size

        def strips(a, b):
            # Blocks are cut into 1–4 parallel fields; 2–3 are the most common.
            u = hash01(a, b, 20, seed=seed)
            n = 1 + (u > 0.15) + (u > 0.55) + (u > 0.85)
            return n, hash01(a, b, 25, seed=seed) < 0.3, hash01(a, b, 26, seed=seed) < 0.35

        nstrip, hedge_blk, track_blk = (t.reshape(bp.shape) for t in _lattice(bp, bq, strips))
        sw = fp_size / nstrip
        s = np.minimum(np.floor(lp / sw), nstrip - 1).astype(np.int64)

        def per_field(ii, jj):
            bpp, ss = np.divmod(ii, 4)
            n = strips(bpp, jj)[0]
            pc = bpp * fp_size + (ss + 0.5) * fp_size / n
            qc = (jj + 0.5) * fq_size
            c, sn = math.cos(angle), math.sin(angle)
            xc, yc = self.center[0] + pc * c - qc * sn, self.center[1] + pc * sn + qc * c
            # Meadows cluster where the agricultural noise is low (wet or hilly ground).
            ag = fbm(xc, yc, 1500.0, 2, K_AG, seed)
            meadow = (ag < -0.1) | (hash01(ii, jj, 22, seed=seed) < 0.15)
            crop = _CROP_IDS[np.searchsorted(_CROP_P, hash01(ii, jj, 21, seed=seed) * _CROP_P[-1])]
            grass = np.where(hash01(ii, jj, 23, seed=seed) < 0.7, MAT["grass"], MAT["grass_dry"])
            mat = np.where(meadow, grass, crop).astype(np.uint8)
            cls = np.where(meadow, GRASSLAND, CROPLAND).astype(np.uint8)
            vigour = (0.9 + 0.2 * hash01(ii, jj, 24, seed=seed)).astype(np.float32)
            return mat, cls, vigour

        mat, cls, vigour = (t.reshape(bp.shape) for t in _lattice(bp * 4 + s, bq, per_field))
        # Machinery leaves streaks along the field; soil and moisture make broad patches.
        streak = value_noise(lp / 12.0, lq, 2.5, K_FINE + 7, seed)
        patch = fbm(x, y, 110.0, 3, K_MID + 7, seed)
        vigour = vigour * (1.0 + 0.05 * streak + 0.12 * patch)
        edge = np.minimum(np.minimum(lp - s * sw, (s + 1) * sw - lp), np.minimum(lq, fq_size - lq))
        mat = np.where(edge < 1.0, np.uint8(MAT["grass_dry"]), mat)
        mat = np.where(track_blk & (lq < 2.5), np.uint8(MAT["gravel"]), mat)
        hedge = hedge_blk & (lp < 4.0)
        return mat, cls, vigour, hedge

    # ----------------------------------------------------------------------------- sampling
    def sample(self, x, y, changes=()) -> Sample:
        """Sample the landscape at map points ``x``, ``y`` (metres, broadcastable arrays).

        Args:
            x, y: map coordinates in the landscape CRS; a ``(1, W)`` row with an ``(H, 1)``
                column (an axis-aligned pixel grid) is fastest.
            changes: :class:`ChangeZone` s to apply (the second date); empty for the first date.
        """
        seed = self.seed
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        shape = np.broadcast_shapes(x.shape, y.shape)
        zones = list(changes)
        water, bank = self._water(x, y)
        p, q = self._village_frame(x, y)
        urb = self.urban_field(x, y)
        urban = urb > 0.5
        roads = self._main_roads(p, q)
        # Buildings and streets only exist in and near villages (or new estates): skip them
        # elsewhere. Building centres must be > 0.5 and the field changes < 0.25 over ~25 m.
        estates = [z for z in zones if z.kind == 1]
        built = bool(estates) or (urb.size > 0 and urb.max() > 0.25)
        streets = self._streets(p, q) & urban if built else np.zeros(shape, bool)
        grid = (np.abs(p - np.rint(p / BLOCK_P) * BLOCK_P) < STREET_HALF) | (
            np.abs(q - np.rint(q / BLOCK_Q) * BLOCK_Q) < STREET_HALF
        )
        if built:
            build, roof, roof_gain, shadow = self._buildings(p, q, zones)
        else:
            build, shadow = np.zeros(shape, bool), np.zeros(shape, bool)
            roof, roof_gain = np.zeros(shape, np.uint8), np.ones(shape, np.float32)
        fx, fy = self.params["forest"]
        forest_bump = np.exp(-((x - fx) ** 2 + (y - fy) ** 2) / 230.0**2)
        riparian = np.where(bank < 100.0, np.exp(-np.clip(bank, 0, 100.0) / 12.0), 0.0)
        forest = fbm(x, y, 520.0, 4, K_FOR, seed) + 0.5 * forest_bump + 0.3 * riparian > 0.28
        conifer = fbm(x, y, 380.0, 2, K_CONIF, seed) > 0.1
        fine = value_noise(x, y, 2.3, K_FINE, seed)
        mid = fbm(x, y, 70.0, 2, K_MID, seed)
        # Tree crowns as a height field, lit from the sun's side (gives a 3-D canopy texture).
        crown = value_noise(x, y, 4.0, K_CROWN, seed)
        lit = crown - value_noise(x + 1.2 * SUN[0], y + 1.2 * SUN[1], 4.0, K_CROWN, seed)
        tree_gain = (0.85 + 0.5 * lit + 0.2 * crown + 0.1 * mid).astype(np.float32)

        mat, cls, vigour, hedge = self._fields(x, y)
        mat = np.broadcast_to(mat, shape).copy()
        cls = np.broadcast_to(cls, shape).copy()
        gain = np.broadcast_to(vigour * (1 + 0.08 * mid), shape).astype(np.float32)
        trees = (forest | hedge) & ~urban
        mat[trees] = np.where(conifer & forest, MAT["conifer"], MAT["deciduous"])[trees]
        cls[trees] = FOREST
        gain[trees] = tree_gain[trees]
        # Gardens: lawns of varying health, shrubs and trees, some paved or bare yards.
        gardens = np.broadcast_to(urban, shape)
        yard = value_noise(x, y, 9.0, K_MID + 11, seed) + 0.3 * fine
        mat[gardens] = np.where(yard > 0.75, MAT["gravel"], np.where(
            yard < -0.4, MAT["grass_dry"], MAT["garden"]))[gardens]  # fmt: skip
        cls[gardens] = GRASSLAND
        gain[gardens] = (0.95 + 0.15 * yard)[gardens]
        garden_trees = gardens & (crown + 0.6 * mid > 0.4)
        mat[garden_trees] = MAT["deciduous"]
        gain[garden_trees] = tree_gain[garden_trees]

        change = np.zeros(shape, np.uint8)
        for zone in zones:
            inside = _inside(zone.polygon, x, y, shape)
            if not inside.any():
                continue
            if zone.kind == 1:  # a new housing estate: graded soil, new streets
                hit = inside & ~water & ~roads
                mat[hit] = np.where(mid > 0.15, MAT["gravel"], MAT["soil"])[hit]
                cls[hit] = URBAN
                streets |= hit & grid
            elif zone.kind == 2:  # clear-cut: bare soil, slash and dry grass
                hit = inside & (cls == FOREST)
                mat[hit] = np.where(fine > 0.0, MAT["soil_dark"], MAT["grass_dry"])[hit]
                cls[hit] = GRASSLAND
                gain[hit] = 1.0
            else:  # flooding of low fields and meadows
                # Water spreads from the bank over low ground, with a ragged edge.
                low = bank < 45.0 + 70.0 * mid
                hit = inside & low & ((cls == CROPLAND) | (cls == GRASSLAND)) & ~build & ~roads
                mat[hit] = MAT["water_turbid"]
                cls[hit] = WATER
            change[hit] = zone.kind

        # Rivers carry silt: blend clear and turbid water with slowly varying noise.
        mat[water] = np.where(mid > 0.2, MAT["water_turbid"], MAT["water"])[water]
        cls[water] = WATER
        gain[water] = (1.0 + 0.2 * mid)[water]
        paved = roads | streets
        mat[paved] = MAT["asphalt"]
        cls[paved] = URBAN
        gain[paved] = 1.0
        mat[build] = roof[build]
        cls[build] = URBAN
        gain[build] = roof_gain[build]
        if zones:
            change[build & (change == 0) & ~self._buildings(p, q, [])[0]] = 1

        gain *= (1.0 + 0.05 * fine) * (1.0 + 0.06 * value_noise(x, y, 6000.0, K_ILL, seed))
        haze = np.broadcast_to(0.6 + 0.4 * value_noise(x, y, 4500.0, K_HAZE, seed), shape)
        return Sample(cls, mat, gain, np.broadcast_to(shadow, shape), haze, change)


def _inside(polygon: shapely.Polygon, x: np.ndarray, y: np.ndarray, shape) -> np.ndarray:
    """Points (broadcast shape) inside ``polygon``, testing only those in its bounding box."""
    out = np.zeros(shape, bool)
    minx, miny, maxx, maxy = polygon.bounds
    if x.ndim == 2 and y.ndim == 2 and x.shape[0] == 1 and y.shape[1] == 1:
        cols = np.flatnonzero((x[0] >= minx) & (x[0] <= maxx))
        rows = np.flatnonzero((y[:, 0] >= miny) & (y[:, 0] <= maxy))
        if cols.size and rows.size:
            sub = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            out[sub] = shapely.contains_xy(polygon, x[:, sub[1]], y[sub[0], :])
        return out
    xb, yb = np.broadcast_arrays(x, y)
    cand = (xb >= minx) & (xb <= maxx) & (yb >= miny) & (yb <= maxy)
    out[cand] = shapely.contains_xy(polygon, xb[cand], yb[cand])
    return out
