"""Fitting the head: FastSHAP's weighted least squares over the precomputed coalitions.

For a face ``x``, a coalition ``S`` (cells shown) and every class ``c``, the loss is
``(v_c(S) - v_c(empty) - sum_{i in S} phi_c,i(x))^2`` with ``phi`` the head's efficient values
(``service.explain.one_pass.efficient``): coalitions drawn from the Shapley kernel make its
minimiser the Shapley values (Jethani et al. 2022, eq. 4). ``v(empty)`` is the model's logits on
the baseline image, the same for every face. The trunk's features are precomputed
(``samples``), so an epoch costs only the head's passes. The epoch with the lowest loss on the
validation split's samples is kept; every epoch's figures are in the returned history.
``fit_heads`` fits an ensemble: the same recipe from ``count`` seeds, each head's history kept.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from service.explain.one_pass import Value, class_values, efficient
from training.one_pass.net import Head, Heads
from training.one_pass.samples import Samples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """How the head is fitted (meta.json records these)."""

    epochs: int = 60
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_faces: int = 32
    width: int = 128
    seed: int = 0
    value: Value = "logit"
    dropout: float = 0.0


def head_values(head: Head, features: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``(N, C, d)`` efficient cell values of faces with trunk ``features`` and ``gain`` ``(N, C)``
    (logits minus the baseline image's)."""
    raw = head(features)
    return efficient(raw.flatten(2), gain)


def shapley_loss(
    head: Head, samples: Samples, index: np.ndarray, baseline_logits: torch.Tensor, value: Value
) -> torch.Tensor:
    """The mean squared error of the values' coalition sums over ``samples[index]``, per class
    and coalition, of the ``value`` of the logits."""
    empty = class_values(baseline_logits, value)
    features = torch.from_numpy(samples.features[index])
    gain = class_values(torch.from_numpy(samples.logits[index]), value) - empty
    phi = head_values(head, features, gain)  # (n, C, d)
    coalitions = torch.from_numpy(samples.coalitions[index])  # (n, M, d)
    predicted = torch.einsum("nmd,ncd->nmc", coalitions, phi)
    target = class_values(torch.from_numpy(samples.values[index]), value) - empty
    return ((predicted - target) ** 2).mean()


def evaluate(head: Head, samples: Samples, baseline_logits: torch.Tensor, value: Value) -> float:
    head.eval()
    index = np.arange(len(samples.labels))
    with torch.no_grad():
        return float(shapley_loss(head, samples, index, baseline_logits, value))


def train_one_epoch(
    head: Head,
    optimizer: torch.optim.Optimizer,
    samples: Samples,
    baseline_logits: torch.Tensor,
    batch_faces: int,
    rng: np.random.Generator,
    value: Value,
) -> float:
    head.train()
    order = rng.permutation(len(samples.labels))
    total = 0.0
    for start in range(0, len(order), batch_faces):
        index = order[start : start + batch_faces]
        loss = shapley_loss(head, samples, index, baseline_logits, value)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(index)
    return total / len(order)


def fit_head(
    train: Samples, val: Samples, baseline_logits: np.ndarray, config: FitConfig
) -> tuple[Head, list[dict[str, Any]]]:
    """The head with the lowest validation loss, and every epoch's train and val loss."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    features = torch.from_numpy(train.features)
    head = Head(
        features.mean(dim=(0, 2, 3)),
        features.std(dim=(0, 2, 3)),
        train.logits.shape[1],
        config.width,
        config.dropout,
    )
    base = torch.from_numpy(np.asarray(baseline_logits, dtype=np.float32))
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    history: list[dict[str, Any]] = []
    best, best_loss = copy.deepcopy(head.state_dict()), float("inf")
    for epoch in range(1, config.epochs + 1):
        train_loss = train_one_epoch(
            head, optimizer, train, base, config.batch_faces, rng, config.value
        )
        schedule.step()
        val_loss = evaluate(head, val, base, config.value)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if val_loss < best_loss:
            best, best_loss = copy.deepcopy(head.state_dict()), val_loss
        if epoch % 10 == 0 or epoch == config.epochs:
            log.info(
                "epoch %d/%d: train %.4f, val %.4f", epoch, config.epochs, train_loss, val_loss
            )
    head.load_state_dict(best)
    return head.eval(), history


def fit_heads(
    train: Samples, val: Samples, baseline_logits: np.ndarray, config: FitConfig, count: int
) -> tuple[Heads, list[list[dict[str, Any]]]]:
    """``count`` heads fitted from seeds ``config.seed``, ``config.seed + 1``, ...: their
    ensemble and every head's history."""
    heads, histories = [], []
    for index in range(count):
        seeded = dataclasses.replace(config, seed=config.seed + index)
        head, history = fit_head(train, val, baseline_logits, seeded)
        log.info("head %d/%d: best val %.4f", index + 1, count, min(h["val_loss"] for h in history))
        heads.append(head)
        histories.append(history)
    return Heads(heads).eval(), histories
