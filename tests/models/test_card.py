"""One model card for exports, fine-tuned checkpoints and prediction: layouts, versions, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geocmid.data.catalog import schema
from geocmid.data.classes import DEFAULT_COLORS, ClassInfo
from geocmid.errors import ConfigError, ModelError
from geocmid.inference import card as inference_card
from geocmid.models.card import CARD_FORMAT, ModelCard

#: geocmid-backbone/1, as `geocmid export` wrote it before geocmid-card/2.
BACKBONE_V1 = {
    "format": "geocmid-backbone/1", "architecture": "swin_tiny_patch4_window7_224",
    "family": "swin", "in_chans": 3, "chip_size": 64, "out_channels": 768, "stride": 32,
    "geocmid_version": "0.1.0", "backbone": "swin_tiny", "bands": ["r", "g", "b"],
    "rgb_bands": ["r", "g", "b"], "gsd": 10.0,
    "weights": "student backbone (timm layout, keys prefixed 'model.')",
    "normalisation": {"mean": [100.0, 110.0, 120.0], "std": [30.0, 31.0, 32.0]},
    "pretraining": {"method": "CMID", "data": "rgb", "epochs": 2, "steps": 2},
}  # fmt: skip
#: geocmid-task/1, as FinetuneMixin.model_card writes it into fine-tuned checkpoints.
TASK_V1 = {
    "format": "geocmid-task/1", "task": "segmentation", "model": "unet", "backbone": "resnet18",
    "in_chans": 3, "bands": ["red", "green", "blue"], "mean": [1.0, 2.0, 3.0],
    "std": [4.0, 5.0, 6.0], "chip_size": 64,
    "classes": [{"value": 0, "name": "background", "color": "#000000"},
                {"value": 1, "name": "building", "color": "#e31a1c"}],
    "num_classes": 2, "ignore_index": 255, "init_weights": "exports/r18.safetensors",
}  # fmt: skip


def full_card() -> ModelCard:
    return ModelCard.from_dict(
        {
            "format": CARD_FORMAT,
            "task": "segmentation",
            "architecture": "resnet18",
            "family": "resnet",
            "model": "unet",
            "in_chans": 4,
            "bands": ["blue", "green", "red", "nir"],
            "mean": [1.0, 2.0, 3.0, 4.0],
            "std": [5.0, 6.0, 7.0, 8.0],
            "chip_size": 128,
            "gsd": 0.6,
            "stride": 32,
            "out_channels": 512,
            "ignore_index": 255,
            "init_weights": "random",
            "classes": [
                {"value": 0, "name": "background", "color": "#000000"},
                {"value": 3, "name": "tree", "color": [0, 128, 0]},
                {"value": 7, "name": "glass", "color": "#ff00ff80"},
            ],
            "pretraining": {"method": "CMID", "data": "naip", "epochs": 200},
            "geocmid_version": "0.1.0",
            "licence": "CC-BY-4.0",
        }
    )


def test_round_trip_through_dict_and_file(tmp_path: Path) -> None:
    card = full_card()
    assert card.num_classes == 3 and card.classes[1].color == (0, 128, 0, 255)
    assert card.classes[2].color == (255, 0, 255, 128) and card.extra == {"licence": "CC-BY-4.0"}
    data = card.to_dict()
    assert data["format"] == "geocmid-card/2" and data["licence"] == "CC-BY-4.0"
    assert data["classes"][1] == {"value": 3, "name": "tree", "color": "#008000"}
    assert data["num_classes"] == 3 and data["mean"] == [1.0, 2.0, 3.0, 4.0]
    assert ModelCard.from_dict(json.loads(json.dumps(data))) == card
    path = card.to_file(tmp_path / "sub" / "card.json")
    assert ModelCard.from_file(path) == card and not list(path.parent.glob("*.part"))
    assert json.loads(path.read_text()) == data


def test_backbone_v1_layout_loads() -> None:
    card = ModelCard.from_dict(BACKBONE_V1, where="old.json")
    assert card.format == CARD_FORMAT and card.task == "backbone" and card.classes == ()
    assert card.architecture == "swin_tiny_patch4_window7_224" and card.family == "swin"
    assert card.mean == (100.0, 110.0, 120.0) and card.std == (30.0, 31.0, 32.0)
    assert (card.chip_size, card.gsd, card.stride, card.out_channels) == (64, 10.0, 32, 768)
    assert card.pretraining["epochs"] == 2 and card.geocmid_version == "0.1.0"
    # the short name and the old key-layout note are not carried over; other keys are
    assert card.extra == {"rgb_bands": ["r", "g", "b"]}
    assert "normalisation" not in card.to_dict()


def test_task_v1_layout_loads() -> None:
    card = ModelCard.from_dict(TASK_V1)
    assert card.task == "segmentation" and card.model == "unet"
    assert card.architecture == "resnet18" and card.in_chans == 3
    assert card.bands == ("red", "green", "blue") and card.std == (4.0, 5.0, 6.0)
    assert [(c.value, c.name, c.color) for c in card.classes] == [
        (0, "background", (0, 0, 0, 255)),
        (1, "building", (0xE3, 0x1A, 0x1C, 255)),
    ]
    assert card.ignore_index == 255 and card.init_weights == "exports/r18.safetensors"
    assert card.extra == {}
    # a task card whose classes were not recorded: num_classes alone names them class_k
    bare = ModelCard.from_dict({**TASK_V1, "classes": [], "num_classes": 3})
    assert [c.name for c in bare.classes] == ["class_0", "class_1", "class_2"]


def test_minimal_prediction_cards() -> None:
    """What `geocmid predict --card` has always accepted keeps working."""
    card = ModelCard.from_dict({"mean": [0, 0], "std": [1, 1], "classes": ["bg", "tree"]})
    assert card.task is None and card.in_chans == 2 and card.bands == (1, 2)
    assert [(c.value, c.name) for c in card.classes] == [(0, "bg"), (1, "tree")]
    # colours not given: the one default palette, by class position
    assert [c.hex for c in card.classes] == list(DEFAULT_COLORS[:2])
    assert card.classes[1].color == (230, 25, 75, 255)
    named = ModelCard.from_dict(
        {
            "name": "toy",
            "bands": ["red", "nir"],
            "in_chans": 2,
            "mean": [0, 0],
            "std": [1, 1],
            "classes": [
                {"value": 5, "name": "a", "color": [1, 2, 3]},
                {"value": 9, "name": "b", "color": "#0a0b0c"},
            ],
        }
    )
    assert named.classes[0].color == (1, 2, 3, 255) and named.classes[1].rgb == (10, 11, 12)
    assert named.extra == {"name": "toy"} and named.bands == ("red", "nir")


def test_newer_format_is_refused_clearly() -> None:
    with pytest.raises(ModelError, match="'geocmid-card/3', written by a newer geocmid") as info:
        ModelCard.from_dict({**TASK_V1, "format": "geocmid-card/3"}, where="m.json")
    assert info.value.where == "m.json: key 'format'" and "upgrade geocmid" in str(info.value)
    with pytest.raises(ModelError, match="newer geocmid"):
        ModelCard.from_dict({**BACKBONE_V1, "format": "geocmid-backbone/2"})
    with pytest.raises(ConfigError, match="'timm/1' is not a geocmid model card format"):
        ModelCard.from_dict({**TASK_V1, "format": "timm/1"})


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        ({"std": [1.0, 0.0, 1.0]}, "std", "contains a value <= 0"),
        ({"mean": [1.0, 2.0]}, "mean", "has 2 entries but in_chans is 3"),
        ({"mean": ["a", 1, 2]}, "mean", "holds 'a', not a number"),
        ({"bands": ["r", "g"]}, "bands", "has 2 entries but in_chans is 3"),
        ({"bands": "rgb"}, "bands", "is not a list"),
        ({"bands": [0, 1, 2]}, "bands", "neither a band name nor an index"),
        ({"in_chans": 2.5}, "in_chans", "not a whole number"),
        ({"gsd": -1}, "gsd", "is -1.0"),
        ({"chip_size": 0}, "chip_size", "is 0"),
        ({"task": "segmentaton"}, "task", "did you mean 'segmentation'"),
        ({"num_classes": 3}, "num_classes", "is 3 but 'classes' lists 2"),
        ({"classes": "building"}, "classes", "is not a list"),
        (
            {"classes": [{"value": 1, "name": "a"}, {"value": 1, "name": "b"}]},
            "classes",
            "repeats a class value",
        ),
        ({"classes": [], "num_classes": None}, "classes", "is missing or empty"),
        ({"normalisation": {"mean": [9.0, 9.0, 9.0]}}, "normalisation.mean", "differs"),
        ({"pretraining": [1]}, "pretraining", "is not a mapping"),
    ],
)
def test_a_bad_key_is_named(change: dict, key: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        ModelCard.from_dict({**TASK_V1, **change}, where="card.json")
    assert info.value.where == f"card.json: key '{key}'"


def test_bad_colour_names_the_class() -> None:
    classes = [{"value": 0, "name": "a", "color": "red"}]
    with pytest.raises(ConfigError, match="colour 'red' is not understood") as info:
        ModelCard.from_dict({**TASK_V1, "classes": classes, "num_classes": 1}, where="c.json")
    assert info.value.where == "c.json: classes[0]"


def test_backbone_cards_need_no_classes_or_statistics() -> None:
    card = ModelCard.from_dict({"task": "backbone", "architecture": "resnet18", "in_chans": 13})
    assert card.bands == tuple(range(1, 14)) and card.mean == () and card.classes == ()
    with pytest.raises(ConfigError, match="'mean': is missing"):
        ModelCard.from_dict({"task": "segmentation", "in_chans": 3, "classes": ["a"]})


def test_one_class_table_and_one_palette() -> None:
    assert inference_card.ClassInfo is ClassInfo and schema.ClassInfo is ClassInfo
    assert inference_card.ModelCard is ModelCard and schema.DEFAULT_COLORS is DEFAULT_COLORS
    assert not hasattr(inference_card, "_PALETTE")
    # catalog colours are '#rrggbb' in YAML; stored as RGBA, '#rrggbb' through .hex
    c = ClassInfo(1, "water", "#1f78b4")
    assert c.color == (0x1F, 0x78, 0xB4, 255) and c.rgb == (0x1F, 0x78, 0xB4)
    assert c.hex == "#1f78b4" and c == ClassInfo(1, "water", (0x1F, 0x78, 0xB4, 255))
    assert c.to_dict() == {"value": 1, "name": "water", "color": "#1f78b4"}
    with pytest.raises(ConfigError, match="class 'x'"):
        ClassInfo(0, "x", "#12345")


def test_dict_style_reads_and_timm_arguments() -> None:
    card = ModelCard.from_dict(BACKBONE_V1)
    assert card["architecture"] == card.architecture and card.get("nothing", 3) == 3
    assert card["bands"] == ["r", "g", "b"] and "gsd" in card
    kwargs = card.timm_kwargs("w.safetensors")
    assert kwargs == {
        "model_name": "swin_tiny_patch4_window7_224",
        "pretrained": True,
        "num_classes": 0,
        "pretrained_cfg_overlay": {
            "file": "w.safetensors",
            "num_classes": 0,
            "input_size": (3, 64, 64),
        },
    }
