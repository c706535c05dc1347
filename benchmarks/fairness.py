"""Shared rules of the benchmarks in this folder: alternate, repeat, report medians with spread.

Every comparison runs its paths in one process, in rounds; each round runs every path once, in
an order that rotates from round to round (so no path always runs first, after a warm cache or
on a quieter machine). Figures are medians with the interquartile range and min–max of the
rounds, plus the median of the per-round ratios (each ratio compares two runs a few seconds
apart, so slow drifts of a shared machine's load cancel). The 1/5/15-minute load average is
printed with every table: on a machine that is busy the absolute figures mean little.

Memory: :func:`rss_mib` is the resident set now, :func:`reset_peak` / :func:`peak_mib` use
Linux's ``/proc/self/clear_refs`` (write ``5``: reset ``VmHWM``) so that a peak is measured
from a chosen moment (after imports) rather than over the whole process life.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def load_average() -> str:
    """``"load 7.71 / 7.98 / 5.70 (1/5/15 min) on 2 CPUs"``."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles (``statistics.quantiles``, inclusive method), min, max and count."""
    v = sorted(values)
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1 = q3 = v[0]
    return {
        "median": statistics.median(v), "q1": q1, "q3": q3, "min": v[0], "max": v[-1], "n": len(v),
    }  # fmt: skip


def fmt(s: dict[str, float], digits: int = 3) -> str:
    """``"1.234 [IQR 1.2–1.3, min–max 1.1–1.4, n=5]"``."""
    d = digits
    return (
        f"{s['median']:.{d}f} [IQR {s['q1']:.{d}f}–{s['q3']:.{d}f}, "
        f"min–max {s['min']:.{d}f}–{s['max']:.{d}f}, n={s['n']}]"
    )


def alternate(
    paths: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each path per round, paths alternated (rotating order), warm-up rounds dropped.

    Args:
        paths: name → zero-argument callable doing one unit of work.
        rounds: timed rounds.
        warmup: untimed rounds first (same rotation).
        sync: called before reading the clock (e.g. ``torch.cuda.synchronize``).

    Returns:
        name → ``rounds`` durations in seconds, in round order (index ``i`` of two paths ran in
        the same round).
    """
    names = list(paths)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if sync:
                sync()
            t0 = time.perf_counter()
            paths[name]()
            if sync:
                sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Spread of the per-round ratios ``numerator[i] / denominator[i]``."""
    return spread([a / b for a, b in zip(numerator, denominator, strict=True)])


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {key} (Linux only)")
    return int(match.group(1)) / 1024


def rss_mib() -> float:
    """Resident set size now, MiB (Linux ``VmRSS``)."""
    return _status("VmRSS")


def reset_peak() -> None:
    """Reset the peak resident set (``VmHWM``) to the current RSS (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mib() -> float:
    """Peak resident set since the last :func:`reset_peak` (or process start), MiB."""
    return _status("VmHWM")
