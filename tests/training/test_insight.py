"""``python -m training insight`` on a copy of the committed bundle: it adds the top patches and
their hashes to meta.json, and touches nothing else (the model files are links to the committed
ones, so a rewrite would show)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from service.bundle.checks import verify_files
from service.bundle.format import read_meta
from service.insight.patches import TopPatchIndex
from training.__main__ import main

MODEL_FILES = ("model.onnx", "model.int8.onnx", "model.pt2")
LINKED = (*MODEL_FILES, "one_pass.onnx", "open_set")  # what insight never writes
LIMIT = 40


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def bundle_copy(default_bundle: Path, tmp_path: Path) -> Path:
    """The default bundle with its insight data, the model files linked, not copied."""
    copy = tmp_path / "celebs8"
    copy.mkdir()
    for name in LINKED:
        (copy / name).symlink_to(default_bundle / name)
    for name in ("meta.json", "split.json", "report", "insight"):
        source = default_bundle / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy / name)
    return copy


def test_insight_updates_meta_and_nothing_else(bundle_copy, default_bundle, celebs_root, capsys):
    before = json.loads((bundle_copy / "meta.json").read_text())
    model_hashes = {name: _sha256(bundle_copy / name) for name in MODEL_FILES}

    code = main(
        [
            "insight",
            "--bundle",
            str(bundle_copy),
            "--data",
            str(celebs_root),
            "--limit",
            str(LIMIT),
            "--layers",
            "stem,layer2",
            "--per-channel",
            "4",
            "--threads",
            "2",
        ]
    )

    assert code == 0
    assert "meta.json updated" in capsys.readouterr().out
    meta = json.loads((bundle_copy / "meta.json").read_text())
    assert meta["insight"]["layers"] == ["stem", "layer2"]
    assert (
        meta["insight"]["per_channel"],
        meta["insight"]["images"],
        meta["insight"]["split"],
    ) == (4, LIMIT, "train")
    assert {k: v for k, v in meta.items() if k not in ("files", "insight")} == {
        k: v for k, v in before.items() if k not in ("files", "insight")
    }
    insight_files = sorted(name for name in meta["files"] if name.startswith("insight/"))
    assert insight_files == [
        "insight/top_patches.json",
        "insight/top_patches_layer2.jpg",
        "insight/top_patches_stem.png",
    ]
    assert {k: v for k, v in meta["files"].items() if not k.startswith("insight/")} == {
        k: v for k, v in before["files"].items() if not k.startswith("insight/")
    }
    verify_files(bundle_copy, read_meta(bundle_copy))  # every listed file has its sha256
    assert sorted(p.name for p in (bundle_copy / "insight").iterdir()) == [
        name.split("/")[1] for name in insight_files
    ]
    # the model files were not rewritten, and nothing was left behind
    for name in MODEL_FILES:
        assert (bundle_copy / name).is_symlink() and _sha256(bundle_copy / name) == model_hashes[
            name
        ]
        assert meta["files"][name] == before["files"][name]
    assert sorted(p.name for p in bundle_copy.iterdir()) == sorted(
        ["insight", "meta.json", "split.json", "report", *LINKED]
    )


def test_patches_come_from_the_training_images_used(bundle_copy, celebs_root):
    main(
        [
            "insight",
            "--bundle",
            str(bundle_copy),
            "--data",
            str(celebs_root),
            "--limit",
            str(LIMIT),
            "--layers",
            "layer1",
            "--per-channel",
            "3",
            "--threads",
            "2",
        ]
    )

    index = TopPatchIndex.model_validate_json(
        (bundle_copy / "insight" / "top_patches.json").read_text()
    )
    split = json.loads((bundle_copy / "split.json").read_text())["splits"]
    used = {rel for rel, _ in split["train"][:LIMIT]}
    found = {patch.image for channel in index.layers["layer1"].channels for patch in channel}
    assert found <= used and len(found) > 3
    assert (
        index.images == LIMIT
        and index.model_sha256
        == json.loads((bundle_copy / "meta.json").read_text())["files"]["model.pt2"]["sha256"]
    )
    assert all(len(channel) == 3 for channel in index.layers["layer1"].channels)


def test_an_unknown_layer_fails_listing_the_layers_and_changes_nothing(
    bundle_copy, celebs_root, caplog
):
    before = (bundle_copy / "meta.json").read_bytes()

    code = main(
        ["insight", "--bundle", str(bundle_copy), "--data", str(celebs_root), "--layers", "stem,fc"]
    )

    assert code == 2
    assert "stem, layer1, layer2, layer3, layer4, layer5" in caplog.text
    assert (bundle_copy / "meta.json").read_bytes() == before
