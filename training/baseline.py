"""The course's "off-the-shelf CNN features" baseline: frozen backbone embeddings and a linear
classifier (multinomial logistic regression) fit on the training split.

Staged fine-tuning is only worth its cost if it beats this on the same test split.
"""

from __future__ import annotations

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .fit import predict


def linear_probe(backbone, loaders: dict, standardise, device, seed: int = 0) -> dict[str, float]:
    """Accuracy per split of a logistic regression on frozen embeddings (trained on ``train``)."""
    data = {
        name: tuple(t.numpy() for t in predict(backbone, loader, standardise, device))
        for name, loader in loaders.items()
    }
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed),
    )
    clf.fit(*data["train"])
    return {name: float((clf.predict(x) == y).mean()) for name, (x, y) in data.items()}
