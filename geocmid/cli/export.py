"""``geocmid export``: the student backbone of a CMID checkpoint as safetensors + a model card.

The weights file holds the plain timm state dict of the backbone (the keys of
``timm.create_model(arch, num_classes=0)``), so timm, TorchGeo and smp load it as is. The card
(:class:`geocmid.models.card.ModelCard`, format ``geocmid-card/2``; JSON next to the weights, also
embedded in the safetensors header) records the architecture, band count and names,
normalisation mean/std (raw units), chip size, GSD, the pretraining data and epochs, and the
geocmid version. Files are written under temporary names and renamed, so an interrupted export
leaves nothing under the final names.
"""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  geocmid export runs/cmid/checkpoints/last.ckpt exports/resnet50-naip
      → exports/resnet50-naip.safetensors + exports/resnet50-naip.json
  geocmid export last.ckpt backbone.safetensors --backbone resnet50 --overwrite

Loading the weights elsewhere (keys are timm's; N bands, chip S px, both in the card):
  from geocmid.models.weights import load_backbone
  backbone, card = load_backbone("exports/resnet50-naip.safetensors")
  timm.create_model("resnet50", pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(
      file="exports/resnet50-naip.safetensors", num_classes=0, input_size=(N, S, S)))
"""


def register(subparsers: Any) -> None:
    from geocmid.cli import HelpFormatter

    parser = subparsers.add_parser(
        "export",
        help="export the pretrained student backbone (safetensors + model card)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", help="CMID pretraining checkpoint (.ckpt)")
    parser.add_argument("out", help="output NAME or NAME.safetensors (NAME.json is the card)")
    parser.add_argument("--backbone", help="refuse unless the checkpoint holds this backbone")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from geocmid.workflows.export import export

    weights, card = export(args.checkpoint, args.out, args.overwrite, args.backbone)
    print(f"wrote {weights}\nwrote {card}")
    return 0
