"""The one-pass explainer grafted onto the served graph: one run gives the prediction and the map.

The bundle's ``one_pass.onnx`` (``training/one_pass``) is the model's own frozen stages (its
"trunk") and small heads that read some of the stages' activations. Run beside the prediction,
it computes those stages a second time, in FP32, whatever precision serves. ``graft`` instead
copies the heads onto the served graph (``model.onnx`` or ``model.int8.onnx``), reading the
activations that graph already computes: one run answers its outputs (logits, embedding) and
the explainer's values.

The explainer's trunk is recognised by the names its export gives it: the node outputs
``/trunk/stages.K/stages.K.<rest>`` are stage ``K``'s (``meta.layers[K]``, ``S``), the
tensor ``/S/S.<rest>`` of the served graph. In a QDQ INT8 graph that tensor is read after its
``DequantizeLinear`` (``<tensor>_DequantizeLinear_Output``), where the quantiser folded the
stage's last ReLU into the quantisation. The heads' nodes and weights are copied under the
prefix ``one_pass/``. Anything else (an explainer that is not the model's stages, an operator
set that differs) is a ``GraftError``; the service then runs the explainer on its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import onnx

PREFIX = "one_pass/"
QDQ_SUFFIX = "_DequantizeLinear_Output"
TRUNK = re.compile(r"^/trunk/stages\.(\d+)/stages\.\1\.(.+)$")


class GraftError(ValueError):
    """The explainer cannot be grafted onto the served graph (it runs on its own)."""


def graft(
    model: onnx.ModelProto, explainer: onnx.ModelProto, output: str, stages: Sequence[str]
) -> onnx.ModelProto:
    """``model`` with ``explainer``'s ``output`` added: the explainer's nodes that lead from its
    trunk's stage activations to ``output``, reading ``model``'s own activations of the stages
    (``stages``: the model's stage names, input side first, ``meta.layers``)."""
    _check_opsets(model, explainer)
    produced = {name for node in model.graph.node for name in node.output}
    model_input = model.graph.input[0].name
    explainer_input = explainer.graph.input[0].name
    makers = {name: node for node in explainer.graph.node for name in node.output}
    initializers = {tensor.name: tensor for tensor in explainer.graph.initializer}
    if output not in makers:
        raise GraftError(f"the explainer has no output {output!r}")

    renamed = {"": "", explainer_input: model_input}
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    pending, seen = [output], set()
    while pending:
        name = pending.pop()
        if name in seen or name in renamed:
            continue
        seen.add(name)
        if (activation := _stage_activation(name, stages, produced)) is not None:
            renamed[name] = activation
        elif name in initializers:
            weights.append(_copy_tensor(initializers[name]))
            renamed[name] = PREFIX + name
        elif name in makers:
            node = makers[name]
            if TRUNK.match(name):
                raise GraftError(f"the explainer's {name} has no counterpart in the served graph")
            nodes.append(node)
            pending.extend(node.input)
            renamed.update({out: PREFIX + out for out in node.output})
        else:
            raise GraftError(f"the explainer's tensor {name!r} has no source")
    renamed[output] = output

    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    order = {id(node): index for index, node in enumerate(explainer.graph.node)}
    for node in sorted(nodes, key=lambda node: order[id(node)]):  # keep the topological order
        fused.graph.node.append(_renamed(node, renamed))
    fused.graph.initializer.extend(weights)
    declared = [value for value in explainer.graph.output if value.name == output]
    fused.graph.output.extend(declared or [onnx.helper.make_empty_tensor_value_info(output)])
    return fused


def _stage_activation(name: str, stages: Sequence[str], produced: set[str]) -> str | None:
    """The served graph's tensor for the explainer's trunk tensor ``name``, if it is one that
    the served graph computes (its dequantized copy first); None for any other tensor."""
    match = TRUNK.match(name)
    if match is None:
        return None
    index, rest = int(match.group(1)), match.group(2)
    if index >= len(stages):
        raise GraftError(f"the explainer's stage {index} is not among the model's {len(stages)}")
    stage = stages[index]
    tensor = f"/{stage}/{stage}.{rest}"
    for candidate in (tensor + QDQ_SUFFIX, tensor):
        if candidate in produced:
            return candidate
    return None


def _renamed(node: onnx.NodeProto, renamed: dict[str, str]) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = PREFIX + node.name
    del copy.input[:]
    copy.input.extend(renamed[name] for name in node.input)
    del copy.output[:]
    copy.output.extend(renamed.get(name, PREFIX + name) for name in node.output)
    return copy


def _copy_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = PREFIX + tensor.name
    return copy


def _check_opsets(model: onnx.ModelProto, explainer: onnx.ModelProto) -> None:
    versions = {opset.domain or "ai.onnx": opset.version for opset in model.opset_import}
    for opset in explainer.opset_import:
        domain = opset.domain or "ai.onnx"
        if versions.get(domain) != opset.version:
            raise GraftError(
                f"the explainer uses {domain} opset {opset.version}, the served graph "
                f"{versions.get(domain, 'none')}"
            )
