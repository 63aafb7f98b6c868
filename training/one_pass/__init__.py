"""The one-pass explainer (FastSHAP, Jethani et al. 2022) trained against a bundle's own model.

``python -m training one-pass`` (``command``) reads the bundle's train split, scores each face
under Shapley-kernel masks of a ``G x G`` grid (``samples``), fits a small head on the bundle's
frozen trunk to predict every class's Shapley values of the grid cells in one pass
(``net``, ``fit``), checks it on the test split against LIME and occlusion and under the
model-randomisation test (``gates``), and only then writes ``one_pass.onnx`` and its
``meta.json`` entry. The service's ``fastshap`` method (``service.explain.one_pass``) runs it.
"""
