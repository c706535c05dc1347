"""``geocmid catalog``: list, show, validate and compute statistics of catalog entries."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  geocmid catalog list
  geocmid catalog show demo-2020
  geocmid catalog validate                 # every entry
  geocmid catalog validate my-entry.yaml   # one file, before adding it to the catalog
  geocmid catalog stats demo-2020          # per-band mean/std/percentiles for normalisation
  geocmid catalog download ucmerced        # fetch a public dataset (the only network access)

The catalog folder is data_catalog/ unless --catalog or GEOCMID_CATALOG says otherwise:
  geocmid --catalog demo/catalog catalog list
"""


def register(subparsers: Any) -> None:
    from geocmid.cli import HelpFormatter

    parser = subparsers.add_parser(
        "catalog",
        help="list, inspect, validate and summarise data catalog entries",
        description="Data catalog entries describe one data source each (YAML files).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="entries with their kind and description").set_defaults(
        func=cmd_list
    )
    show = sub.add_parser(
        "show", help="files, CRS, resolution, bounds, bands, dtype, nodata, dates"
    )
    show.add_argument("name", help="entry name or YAML file")
    show.set_defaults(func=cmd_show)
    val = sub.add_parser("validate", help="check entries against their files (all when no NAME)")
    val.add_argument("name", nargs="?", help="entry name or YAML file")
    val.set_defaults(func=cmd_validate)
    download = sub.add_parser(
        "download", help="download a torchgeo_dataset entry's files (network, on request only)"
    )
    download.add_argument("name", help="torchgeo_dataset entry name")
    download.set_defaults(func=cmd_download)
    stats = sub.add_parser("stats", help="estimate per-band statistics and store them")
    stats.add_argument("name", help="imagery entry name")
    stats.set_defaults(func=cmd_stats)


def cmd_list(args: argparse.Namespace) -> int:
    from geocmid.data.catalog import Catalog

    catalog = Catalog(args.catalog)
    names = catalog.names()
    if not names:
        print(f"no entries in {catalog.folder}")
        return 0
    width = max(len(n) for n in names)
    for name in names:
        entry = catalog.get(name)
        print(f"{name:<{width}}  {entry.kind:<14} {entry.description}")
    return 0


def _fmt_bounds(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


def describe(entry: Any, catalog: Any) -> list[str]:
    """Human-readable lines summarising a validated entry."""
    import shapely

    from geocmid.data.catalog import validate
    from geocmid.data.rasters import crs_label

    report = validate(entry, catalog)
    lines = [
        f"{entry.name} ({entry.kind})" + (f": {entry.description}" if entry.description else "")
    ]
    if report.rasters:
        infos = report.rasters
        crs = {crs_label(i.crs) for i in infos}
        res = {(round(i.res[0], 6), round(i.res[1], 6)) for i in infos}
        footprint = shapely.union_all([shapely.box(*i.bounds) for i in infos]).bounds
        lines += [
            f"  files:      {len(infos)}",
            f"  CRS:        {', '.join(sorted(crs))}",
            f"  resolution: {', '.join(str(r) for r in sorted(res))}",
            f"  bounds:     {_fmt_bounds(footprint)}  (native CRS of the first file)",
            f"  size:       {', '.join(sorted({f'{i.width}x{i.height}' for i in infos}))} px",
            f"  dtype:      {', '.join(sorted({i.dtype for i in infos}))}",
            f"  nodata:     {', '.join(sorted({str(i.nodata) for i in infos}))}",
        ]
    if getattr(entry, "bands", None):
        lines.append(f"  bands:      {', '.join(entry.bands)}")
    if getattr(entry, "date", None) or getattr(entry, "date_pattern", None):
        lines.append(f"  date:       {entry.date or 'from file names: ' + entry.date_pattern}")
    if getattr(entry, "classes", None):
        names = [f"{c.value}={c.name}" if hasattr(c, "value") else c for c in entry.classes]
        lines.append(f"  classes:    {', '.join(names)}")
    for info in report.vector_info:
        lines.append(
            f"  vector:     {info['path']} ({info['features']} features, {info['geometry_type']}, "
            f"{info['crs']}, bounds {_fmt_bounds(info['total_bounds'])})"
        )
    if report.image_counts:
        total = sum(report.image_counts.values())
        lines.append(f"  images:     {total} in {len(report.image_counts)} classes")
        lines += [f"    {c}: {n}" for c, n in report.image_counts.items()]
    if getattr(entry, "referenced_entries", None) and entry.referenced_entries():
        lines.append(f"  refers to:  {', '.join(entry.referenced_entries())}")
    if getattr(entry, "dataset", None):
        lines.append(f"  dataset:    torchgeo.datasets.{entry.dataset}({entry.args or ''})")
        lines.append(f"  root:       {entry.root_path}")
    if getattr(entry, "stats", None):
        lines.append(f"  stats mean: {', '.join(f'{v:.4g}' for v in entry.stats['mean'])}")
    return lines


def cmd_show(args: argparse.Namespace) -> int:
    from geocmid.data.catalog import Catalog

    catalog = Catalog(args.catalog)
    print("\n".join(describe(catalog.get(args.name), catalog)))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from geocmid.data.catalog import Catalog, validate
    from geocmid.errors import GeocmidError

    catalog = Catalog(args.catalog)
    names = [args.name] if args.name else catalog.names()
    failures = 0
    for name in names:
        try:
            entry = catalog.get(name)
            catalog.check_references(entry)
            validate(entry, catalog)
            print(f"ok      {entry.name}")
        except GeocmidError as error:
            if args.name:
                raise
            failures += 1
            print(f"FAILED  {name}\n  {error.format()}")
    if failures:
        print(f"{failures} of {len(names)} entries failed validation")
        return 2
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from geocmid.data.catalog import Catalog, ImageryEntry, validate
    from geocmid.data.stats import compute_stats, write_stats

    catalog = Catalog(args.catalog)
    entry = catalog.get_kind(args.name, ImageryEntry)
    validate(entry, catalog)  # band count, georeferencing, readable files: as training checks
    stats = compute_stats(entry)
    path = catalog.stats_path(entry.name)
    write_stats(stats, path)
    print(f"{'band':<10} {'mean':>12} {'std':>12} {'p2':>12} {'p98':>12}")
    for i, band in enumerate(stats["bands"]):
        print(
            f"{band:<10} {stats['mean'][i]:>12.5g} {stats['std'][i]:>12.5g} "
            f"{stats['p2'][i]:>12.5g} {stats['p98'][i]:>12.5g}"
        )
    print(f"sampled {stats['pixels_sampled']} valid pixels; stored in {path}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from geocmid.data.catalog import Catalog, TorchGeoDatasetEntry
    from geocmid.data.datasets.factory import torchgeo_dataset

    catalog = Catalog(args.catalog)
    entry = catalog.get_kind(args.name, TorchGeoDatasetEntry)
    print(f"downloading {entry.dataset} into {entry.root_path} (TorchGeo checks the checksums)")
    dataset = torchgeo_dataset(entry, download=True)
    print(f"done: {len(dataset)} samples")
    return 0
