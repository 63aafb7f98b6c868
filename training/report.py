"""Run reports for people: learning curves, confusion matrix, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import classification_report, confusion_matrix


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, and precision / recall / f1 / support per class and averaged."""
    report = classification_report(
        labels,
        predictions,
        labels=list(range(len(classes))),
        target_names=classes,
        output_dict=True,
        zero_division=0,
    )
    return {"accuracy": float((labels == predictions).mean()), "per_class": report}


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy, train vs val, per epoch, with stage boundaries marked."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(1, len(history) + 1)
    for ax, key in zip(axes, ("loss", "acc"), strict=True):
        ax.plot(x, [h[f"train_{key}"] for h in history], label="train")
        ax.plot(x, [h[f"val_{key}"] for h in history], label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel({"loss": "cross-entropy", "acc": "accuracy"}[key])
        for i in range(1, len(history)):
            if history[i]["stage"] != history[i - 1]["stage"]:
                ax.axvline(i + 0.5, color="grey", linestyle=":")
        starts = [
            i
            for i in range(len(history))
            if i == 0 or history[i]["stage"] != history[i - 1]["stage"]
        ]
        for i in starts:
            ax.text(
                i + 1, ax.get_ylim()[1], history[i]["stage"], va="top", fontsize=8, color="grey"
            )
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("Learning curves (stages: head -> top blocks -> all)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(
    labels: np.ndarray, predictions: np.ndarray, classes: list[str], path: Path, title: str
) -> None:
    matrix = confusion_matrix(labels, predictions, labels=list(range(len(classes))))
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="white" if value > matrix.max() / 2 else "black",
        )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
