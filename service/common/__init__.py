"""Helpers that several service packages share: the bottom layer.

``explain/`` (heatmaps), ``insight/`` (what the model learned) and the serving code all use
these; nothing here imports from them, from the routes or from the model, so each package can
depend on this one without pulling in the others (``tests/unit/test_layers.py`` checks it).

- ``softmax``: class probabilities from logits.
- ``lru``: the bounded, thread-safe LRU that holds computed results (heatmaps, syntheses).
- ``colormap``: the lookup tables every picture of a map is coloured with.
- ``twin``: gradients through the torch twin, one computation at a time.
"""
