"""The course's "off-the-shelf CNN features" baseline: frozen backbone embeddings and a linear
classifier (multinomial logistic regression) fit on the training split.

Staged fine-tuning is only worth its cost if it beats this on the same data, so ``fit`` can
export the baseline itself: a standardiser followed by a logistic regression is one affine map,
written here into the classifier's own head (batch norm in eval mode, then the linear layer).
The bundle's ONNX graph, twin, gradients and load-time checks then work unchanged.
"""

from __future__ import annotations

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from training.backbones import Backbone
from training.fit import predict
from training.model import FaceClassifier

HEAD = "standardiser + logistic regression on frozen features (as batchnorm + linear)"


def linear_probe(
    backbone, loaders: dict, standardise, device, seed: int = 0
) -> tuple[dict[str, float], Pipeline]:
    """(accuracy per split, the fitted pipeline) of a logistic regression on frozen embeddings
    (trained on ``train``)."""
    data = {
        name: tuple(t.numpy() for t in predict(backbone, loader, standardise, device))
        for name, loader in loaders.items()
    }
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed),
    )
    clf.fit(*data["train"])
    return {name: float((clf.predict(x) == y).mean()) for name, (x, y) in data.items()}, clf


@torch.no_grad()
def probe_classifier(backbone: Backbone, probe: Pipeline, dropout: float) -> FaceClassifier:
    """The fitted probe as a ``FaceClassifier`` over ``backbone`` (frozen weights, eval mode):
    its logits are the probe's decision function."""
    scaler, regression = probe[0], probe[-1]
    model = FaceClassifier(backbone, len(regression.classes_), dropout=dropout)
    norm, linear = model.head[0], model.head[-1]
    assert isinstance(norm, nn.BatchNorm1d) and isinstance(linear, nn.Linear)
    assert norm.running_mean is not None and norm.running_var is not None
    norm.running_mean.copy_(torch.as_tensor(scaler.mean_))
    norm.running_var.copy_(torch.as_tensor(scaler.var_))
    # (x - mean) / sqrt(var + eps) * weight == (x - mean) / scale
    norm.weight.copy_(torch.as_tensor((scaler.var_ + norm.eps) ** 0.5 / scaler.scale_))
    norm.bias.zero_()
    linear.weight.copy_(torch.as_tensor(regression.coef_))
    linear.bias.copy_(torch.as_tensor(regression.intercept_))
    return model.float().eval()
