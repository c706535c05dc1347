"""Deliberate miswirings of CMID, each applied alone to a scratch copy: are they caught?

Copies geocmid/ and tests/ of this checkout to a temporary folder (the checkout is never touched),
then for each break: edit the copy, run the wiring tests there, restore the file. Prints one line
per break and the count caught (issue #13). Not collected by pytest; run it by hand::

    .venv/bin/python tests/cmid/wiring_breaks.py [TEST_FILES...]
"""

import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = Path(tempfile.gettempdir()) / f"wiring-breaks-{os.getpid()}"
M, V, L = "geocmid/cmid/model.py", "geocmid/cmid/views.py", "geocmid/cmid/losses.py"
BREAKS = [
    (
        "teacher fed the masked view-1 copy",
        M,
        "g1 = self.teacher(x1)",
        'g1 = self.teacher(batch["mim_img"])',
    ),
    (
        "teacher fed the masked view-2 copy",
        M,
        "g2 = self.teacher(x2)",
        'g2 = self.teacher(batch["view_mim_img"])',
    ),
    (
        "student sees the unmasked view 2 (authors' bug §9.2, model side)",
        M,
        'f2 = self.student(batch["view_mim_img"], m2)',
        "f2 = self.student(x2, m2)",
    ),
    (
        "student sees the unmasked view 1",
        M,
        'f1 = self.student(batch["mim_img"], m1)',
        "f1 = self.student(x1, m1)",
    ),
    (
        "view-2 masked copy is the unmasked view (authors' bug §9.2, transform side)",
        V,
        'out[f"{prefix}mim_img"] = mean_fill(img, pix, v)',
        'out[f"{prefix}mim_img"] = img if augment else mean_fill(img, pix, v)',
    ),
    (
        "student gets the other view's mask",
        M,
        'f1 = self.student(batch["mim_img"], m1)',
        'f1 = self.student(batch["mim_img"], m2)',
    ),
    (
        "MIM target of view 1 from view 2",
        M,
        "self.decoder(f1), x1, upsample_mask(m1, ts)",
        "self.decoder(f1), x2, upsample_mask(m1, ts)",
    ),
    (
        "MIM loss of view 1 on view 2's mask",
        M,
        "self.decoder(f1), x1, upsample_mask(m1, ts)",
        "self.decoder(f1), x1, upsample_mask(m2, ts)",
    ),
    (
        "correspondence grids swapped",
        M,
        's1_idx, t2_idx = position_match(batch["grid"], batch["view_grid"], self.num_matches)',
        's1_idx, t2_idx = position_match(batch["view_grid"], batch["grid"], self.num_matches)',
    ),
    (
        "grid ignores the crop offset",
        V,
        "    ys = top[..., None] + frac * h[..., None]  # [..., n]",
        "    ys = frac * h[..., None]  # [..., n]",
    ),
    (
        "grid ignores the flip",
        V,
        "xs_frac = torch.where(flip_t[..., None], 1.0 - frac, frac)",
        "xs_frac = frac.expand(*flip_t.shape, -1)",
    ),
    (
        "grid offsets as fractions (authors' bug §9.1)",
        V,
        "    top, left, h, w = box.unbind(-1)\n    flip_t",
        "    top, left, h, w = box.unbind(-1)\n    top, left = top / 1e3, left / 1e3\n    flip_t",
    ),
    (
        "image not flipped although the flag says so",
        V,
        "sign = 1.0 - 2.0 * flips.to(device=x.device, dtype=torch.float32)",
        "sign = torch.ones_like(flips, dtype=torch.float32, device=x.device)",
    ),
    (
        "photometric augmentation on view 1 instead of view 2",
        V,
        'for prefix, augment in (("", False), ("view_", True)):',
        'for prefix, augment in (("", True), ("view_", False)):',
    ),
    (
        "dense student output paired with the wrong teacher view",
        M,
        "teacher_a = self.teacher_local_head(gather_tokens(g2, t2_idx))",
        "teacher_a = self.teacher_local_head(gather_tokens(g1, t2_idx))",
    ),
    (
        "dense student/teacher cell indices swapped",
        M,
        "student_a = self.local_head(gather_tokens(f1, s1_idx))",
        "student_a = self.local_head(gather_tokens(f1, t2_idx))",
    ),
    (
        "global loss pairs q1 with k1 (same view)",
        L,
        "infonce(q1, k2, negatives, self.temperature)",
        "infonce(q1, k1, negatives, self.temperature)",
    ),
    (
        "queue filled with student embeddings",
        L,
        "self.queue(torch.cat([k2, k1]).detach().float(), update=True)",
        "self.queue(torch.cat([q2, q1]).detach().float(), update=True)",
    ),
]


def run(tests: list[str]) -> tuple[int, str]:
    """pytest in this process; geocmid and the tests are re-imported from the copy each time."""
    import pytest

    for mod in [
        m
        for m, v in list(sys.modules.items())
        if m.startswith(("geocmid", "tests", "conftest", "test_"))
        or str(getattr(v, "__file__", "") or "").startswith(str(ROOT))
    ]:
        del sys.modules[mod]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = pytest.main(["-q", "-x", "-p", "no:cacheprovider", *tests])
    return int(rc), buf.getvalue()


def main() -> int:
    tests = sys.argv[1:] or ["tests/cmid/test_wiring.py"]
    for part in ("geocmid", "tests", "pyproject.toml"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, ROOT / part)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    rc, out = run(tests)
    print("baseline (no break):", "pass" if rc == 0 else "FAIL", flush=True)
    if rc:
        return 1
    caught = 0
    for name, path, old, new in BREAKS:
        f = ROOT / path
        src = f.read_text()
        assert src.count(old) == 1, (name, src.count(old))
        f.write_text(src.replace(old, new))
        t0 = time.time()
        try:
            rc, out = run(tests)
        finally:
            f.write_text(src)
        failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
        caught += rc != 0
        first = failed[0] if failed else out.strip().splitlines()[-1]
        verdict = "CAUGHT" if rc else "MISSED"
        print(f"{verdict} | {name} | {first} | {time.time() - t0:.0f}s", flush=True)
    print(f"{caught}/{len(BREAKS)} caught")
    shutil.rmtree(ROOT, ignore_errors=True)
    return 0 if caught == len(BREAKS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
