"""Write a model bundle (see models/README.md): ONNX graph, torch.export twin, split, meta.json.

The bundle is assembled in a temporary directory beside the target and renamed into place, so a
reader never sees half a bundle. Before that, the ONNX graph must reproduce the PyTorch logits on
the given images (max abs difference <= ``PARITY_TOLERANCE``, identical argmax) or export fails.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from service.bundle.checks import sha256_of
from service.bundle.format import (
    DEFAULT_PARITY_TOLERANCE,
    EMBEDDING_OUTPUT,
    META_FILE,
    ONNX_FILE,
    SCHEMA_VERSION,
    TWIN_FILE,
    BundleMeta,
)
from training.model import FaceClassifier, WithEmbedding
from training.preprocess import Preprocessing

log = logging.getLogger(__name__)

ONNX_OPSET = 17


class ParityError(RuntimeError):
    """ONNX and PyTorch disagree beyond the tolerance."""


class Twin(nn.Module):
    """The differentiable twin's forward: ``(logits, {layer: activation, "embedding": (N, D)})``:
    every stage's activation and the embedding the open-set score reads (the ONNX graph's
    ``embedding`` output), so gradient methods can explain that score too."""

    def __init__(self, model: FaceClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        logits, activations, embedding = self.model.forward_with_embedding(x)
        return logits, {**activations, EMBEDDING_OUTPUT: embedding}


def display_name(class_id: str) -> str:
    """``tom_hanks`` -> ``Tom Hanks``."""
    return " ".join(part.capitalize() for part in class_id.replace("-", "_").split("_") if part)


def export_onnx(model: FaceClassifier, example: torch.Tensor, path: Path) -> None:
    """The served graph: outputs ``logits`` and ``embedding`` (for the open-set score)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic that is constant here
        torch.onnx.export(
            WithEmbedding(model),
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits", EMBEDDING_OUTPUT],
            dynamic_axes={
                "input": {0: "batch"},
                "logits": {0: "batch"},
                EMBEDDING_OUTPUT: {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def export_twin(model: FaceClassifier, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(Twin(model), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def onnx_logits(path: Path, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [
            session.run(["logits"], {"input": inputs[i : i + batch_size]})[0]
            for i in range(0, len(inputs), batch_size)
        ]
    )


@torch.no_grad()
def check_parity(onnx_path: Path, model: nn.Module, inputs: torch.Tensor) -> dict:
    """Compare ONNX Runtime with PyTorch on ``inputs`` (N, 3, H, W) standardised float32.

    Returns ``{"max_abs_diff", "argmax_equal", "images", "tolerance"}``; raises ``ParityError``
    when the difference exceeds the tolerance or any argmax differs.
    """
    model.eval()
    expected = torch.cat([model(inputs[i : i + 64]) for i in range(0, len(inputs), 64)]).numpy()
    actual = onnx_logits(onnx_path, inputs.numpy())
    result = {
        "max_abs_diff": float(np.abs(actual - expected).max()),
        "argmax_equal": bool((actual.argmax(1) == expected.argmax(1)).all()),
        "images": int(len(inputs)),
        "tolerance": DEFAULT_PARITY_TOLERANCE,
    }
    if result["max_abs_diff"] > DEFAULT_PARITY_TOLERANCE or not result["argmax_equal"]:
        raise ParityError(f"ONNX does not reproduce the PyTorch model: {result}")
    return result


@torch.no_grad()
def layer_shapes(model: FaceClassifier, prep: Preprocessing) -> list[dict]:
    model.eval()
    _, activations = model.forward_with_activations(torch.zeros(1, 3, prep.height, prep.width))
    return [
        {"name": name, "channels": a.shape[1], "height": a.shape[2], "width": a.shape[3]}
        for name, a in activations.items()
    ]


def write_bundle(
    out: Path,
    *,
    model: FaceClassifier,
    prep: Preprocessing,
    classes: list[str],
    parity_inputs: torch.Tensor,
    split: dict,
    meta_extra: dict,
    report_dir: Path | None = None,
    name: str | None = None,
    version: str = "1.0.0",
    arrays: dict[str, np.ndarray] | None = None,
) -> dict:
    """Export ``model`` to the bundle directory ``out`` (replaced atomically); returns meta.

    ``parity_inputs``: standardised images for the ONNX check (the test split).
    ``meta_extra``: ``architecture``, ``training`` and ``metrics`` entries of meta.json.
    ``arrays``: ``.npy`` files to add (bundle-relative name -> array; e.g. the open-set gallery),
    listed in ``files`` with their sha256 like every other file.
    """
    model = model.cpu().eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        example = parity_inputs[:2].clone()
        export_onnx(model, example, tmp / ONNX_FILE)
        parity = check_parity(tmp / ONNX_FILE, model, parity_inputs)
        log.info(
            "ONNX parity: max |diff| %.2e over %d images", parity["max_abs_diff"], parity["images"]
        )
        export_twin(model, example, tmp / TWIN_FILE)
        (tmp / "split.json").write_text(json.dumps(split) + "\n")
        for relative, array in (arrays or {}).items():
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            np.save(tmp / relative, array, allow_pickle=False)
        if report_dir is not None:
            shutil.copytree(report_dir, tmp / "report")
        files = {
            p.relative_to(tmp).as_posix(): {"sha256": sha256_of(p), "bytes": p.stat().st_size}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        meta = {
            "schema_version": SCHEMA_VERSION,
            "name": name or out.name,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "classes": [{"id": c, "name": display_name(c)} for c in classes],
            "input": prep.to_meta(),
            "gradcam_layer": model.backbone.gradcam_layer,
            "layers": layer_shapes(model, prep),
            "files": files,
            "parity": parity,
            **meta_extra,
        }
        BundleMeta.model_validate(meta)  # what the service will read: fail here, not there
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
