"""What the twin's graph says about its layers: receptive fields and filters.

The twin is a ``torch.export`` program, so its graph lists every convolution and pooling with
its kernel size, stride, padding and dilation. Walking it from the input to each layer named in
``meta.json`` gives that layer's receptive field exactly (no per-backbone tables to keep in
sync), and the convolution whose filters make the layer's channels.

Receptive-field arithmetic, per spatial axis (Dumoulin & Visin 2016; Araujo et al. 2019): a
tensor's unit ``i`` sees input pixels ``jump * i + lo .. jump * i + hi``. An op with kernel ``k``,
stride ``s``, padding ``p`` and dilation ``d`` maps ``(jump, lo, hi)`` to
``(jump * s, lo - jump * p, hi + jump * (d * (k - 1) - p))``. Element-wise ops (ReLU, the folded
batch norm, residual additions) take the union over their operands, so a residual block's field
is that of its longer branch. Zero padding at the end of a dimension (dlib's residual add) keeps
indices; padding at the start shifts them. The ``size`` ``hi - lo + 1`` may exceed the input:
units near the border then see padding for part of their field.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx
from torch.fx.operator_schemas import normalize_function
from torch.utils import _pytree as pytree

from service.bundle.format import EMBEDDING_OUTPUT

aten = torch.ops.aten

CONVOLUTIONS = {aten.conv2d.default, aten.conv2d.padding, aten.convolution.default}
POOLS = {aten.max_pool2d.default, aten.max_pool2d_with_indices.default, aten.avg_pool2d.default}
PADS = {aten.pad.default, aten.constant_pad_nd.default}
# Ops whose output unit (r, c) depends on their operands' units (r, c) alone.
ELEMENTWISE = {
    aten.relu.default, aten.relu_.default, aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor,
    aten.mul_.Tensor, aten.sub.Tensor, aten.div.Tensor, aten.batch_norm.default,
    aten._native_batch_norm_legit_no_training.default, aten.dropout.default, aten.clone.default,
    aten.contiguous.default, aten.hardtanh.default, aten.hardtanh_.default, aten.sigmoid.default,
    aten.tanh.default, aten.leaky_relu.default, aten.gelu.default, aten.silu.default,
    aten.silu_.default, operator.getitem,
}  # fmt: skip


class ArchitectureError(RuntimeError):
    """The twin's graph holds something this analysis does not understand; the message says what."""


@dataclass(frozen=True)
class AxisField:
    """Along one axis, unit ``i`` sees input pixels ``jump * i + lo`` to ``jump * i + hi``, of
    which only ``first`` to ``last`` are reachable at all: the others lie outside the input, or
    are dropped on the way by windows that do not fit (a 7x7/2 conv on 150 pixels never looks
    at the last one, a 3x3/2 pool on its 72 outputs ignores the last)."""

    jump: int
    lo: int
    hi: int
    first: int
    last: int

    @classmethod
    def of_input(cls, size: int) -> AxisField:
        return cls(1, 0, 0, 0, size - 1)

    def through(
        self, kernel: int, stride: int, padding: int, dilation: int, units: int
    ) -> AxisField:
        """The field after a sliding window (convolution or pooling) with ``units`` outputs."""
        lo = self.lo - self.jump * padding
        hi = self.hi + self.jump * (dilation * (kernel - 1) - padding)
        jump = self.jump * stride
        return AxisField(jump, lo, hi, max(self.first, lo), min(self.last, jump * (units - 1) + hi))

    def shifted(self, before: int) -> AxisField:
        """The field after ``before`` units are inserted at the start of the axis."""
        return replace(self, lo=self.lo - self.jump * before, hi=self.hi - self.jump * before)

    def union(self, other: AxisField) -> AxisField:
        if other.jump != self.jump:
            raise ArchitectureError(
                f"element-wise op on tensors with different strides ({self.jump} vs {other.jump})"
            )
        return AxisField(
            self.jump,
            min(self.lo, other.lo),
            max(self.hi, other.hi),
            min(self.first, other.first),
            max(self.last, other.last),
        )

    @property
    def size(self) -> int:
        """Input pixels a unit spans (may exceed the input)."""
        return self.hi - self.lo + 1

    @property
    def start(self) -> float:
        """Centre of unit 0's field, in input pixel indices."""
        return (self.lo + self.hi) / 2

    def span(self, index: int) -> tuple[int, int]:
        """First and last input pixel (inclusive) in unit ``index``'s field; may lie outside."""
        return self.jump * index + self.lo, self.jump * index + self.hi

    def seen(self, index: int) -> tuple[int, int]:
        """First and last input pixel (inclusive) that can influence unit ``index``."""
        lo, hi = self.span(index)
        return max(lo, self.first), min(hi, self.last)


@dataclass(frozen=True)
class ReceptiveField:
    """A layer's receptive field: ``rows`` and ``cols`` fields, and the layer's ``shape``
    (C, H, W)."""

    layer: str
    rows: AxisField
    cols: AxisField
    shape: tuple[int, int, int]

    @property
    def local(self) -> bool:
        """Whether a unit can see only part of the input: false once even a corner unit's
        field covers all of it, as in the deep layers of most networks."""
        return self.rows.seen(0) != (self.rows.first, self.rows.last) or self.cols.seen(0) != (
            self.cols.first,
            self.cols.last,
        )

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Unit ``(row, col)``'s whole field as ``(x0, y0, x1, y1)`` in input pixels,
        end-exclusive; may reach outside the input."""
        y0, y1 = self.rows.span(row)
        x0, x1 = self.cols.span(col)
        return x0, y0, x1 + 1, y1 + 1


@dataclass(frozen=True)
class _Global:
    """A tensor whose spatial axes were reduced away (global pooling, linear layers)."""


_GLOBAL = _Global()
_Field = tuple[AxisField, AxisField] | _Global | None  # None: does not depend on the input


def layer_nodes(twin: fx.GraphModule) -> dict[str, fx.Node]:
    """``{layer name: graph node}`` of the activations the twin returns, in its order (its
    ``embedding`` output, a vector, is not a layer)."""
    spec = getattr(twin, "_out_spec", None)
    output = next(node for node in twin.graph.nodes if node.op == "output")
    flat = output.args[0]
    if spec is None:
        raise ArchitectureError("the twin does not record its output structure (_out_spec)")
    structure = pytree.tree_unflatten(list(flat), spec)
    if not (
        isinstance(structure, tuple) and len(structure) == 2 and isinstance(structure[1], dict)
    ):
        raise ArchitectureError("the twin must return (logits, {layer: activation})")
    return {name: node for name, node in structure[1].items() if name != EMBEDDING_OUTPUT}


def receptive_fields(twin: fx.GraphModule) -> dict[str, ReceptiveField]:
    """Receptive field of every layer the twin returns, from its graph (no forward pass)."""
    fields: dict[fx.Node, _Field] = {}
    for node in twin.graph.nodes:
        if node.op == "output":
            break
        fields[node] = _field_of(node, fields)
    result = {}
    for name, node in layer_nodes(twin).items():
        field = fields[node]
        if not isinstance(field, tuple):
            raise ArchitectureError(f"layer {name!r} is not a spatial function of the input")
        channels, height, width = (int(size) for size in node.meta["val"].shape[1:])
        result[name] = ReceptiveField(name, field[0], field[1], (channels, height, width))
    return result


def layer_filters(twin: fx.GraphModule, layer: str) -> torch.Tensor:
    """The filters that make ``layer``'s channels: the weight ``(C_out, C_in, k, k)`` of the last
    convolution before the layer's output in the graph (a stage's last conv)."""
    node = layer_nodes(twin)[layer]
    order = {n: i for i, n in enumerate(twin.graph.nodes)}
    seen, stack, convs = set(), [node], []
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "call_function" and current.target in CONVOLUTIONS:
            convs.append(current)
        stack.extend(current.all_input_nodes)
    if not convs:
        raise ArchitectureError(f"no convolution feeds layer {layer!r}")
    weight = _arguments(max(convs, key=order.__getitem__))["weight"]
    if weight.op != "get_attr":
        raise ArchitectureError(f"the filters of layer {layer!r} are not stored weights")
    stored: Any = twin
    for name in str(weight.target).split("."):  # a get_attr node's target: the attribute path
        stored = getattr(stored, name)
    return torch.as_tensor(stored).detach()


def _field_of(node: fx.Node, fields: dict[fx.Node, _Field]) -> _Field:
    if node.op == "placeholder":
        height, width = node.meta["val"].shape[-2:]
        return (AxisField.of_input(int(height)), AxisField.of_input(int(width)))
    inputs = [fields[n] for n in node.all_input_nodes]
    if not node.users or all(field is None for field in inputs):
        # unused (e.g. the export's input guards), or weights and what is computed from them
        return None
    if node.op != "call_function":
        raise ArchitectureError(f"unsupported graph node {node.op} {node.target}")
    if any(isinstance(field, _Global) for field in inputs):
        return _GLOBAL
    spatial = [field for field in inputs if isinstance(field, tuple)]
    target = node.target
    if target in CONVOLUTIONS or target in POOLS:
        args = _arguments(node)
        if len(spatial) != 1:
            raise ArchitectureError(f"{node.name}: a window over more than one input")
        return _window(node, args, spatial[0])
    if target in PADS:
        return _pad(node, _arguments(node), spatial[0])
    if target in ELEMENTWISE:
        rows, cols = spatial[0]
        for other_rows, other_cols in spatial[1:]:
            rows, cols = rows.union(other_rows), cols.union(other_cols)
        return (rows, cols)
    if _spatially_reduced(node):
        return _GLOBAL
    raise ArchitectureError(f"{node.name}: receptive field through {target} is not supported")


def _arguments(node: fx.Node) -> dict[str, Any]:
    function = node.target
    if isinstance(function, str):  # a method or attribute name, not an operator
        raise ArchitectureError(f"cannot read the arguments of {node.name} ({function})")
    normalized = normalize_function(
        function, tuple(node.args), dict(node.kwargs), normalize_to_only_use_kwargs=True
    )
    if normalized is None:
        raise ArchitectureError(f"cannot read the arguments of {node.name} ({node.target})")
    return dict(normalized.kwargs)


def _pair(value: Any, default: int) -> tuple[int, int]:
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return default, default
    if isinstance(value, int):
        return value, value
    values = [int(v) for v in value]
    return (values[0], values[0]) if len(values) == 1 else (values[-2], values[-1])


def _window(node: fx.Node, args: dict[str, Any], field: tuple[AxisField, AxisField]) -> _Field:
    if node.target in CONVOLUTIONS:
        kernel = tuple(args["weight"].meta["val"].shape[-2:])
        if args.get("transposed"):
            raise ArchitectureError(f"{node.name}: transposed convolutions are not supported")
    else:
        kernel = _pair(args["kernel_size"], 1)
    stride = _pair(args.get("stride"), 0)
    if stride == (0, 0):  # pooling's default stride is its kernel
        stride = kernel
    dilation = _pair(args.get("dilation"), 1)
    padding = args.get("padding")
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
    padding = _pair(padding, 0)
    units = tuple(int(n) for n in node.meta["val"].shape[-2:])
    return tuple(
        axis.through(k, s, p, d, n)
        for axis, k, s, p, d, n in zip(field, kernel, stride, padding, dilation, units, strict=True)
    )


def _pad(node: fx.Node, args: dict[str, Any], field: tuple[AxisField, AxisField]) -> _Field:
    if args.get("mode", "constant") != "constant":
        raise ArchitectureError(
            f"{node.name}: only constant padding keeps a receptive field simple"
        )
    pad = list(args["pad"]) + [0, 0, 0, 0]
    left, top = int(pad[0]), int(pad[2])  # torch order: last dim first, (before, after) pairs
    return (field[0].shifted(top), field[1].shifted(left))


def _spatially_reduced(node: fx.Node) -> bool:
    value = node.meta.get("val")
    return value is not None and getattr(value, "ndim", 0) < 4
