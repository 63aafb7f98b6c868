"""Which model ``fit`` exports: the fine-tuned one or the frozen-feature baseline, whichever does
better on the validation split (accuracy, then cross-entropy), unless ``--export`` forces one.

Fine-tuning a pretrained face model on a small gallery can do worse than a linear classifier on
its frozen features; the choice, and why, goes to the log, report/metrics.json and meta.json.
"""

from __future__ import annotations

FINE_TUNED = "fine-tuned"
BASELINE = "baseline"
CHOICES = ("best", FINE_TUNED, BASELINE)


def choose(val: dict[str, dict[str, float]], export: str = "best") -> dict:
    """``val``: ``{model: {"accuracy", "loss"}}`` on the validation split for ``fine-tuned``
    and, when trained, ``baseline``. Returns meta.json's ``selection`` block."""
    if export not in CHOICES:
        raise ValueError(f"--export {export!r}: choose one of {', '.join(CHOICES)}")
    if export != "best":
        if export not in val:
            raise ValueError(f"--export {export}: that model was not trained (--no-baseline?)")
        exported, reason = export, f"forced by --export {export}"
    elif BASELINE not in val:
        exported, reason = FINE_TUNED, "no baseline was trained (--no-baseline)"
    else:
        f, b = val[FINE_TUNED], val[BASELINE]
        key = "accuracy" if f["accuracy"] != b["accuracy"] else "loss"
        better_baseline = b[key] > f[key] if key == "accuracy" else b[key] < f[key]
        exported = BASELINE if better_baseline else FINE_TUNED
        other = FINE_TUNED if exported == BASELINE else BASELINE
        reason = (
            f"higher validation accuracy ({val[exported]['accuracy']:.4f} vs "
            f"{val[other]['accuracy']:.4f} for the {other} model)"
            if key == "accuracy"
            else f"same validation accuracy ({f['accuracy']:.4f}); lower validation "
            f"cross-entropy ({val[exported]['loss']:.4f} vs {val[other]['loss']:.4f})"
        )
    return {
        "exported": exported,
        "reason": reason,
        "rule": "higher validation accuracy, then lower validation cross-entropy",
        "validation": val,
    }
