"""``python -m training quantize``: a static INT8 copy of a bundle's ONNX graph, with its gates.

ONNX Runtime's static quantisation (``quantize_static``) after its own pre-processing
(``quant_pre_process``: shape inference and graph cleanup), calibrated on a seeded sample of the
bundle's *train* split, preprocessed exactly as the service does (``Preprocessing``, the
bundle's ``meta.json["input"]``). The defaults are the ones that pass the gates on this model:
QDQ format, unsigned 8-bit activations, signed 8-bit per-channel weights with ``reduce_range``
(7-bit weights). Without ``reduce_range``, the u8 x s8 products saturate in the AVX2 kernels
(``vpmaddubsw``; CPUs without VNNI), and test labels flip on 2 % of faces.

The INT8 graph is written as ``model.int8.onnx``, listed in ``meta.json["files"]`` with its
sha256, and described in ``meta.json["precision"]["int8"]``: the options, the calibration
images, the load-time parity rule (labels agree with the FP32 twin on the probe input and logits
within ``parity.tolerance``), the gates measured on the test split and the held-out side of the
open-set protocol (``GATES``), and the FP32 vs INT8 throughput measured on this CPU. The service
serves it when asked (``precision`` setting); ``auto`` serves it only when ``gates.passed``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (  # type: ignore[import-untyped]
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import (  # type: ignore[import-untyped]
    quant_pre_process,
)
from sklearn.metrics import roc_auc_score

from service.bundle.checks import load_gallery, probe_batch
from service.bundle.format import (
    EMBEDDING_OUTPUT,
    INT8_FILE,
    ONNX_FILE,
    BundleMeta,
    read_meta,
)
from service.bundle.open_set import open_set_rule
from service.bundle.preprocess import Preprocessor
from training.bundle_meta import update_meta
from training.data import FaceDataset, scan
from training.preprocess import Preprocessing

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 16
GATES = {"max_accuracy_drop_points": 0.3, "min_label_agreement": 0.995, "max_auroc_drop": 0.005}
"""From issue 16: test accuracy may drop at most 0.3 points, labels must agree with FP32 on at
least 99.5 % of test faces, the held-out open-set AUROC may drop at most 0.005."""
PARITY_HEADROOM = 2.0
"""The INT8 load-time tolerance is this many times the probe's |logit diff| at quantisation, so
that another CPU's kernels (rounding in the float parts) still pass while a wrong file fails."""
THROUGHPUT_ROUNDS = 5
FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
TYPES = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}


@dataclass(frozen=True)
class QuantOptions:
    """What ``quantize_static`` is asked for (recorded verbatim in meta.json)."""

    format: str = "qdq"
    activations: str = "u8"
    weights: str = "s8"
    per_channel: bool = True
    reduce_range: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; valid: {', '.join(FORMATS)}")
        for kind in (self.activations, self.weights):
            if kind not in TYPES:
                raise ValueError(f"unknown 8-bit type {kind!r}; valid: {', '.join(TYPES)}")


class _Batches(CalibrationDataReader):
    """The calibration images as ``quantize_static`` reads them."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter(
            {"input": images[i : i + CALIBRATION_BATCH]}
            for i in range(0, len(images), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session set up as the service's (sequential, no spinning between runs)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def outputs(sess: ort.InferenceSession, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(N, C)`` logits and ``(N, D)`` embeddings (None without that output), in batches of 32."""
    names = [o.name for o in sess.get_outputs()]
    wanted = ["logits"] + ([EMBEDDING_OUTPUT] if EMBEDDING_OUTPUT in names else [])
    runs = [sess.run(wanted, {"input": x[i : i + 32]}) for i in range(0, len(x), 32)]
    logits = np.concatenate([r[0] for r in runs])
    return logits, (np.concatenate([r[1] for r in runs]) if len(wanted) == 2 else None)


def open_set_auroc(
    meta: BundleMeta, gallery: np.ndarray | None, known: tuple, unknown: tuple
) -> float | None:
    """AUROC of the bundle's own open-set score (as the service computes it, face by face) for
    known faces against strangers; ``known``/``unknown`` are ``outputs`` pairs."""
    rule = open_set_rule(meta, gallery, None)
    if rule is None:
        return None

    def scores(pair: tuple) -> list[float]:
        logits, emb = pair
        return [rule(logits[i], None if emb is None else emb[i]) for i in range(len(logits))]

    labels = np.r_[np.ones(len(known[0])), np.zeros(len(unknown[0]))]
    return float(roc_auc_score(labels, scores(known) + scores(unknown)))


def throughput(
    paths: dict[str, Path], x: np.ndarray, threads: int, rounds: int = THROUGHPUT_ROUNDS
) -> dict[str, Any]:
    """Images per second of each model at batch 1 and 32 (median of interleaved rounds, so a
    busy machine slows both alike) and CPU milliseconds per image (process time: less sensitive
    to other processes than the clock)."""
    sessions = {name: session(path, threads) for name, path in paths.items()}
    figures: dict[str, dict[str, list[float]]] = {
        name: {f"{kind}_batch_{b}": [] for b in (1, 32) for kind in ("img_per_s", "cpu_ms")}
        for name in paths
    }
    for sess in sessions.values():
        sess.run(["logits"], {"input": x[:32]})
    for _ in range(rounds):
        for name, sess in sessions.items():
            for batch, reps in ((1, 20), (32, 2)):
                clock, cpu = time.perf_counter(), time.process_time()
                for _ in range(reps):
                    sess.run(["logits"], {"input": x[:batch]})
                images = batch * reps
                figures[name][f"img_per_s_batch_{batch}"].append(
                    images / (time.perf_counter() - clock)
                )
                figures[name][f"cpu_ms_batch_{batch}"].append(
                    1000 * (time.process_time() - cpu) / images
                )
    result: dict[str, Any] = {
        name: {key: round(float(np.median(v)), 2) for key, v in f.items()}
        for name, f in figures.items()
    }
    result["threads"] = threads or os.cpu_count()
    result["rounds"] = rounds
    result["cpu"] = _cpu_flags()
    return result


def _cpu_flags() -> str:
    """The x86 features that decide INT8 speed (VNNI or not), from /proc/cpuinfo."""
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return "unknown"
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return " ".join(shown) or "none of avx2/avx512/vnni"


def _faces(root: Path, samples: list, prep: Preprocessing, desc: str) -> tuple[np.ndarray, Any]:
    dataset = FaceDataset(root, [tuple(s) for s in samples], prep, desc=desc)
    return prep.standardise(dataset.images).numpy(), dataset.labels.numpy()


def quantize(
    bundle: Path,
    *,
    data: Path | None = None,
    others: Path | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    seed: int = 0,
    options: QuantOptions = QuantOptions(),
    threads: int = 0,
    rounds: int = THROUGHPUT_ROUNDS,
) -> dict[str, Any]:
    """Write ``bundle/model.int8.onnx`` and its ``meta.json["precision"]["int8"]`` block
    (returned). ``data``: the image root (default: split.json's); ``others``: the strangers'
    faces for the open-set AUROC (None: skipped, recorded as null); ``threads`` and ``rounds``:
    of the throughput measurement (0 threads = one per core)."""
    bundle = Path(bundle)
    meta = read_meta(bundle)
    split = json.loads((bundle / "split.json").read_text())
    root = Path(data or split["root"])
    prep = Preprocessing.from_meta(meta.input.model_dump())
    train = split["splits"]["train"]
    chosen = np.random.default_rng(seed).permutation(len(train))[:calibration_images]
    calibration, _ = _faces(root, [train[i] for i in sorted(chosen)], prep, "calibration")
    test_x, test_y = _faces(root, split["splits"]["test"], prep, "test")

    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        prepared, written = Path(tmp) / "prepared.onnx", Path(tmp) / INT8_FILE
        quant_pre_process(str(bundle / ONNX_FILE), str(prepared))
        started = time.perf_counter()
        quantize_static(
            str(prepared),
            str(written),
            _Batches(calibration),
            quant_format=FORMATS[options.format],
            activation_type=TYPES[options.activations],
            weight_type=TYPES[options.weights],
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
        )
        log.info("quantised in %.1f s", time.perf_counter() - started)
        block = _measure(bundle, written, meta, prep, (test_x, test_y), others, (threads, rounds))
        (bundle / INT8_FILE).write_bytes(written.read_bytes())
    block = {
        "file": INT8_FILE,
        "quantization": {
            "tool": "onnxruntime.quantization.quantize_static after quant_pre_process",
            "onnxruntime": ort.__version__,
            "calibrate_method": "MinMax",
            **asdict(options),
        },
        "calibration": {"split": "train", "images": len(calibration), "seed": seed},
        **block,
    }
    _write_meta(bundle, block)
    return block


def _measure(
    bundle: Path,
    int8_path: Path,
    meta: BundleMeta,
    prep: Preprocessing,
    test: tuple[np.ndarray, np.ndarray],
    others: Path | None,
    timing: tuple[int, int],
) -> dict[str, Any]:
    """The parity rule, the gates and the throughput of ``int8_path`` against the FP32 graph;
    ``timing``: (threads, rounds) of the throughput figures."""
    threads, rounds = timing
    fp32, int8 = session(bundle / ONNX_FILE, threads), session(int8_path, threads)
    test_x, test_y = test
    f_out, q_out = outputs(fp32, test_x), outputs(int8, test_x)
    f_top, q_top = f_out[0].argmax(1), q_out[0].argmax(1)
    probe = probe_batch(Preprocessor(meta.input))
    f_probe, q_probe = outputs(fp32, probe)[0], outputs(int8, probe)[0]
    probe_diff = float(np.abs(f_probe - q_probe).max())
    gates: dict[str, Any] = {
        "split": "test",
        "images": int(len(test_y)),
        "accuracy_fp32": float((f_top == test_y).mean()),
        "accuracy_int8": float((q_top == test_y).mean()),
        "label_agreement": float((f_top == q_top).mean()),
        "max_abs_logit_diff": float(np.abs(f_out[0] - q_out[0]).max()),
        # the service's load-time check needs it: on random-pixel probes the top two logits
        # can be close enough for INT8 to swap them
        "probe_labels_agree": bool((f_probe.argmax(1) == q_probe.argmax(1)).all()),
    }
    gates["accuracy_drop_points"] = 100 * (gates["accuracy_fp32"] - gates["accuracy_int8"])
    gates.update(_open_set_gates(bundle, meta, prep, others, (f_out, q_out), threads, int8_path))
    gates["limits"] = GATES
    gates["passed"] = bool(
        gates["accuracy_drop_points"] <= GATES["max_accuracy_drop_points"]
        and gates["label_agreement"] >= GATES["min_label_agreement"]
        and (gates["auroc_drop"] is None or gates["auroc_drop"] <= GATES["max_auroc_drop"])
        and gates["probe_labels_agree"]
    )
    speed = throughput({"fp32": bundle / ONNX_FILE, "int8": int8_path}, test_x, threads, rounds)
    speed["int8_faster"] = all(
        speed["int8"][f"img_per_s_batch_{b}"] > speed["fp32"][f"img_per_s_batch_{b}"]
        for b in (1, 32)
    )
    tolerance = float(f"{max(PARITY_HEADROOM * probe_diff, 1e-3):.2g}")
    log.info("INT8 gates: %s; throughput: %s", gates, speed)
    return {
        "parity": {
            "rule": "labels agree with the FP32 twin on the probe input, and max |logit diff| "
            "<= tolerance",
            "tolerance": tolerance,
            "probe_max_abs_diff_vs_fp32": probe_diff,
        },
        "gates": gates,
        "throughput": speed,
    }


def _open_set_gates(
    bundle: Path,
    meta: BundleMeta,
    prep: Preprocessing,
    others: Path | None,
    known: tuple,
    threads: int,
    int8_path: Path,
) -> dict[str, Any]:
    """AUROC of the bundle's open-set rule, FP32 vs INT8: test faces against the held-out
    strangers (``meta.open_set.held_out.unknown_identities`` under ``others``)."""
    held_out = (meta.open_set.model_extra or {}).get("held_out") if meta.open_set else None
    if others is None or not held_out:
        return {"open_set_auroc_fp32": None, "open_set_auroc_int8": None, "auroc_drop": None}
    tree = scan(others)
    ids = set(held_out["unknown_identities"])
    strangers, _ = _faces(
        tree.root, [s for s in tree.samples if tree.classes[s[1]] in ids], prep, "strangers"
    )
    gallery = load_gallery(bundle, meta)
    aurocs = [
        open_set_auroc(meta, gallery, pair, outputs(session(path, threads), strangers))
        for pair, path in zip(known, (bundle / ONNX_FILE, int8_path), strict=True)
    ]
    if aurocs[0] is None or aurocs[1] is None:
        return {"open_set_auroc_fp32": None, "open_set_auroc_int8": None, "auroc_drop": None}
    return {
        "open_set": {"known_split": "test", "unknown_identities": sorted(ids)},
        "open_set_unknown_images": int(len(strangers)),
        "open_set_auroc_fp32": aurocs[0],
        "open_set_auroc_int8": aurocs[1],
        "auroc_drop": aurocs[0] - aurocs[1],
    }


def _write_meta(bundle: Path, block: dict[str, Any]) -> None:
    """List the INT8 file with its sha256 and store ``precision.int8``, validated, atomically."""
    update_meta(bundle, lambda raw: raw.setdefault("precision", {}).update(int8=block), [INT8_FILE])


def summary(block: dict[str, Any]) -> str:
    """The gates and throughput as a Markdown table (the CLI's output)."""
    g, t = block["gates"], block["throughput"]

    def auroc(key: str) -> str:
        return "n/a" if g[key] is None else f"{g[key]:.4f}"

    rows = [
        "| figure | FP32 | INT8 | gate |",
        "| --- | --- | --- | --- |",
        f"| test accuracy ({g['images']} faces) | {g['accuracy_fp32']:.4f} | "
        f"{g['accuracy_int8']:.4f} | drop <= {GATES['max_accuracy_drop_points']} points "
        f"(drop {g['accuracy_drop_points']:.2f}) |",
        f"| label agreement with FP32 | 1 | {g['label_agreement']:.4f} | >= "
        f"{GATES['min_label_agreement']} |",
        f"| max abs logit diff | 0 | {g['max_abs_logit_diff']:.3f} | (recorded) |",
        f"| open-set AUROC (held out) | {auroc('open_set_auroc_fp32')} | "
        f"{auroc('open_set_auroc_int8')} | drop <= {GATES['max_auroc_drop']} |",
    ]
    for batch in (1, 32):
        rows.append(
            f"| img/s at batch {batch} ({t['threads']} threads) | "
            f"{t['fp32'][f'img_per_s_batch_{batch}']:.1f} | "
            f"{t['int8'][f'img_per_s_batch_{batch}']:.1f} | faster? |"
        )
        rows.append(
            f"| CPU ms per image at batch {batch} | {t['fp32'][f'cpu_ms_batch_{batch}']:.2f} | "
            f"{t['int8'][f'cpu_ms_batch_{batch}']:.2f} | |"
        )
    rows.append(
        f"\nprobe labels agree (load-time check): {g['probe_labels_agree']}; "
        f"gates passed: {g['passed']}; INT8 faster at batch 1 and 32: {t['int8_faster']} "
        f"(CPU: {t['cpu']}); load-time tolerance {block['parity']['tolerance']}"
    )
    return "\n".join(rows)


def quantize_command(args) -> int:
    """``python -m training quantize``: quantise, record, print the gates table."""
    options = QuantOptions(
        format=args.format,
        activations=args.activations,
        weights=args.weights,
        per_channel=not args.per_tensor,
        reduce_range=not args.full_range,
    )
    others = None if args.others == "none" else Path(args.others)
    if others is not None and not others.is_dir():
        raise FileNotFoundError(f"--others {others} is not a directory; pass --others none")
    block = quantize(
        Path(args.bundle),
        data=Path(args.data) if args.data else None,
        others=others,
        calibration_images=args.calibration_images,
        seed=args.seed,
        options=options,
        threads=args.threads,
    )
    print(summary(block))
    return 0
