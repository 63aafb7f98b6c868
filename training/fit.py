"""Staged fine-tuning: train the new head on a frozen backbone first, then unfreeze deeper.

Stage plan (``--stages``; epochs and learning rates per stage are flags):
* ``head`` -- only the new head learns; the backbone is frozen, batch-norm statistics included;
* ``top``  -- the head, the embedding layer(s) and the last ``unfreeze_last`` backbone stages;
* ``all``  -- everything.
In every stage the learning rate shrinks by ``lr_decay`` per unit from the head towards the
input: early filters are generic and need the least change.

Optimizer parameter groups are built from ``requires_grad``, so a stage is nothing but a set of
flags. Each stage stops early when validation loss has not improved for ``patience`` epochs; the
weights with the best validation loss so far are kept and restored at the end of every stage.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.model import FaceClassifier, set_trainable, train_mode

log = logging.getLogger(__name__)

STAGE_NAMES = ("head", "top", "all")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    lr: float


def trainable_units(model: FaceClassifier, stage: str, unfreeze_last: int) -> set[str]:
    """Unit names that learn in ``stage`` (see the module docstring)."""
    names = [name for name, _ in model.units()]
    if stage == "head":
        return {"head"}
    if stage == "top":
        backbone_stages = names[:-2]
        return {"head", "embed", *backbone_stages[len(backbone_stages) - unfreeze_last :]}
    if stage == "all":
        return set(names)
    raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGE_NAMES)}")


def param_groups(model: FaceClassifier, lr: float, lr_decay: float = 1.0) -> list[dict]:
    """One group per unit that has trainable parameters; unit ``k`` steps from the top get
    ``lr * lr_decay**k``."""
    groups = []
    for depth, (name, unit) in enumerate(reversed(model.units())):
        params = [p for p in unit.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr * lr_decay**depth, "unit": name})
    return groups


def make_optimizer(name: str, groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(groups, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def train_one_epoch(
    model, loader, standardise, criterion, optimizer, device, desc=""
) -> tuple[float, float]:
    """One pass over ``loader``; returns (mean loss, accuracy)."""
    train_mode(model)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False)
    for images, labels in bar:
        x, y = standardise(images.to(device)), labels.to(device)
        logits = model(x)
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / seen, correct / seen


@torch.no_grad()
def predict(model, loader, standardise, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs (N, ...), labels (N,)) of ``model`` over ``loader``, in eval mode: logits of a
    classifier, embeddings of a backbone."""
    model.eval()
    outputs, targets = [], []
    for images, labels in loader:
        outputs.append(model(standardise(images.to(device))).cpu())
        targets.append(labels)
    return torch.cat(outputs), torch.cat(targets)


def evaluate(model, loader, standardise, criterion, device) -> tuple[float, float]:
    """(mean loss, accuracy) over ``loader``."""
    logits, labels = predict(model, loader, standardise, device)
    return criterion(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def fit(
    model: FaceClassifier,
    train_loader: DataLoader,
    val_loader: DataLoader,
    standardise,
    *,
    stages: list[Stage],
    class_weights: torch.Tensor,
    optimizer: str = "adam",
    weight_decay: float = 1e-4,
    unfreeze_last: int = 2,
    lr_decay: float = 0.5,
    patience: int = 3,
    label_smoothing: float = 0.1,
    device: torch.device = torch.device("cpu"),
) -> list[dict]:
    """Run the stages in order; returns the history (one dict per epoch). ``model`` ends
    holding the weights with the best validation loss."""
    model.to(device)
    train_criterion = nn.CrossEntropyLoss(
        weight=class_weights.to(device), label_smoothing=label_smoothing
    )
    val_criterion = nn.CrossEntropyLoss(weight=class_weights)
    history: list[dict] = []
    best_loss, best_state = math.inf, copy.deepcopy(model.state_dict())
    for stage in stages:
        set_trainable(model, trainable_units(model, stage.name, unfreeze_last))
        opt = make_optimizer(optimizer, param_groups(model, stage.lr, lr_decay), weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(stage.epochs, 1))
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info(
            "stage %s: %d epochs, lr %g, %d trainable parameters",
            stage.name,
            stage.epochs,
            stage.lr,
            n_trainable,
        )
        stale = 0
        for epoch in range(1, stage.epochs + 1):
            desc = f"{stage.name} {epoch}/{stage.epochs}"
            train_loss, train_acc = train_one_epoch(
                model, train_loader, standardise, train_criterion, opt, device, desc
            )
            val_loss, val_acc = evaluate(model, val_loader, standardise, val_criterion, device)
            scheduler.step()
            history.append(
                {
                    "stage": stage.name,
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "lr": stage.lr,
                }
            )
            log.info(
                "%s: train loss %.4f acc %.4f | val loss %.4f acc %.4f",
                desc,
                train_loss,
                train_acc,
                val_loss,
                val_acc,
            )
            if val_loss < best_loss - 1e-4:
                best_loss, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= patience:
                    log.info(
                        "stage %s: early stop after %d epochs without improvement",
                        stage.name,
                        stale,
                    )
                    break
        model.load_state_dict(best_state)
    set_trainable(model, set())
    return history
