"""Image trees: discovery, skipping unreadable files, clear errors, seeded stratified splits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import DataError, scan, split


def _tree(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), i * 5 % 256, np.uint8)).save(
                root / name / f"{i}.png"
            )
    return root


def test_scan_finds_classes_in_sorted_order_and_ignores_other_files(tmp_path):
    root = _tree(tmp_path, {"b": 3, "a": 4})
    (root / "a" / "notes.txt").write_text("not an image")
    tree = scan(root)
    assert tree.classes == ["a", "b"]
    assert tree.counts() == {"a": 4, "b": 3}
    assert tree.skipped == []


def test_unreadable_images_are_skipped_counted_and_logged(tmp_path, caplog):
    root = _tree(tmp_path, {"a": 3, "b": 3})
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "b" / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        tree = scan(root)
    assert sorted(tree.skipped) == ["a/broken.jpg", "b/empty.png"]
    assert tree.counts() == {"a": 3, "b": 3}
    assert "broken.jpg" in caplog.text and "skipped 2 unreadable" in caplog.text


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "missing", "is not a directory"),
        (lambda root: root, "has no class folders"),
        (
            lambda root: _tree(root, {"a": 3}) and (root / "empty").mkdir() or root,
            "has no readable images",
        ),
    ],
    ids=["missing-root", "empty-root", "empty-class"],
)
def test_bad_trees_fail_clearly(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        scan(make(tmp_path))


def test_split_is_stratified_disjoint_and_seeded(tmp_path):
    tree = scan(_tree(tmp_path, {"a": 20, "b": 40}))
    parts = split(tree, val=0.15, test=0.15, seed=3)
    assert split(tree, val=0.15, test=0.15, seed=3) == parts
    assert split(tree, val=0.15, test=0.15, seed=4) != parts
    every = [s for name in ("train", "val", "test") for s in parts[name]]
    assert sorted(every) == sorted(tree.samples)
    assert tree.counts(parts["test"]) == {"a": 3, "b": 6}
    assert tree.counts(parts["val"]) == {"a": 3, "b": 6}


def test_split_rejects_tiny_classes_and_bad_fractions(tmp_path):
    tree = scan(_tree(tmp_path, {"a": 2, "b": 5}))
    with pytest.raises(DataError, match="at least 3"):
        split(tree)
    with pytest.raises(DataError, match="fractions"):
        split(scan(_tree(tmp_path / "x", {"a": 5})), val=0.6, test=0.5)
