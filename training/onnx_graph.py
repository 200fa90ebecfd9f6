"""An ONNX graph run by PyTorch operations, so that gradients reach its inputs.

ONNX Runtime computes a member's outputs but no gradients, and the disagreement ascent
(``distill.transfer.perturb_steps``) needs the gradient of the members' disagreement with
respect to the inputs. This module translates the nodes of an ONNX file one by one into
``torch`` calls over its initializers (the weights stay fixed), for the operators that
classifiers and regressors exported from PyTorch or Keras (tf2onnx) are made of:
convolutions, pooling, normalization, dense layers, activations and the shape arithmetic
around them. A graph with any other operator (control flow, another domain, ...) is refused
with the operators' names, and its member keeps running in ONNX Runtime without gradients.

The translation is only used for gradients: teacher outputs still come from ONNX Runtime,
and ``training.members`` checks at load that the translation agrees with ONNX Runtime on real
rows before it is used. (onnx2torch does this job in general but needs torchvision, and the
torchvision wheel on PyPI for this torch version does not load beside the CPU build of torch
that this project installs.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

Tensor = torch.Tensor


class Unsupported(ValueError):
    """The graph holds something this translation does not run."""


def _ints(t: Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axes(node: Attrs, inputs: list[Tensor | None], at: int) -> list[int] | None:
    """Axes given as an attribute (older opsets) or as input ``at`` (newer ones)."""
    if "axes" in node:
        return list(node["axes"])
    return _ints(inputs[at]) if len(inputs) > at else None


class Attrs(dict):
    """A node's attributes as Python values."""

    @classmethod
    def of(cls, node: onnx.NodeProto) -> Attrs:
        attrs = cls()
        for a in node.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise Unsupported(f"node {node.name or node.op_type}: subgraphs ({node.op_type})")
            value = onnx.helper.get_attribute_value(a)
            if isinstance(value, onnx.TensorProto):
                value = torch.as_tensor(numpy_helper.to_array(value).copy())
            elif isinstance(value, bytes):
                value = value.decode()
            attrs[a.name] = value
        return attrs


# ----------------------------------------------------------------------- padding and pooling


def _spatial_pads(x: Tensor, a: Attrs, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """Explicit pads [begin_1, ..., begin_k, end_1, ..., end_k] for ONNX's ``pads`` or ``auto_pad``."""
    k = len(kernel)
    mode = a.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", ""):
        return list(a.get("pads", [0] * (2 * k)))
    if mode == "VALID":
        return [0] * (2 * k)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad {mode!r}")
    begins, ends = [], []
    for size, kk, s, d in zip(x.shape[2:], kernel, strides, dilations):
        out = math.ceil(int(size) / s)
        total = max((out - 1) * s + (kk - 1) * d + 1 - int(size), 0)
        small, large = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else large)
        ends.append(large if mode == "SAME_UPPER" else small)
    return begins + ends


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b_1..b_k, e_1..e_k] -> F.pad's order (last dimension first, begin then end)."""
    k = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(k)):
        out += [pads[i], pads[k + i]]
    return out


def _symmetric(pads: list[int]) -> list[int] | None:
    k = len(pads) // 2
    return pads[:k] if pads[:k] == pads[k:] else None


def _conv(a: Attrs, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    k = w.dim() - 2
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides = list(a.get("strides", [1] * k))
    dilations = list(a.get("dilations", [1] * k))
    pads = _spatial_pads(x, a, kernel, strides, dilations)
    padding = _symmetric(pads)
    if padding is None:
        x, padding = F.pad(x, _torch_pad(pads)), [0] * k
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(k)
    if conv is None:
        raise Unsupported(f"Conv over {k} spatial dimensions")
    return conv(x, w, b, strides, padding, dilations, int(a.get("group", 1)))


def _pool(kind: str) -> Callable[..., Tensor]:
    def run(a: Attrs, x: Tensor) -> Tensor:
        kernel = list(a["kernel_shape"])
        k = len(kernel)
        strides = list(a.get("strides", [1] * k))
        dilations = list(a.get("dilations", [1] * k))
        pads = _spatial_pads(x, a, kernel, strides, dilations)
        padding = _symmetric(pads)
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}.get(k)
            if pool is None:
                raise Unsupported(f"MaxPool over {k} spatial dimensions")
            if padding is not None and all(p <= kk // 2 for p, kk in zip(padding, kernel)):
                return pool(x, kernel, strides, padding, dilations, ceil_mode=ceil)
            # Pads torch cannot take: padded here with -inf, and the output cut to ONNX's size
            # (with ceil_mode the last window must start inside the input or its begin pads;
            # on the padded tensor torch would also let one start in the end pads).
            sizes = [int(v) for v in x.shape[2:]]
            out = pool(F.pad(x, _torch_pad(pads), value=-math.inf), kernel, strides, [0] * k, dilations,
                       ceil_mode=ceil)
            for i, (size, kk, st, d) in enumerate(zip(sizes, kernel, strides, dilations)):
                span = size + pads[i] + pads[k + i] - d * (kk - 1) - 1
                n = (-(-span // st) if ceil else span // st) + 1
                if ceil and (n - 1) * st >= size + pads[i]:
                    n -= 1
                out = out.narrow(2 + i, 0, n)
            return out
        if padding is None or any(d != 1 for d in dilations):
            raise Unsupported("AveragePool with asymmetric pads or dilations")
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}.get(k)
        if pool is None:
            raise Unsupported(f"AveragePool over {k} spatial dimensions")
        return pool(x, kernel, strides, padding, ceil_mode=ceil,
                    count_include_pad=bool(a.get("count_include_pad", 0)))
    return run


# ---------------------------------------------------------------------------- shape arithmetic


def _reshape(a: Attrs, x: Tensor, shape: Tensor) -> Tensor:
    dims = _ints(shape) or []
    if not a.get("allowzero", 0):  # 0 copies the input's dimension
        dims = [int(x.shape[i]) if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _flatten(a: Attrs, x: Tensor) -> Tensor:
    axis = int(a.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _unsqueeze(a: Attrs, x: Tensor, axes: Tensor | None = None) -> Tensor:
    wanted = _axes(a, [x, axes], 1) or []
    rank = x.dim() + len(wanted)
    for ax in sorted(ax + rank if ax < 0 else ax for ax in wanted):
        x = x.unsqueeze(ax)
    return x


def _squeeze(a: Attrs, x: Tensor, axes: Tensor | None = None) -> Tensor:
    wanted = _axes(a, [x, axes], 1)
    if not wanted:
        return x.squeeze()
    dims = sorted((ax + x.dim() if ax < 0 else ax for ax in wanted), reverse=True)
    for ax in dims:
        x = x.squeeze(ax)
    return x


def _gather(a: Attrs, data: Tensor, idx: Tensor) -> Tensor:
    axis = int(a.get("axis", 0))
    axis = axis + data.dim() if axis < 0 else axis
    idx = idx.long()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    picked = data.index_select(axis, idx.reshape(-1))
    return picked.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1:]))


def _slice(a: Attrs, x: Tensor, starts: Tensor | None = None, ends: Tensor | None = None,
           axes: Tensor | None = None, steps: Tensor | None = None) -> Tensor:
    if "starts" in a:  # opset < 10: attributes
        s, e, ax, st = list(a["starts"]), list(a["ends"]), a.get("axes"), None
    else:
        s, e, ax, st = _ints(starts), _ints(ends), _ints(axes), _ints(steps)
    assert s is not None and e is not None
    ax = list(ax) if ax is not None else list(range(len(s)))
    st = st or [1] * len(s)
    index: list[slice] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(s, e, ax, st):
        if step < 1:
            raise Unsupported("Slice with a negative step")
        index[axis + x.dim() if axis < 0 else axis] = slice(start, end, step)
    return x[tuple(index)]


def _concat(a: Attrs, *xs: Tensor) -> Tensor:
    return torch.cat(xs, dim=int(a["axis"]))


def _shape(a: Attrs, x: Tensor) -> Tensor:
    dims = list(x.shape)
    return torch.tensor(dims[int(a.get("start", 0)):a.get("end", len(dims))], dtype=torch.int64, device=x.device)


def _expand(a: Attrs, x: Tensor, shape: Tensor) -> Tensor:
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape) or [])))


_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.BOOL: torch.bool,
}


def _cast(a: Attrs, x: Tensor) -> Tensor:
    dtype = _DTYPES.get(int(a["to"]))
    if dtype is None:
        raise Unsupported(f"Cast to ONNX type {a['to']}")
    return x.to(dtype)


def _constant(a: Attrs) -> Tensor:
    if "value" in a:
        return a["value"]
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    raise Unsupported(f"Constant with {sorted(a)}")


def _constant_of_shape(a: Attrs, shape: Tensor) -> Tensor:
    value = a.get("value", torch.zeros(1, dtype=torch.float32)).to(shape.device)
    return value.reshape(()).expand(*(_ints(shape) or [])).clone()


# --------------------------------------------------------------------------- dense and norms


def _gemm(a: Attrs, x: Tensor, w: Tensor, c: Tensor | None = None) -> Tensor:
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    y = float(a.get("alpha", 1.0)) * (x @ w)
    return y if c is None else y + float(a.get("beta", 1.0)) * c


def _batch_norm(a: Attrs, x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    if a.get("training_mode", 0):
        raise Unsupported("BatchNormalization in training mode")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(a.get("epsilon", 1e-5)))


def _group_norm(opset: int) -> Callable[..., Tensor]:
    def run(a: Attrs, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
        groups = int(a["num_groups"])
        if opset < 21 and scale.numel() == groups:  # opsets 18-20: one scale and bias per group
            per_group = int(x.shape[1]) // groups
            scale, bias = scale.repeat_interleave(per_group), bias.repeat_interleave(per_group)
        return F.group_norm(x, groups, scale, bias, float(a.get("epsilon", 1e-5)))
    return run


def _instance_norm(a: Attrs, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=float(a.get("epsilon", 1e-5)))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _pad(a: Attrs, x: Tensor, pads: Tensor | None = None, value: Tensor | None = None,
         axes: Tensor | None = None) -> Tensor:
    """ONNX Pad: pads (begins then ends) as an attribute (before opset 11) or an input, over
    every dimension or over ``axes`` (opset 18)."""
    mode = a.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise Unsupported(f"Pad mode {mode!r}")
    given = list(a["pads"]) if "pads" in a else (_ints(pads) or [])
    dims = [d + x.dim() if d < 0 else d for d in (_ints(axes) if axes is not None else range(x.dim()))]
    full = [0] * (2 * x.dim())
    for i, d in enumerate(dims):
        full[d], full[x.dim() + d] = given[i], given[len(dims) + i]
    order = _torch_pad(full)  # last dimension first
    while len(order) > 2 and order[-2:] == [0, 0]:  # leading dimensions left as they are
        order = order[:-2]
    if mode != "constant":
        return F.pad(x, order, mode=_PAD_MODES[mode])
    fill = float(a.get("value", 0.0)) if value is None or value.numel() == 0 else float(value.reshape(-1)[0])
    return F.pad(x, order, value=fill)


def _layer_norm(a: Attrs, x: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    axis = int(a.get("axis", -1))
    axis = axis + x.dim() if axis < 0 else axis
    return F.layer_norm(x, tuple(x.shape[axis:]), scale, bias, float(a.get("epsilon", 1e-5)))


def _softmax(fn: Callable[..., Tensor], opset: int) -> Callable[..., Tensor]:
    def run(a: Attrs, x: Tensor) -> Tensor:
        if opset >= 13:
            return fn(x, dim=int(a.get("axis", -1)))
        # Before opset 13: over everything from ``axis`` on, the input seen as 2-D.
        axis = int(a.get("axis", 1))
        axis = axis + x.dim() if axis < 0 else axis
        return fn(x.reshape(math.prod(x.shape[:axis]), -1), dim=1).reshape(x.shape)
    return run


def _reduce(fn: str) -> Callable[..., Tensor]:
    def run(a: Attrs, x: Tensor, axes: Tensor | None = None) -> Tensor:
        wanted = _axes(a, [x, axes], 1)  # an input from opset 13 (ReduceSum) or 18 (others)
        keep = bool(a.get("keepdims", 1))
        if not wanted:
            if a.get("noop_with_empty_axes", 0):
                return x
            wanted = list(range(x.dim()))
        dims = tuple(ax + x.dim() if ax < 0 else ax for ax in wanted)
        if fn in ("max", "min"):
            return (x.amax if fn == "max" else x.amin)(dim=dims, keepdim=keep)
        return getattr(torch, fn)(x, dim=dims, keepdim=keep)
    return run


def _arg(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def run(a: Attrs, x: Tensor) -> Tensor:
        if a.get("select_last_index", 0):
            raise Unsupported("ArgMax/ArgMin with select_last_index")
        return fn(x, dim=int(a.get("axis", 0)), keepdim=bool(a.get("keepdims", 1)))
    return run


def _split(a: Attrs, x: Tensor, sizes: Tensor | None = None) -> tuple[Tensor, ...]:
    axis = int(a.get("axis", 0))
    given = list(a["split"]) if "split" in a else _ints(sizes)
    if given:
        return tuple(torch.split(x, given, dim=axis))
    parts = int(a["num_outputs"]) if "num_outputs" in a else int(a["_outputs"])
    return tuple(torch.split(x, -(-int(x.shape[axis]) // parts), dim=axis))  # the last may be smaller


def _clip(a: Attrs, x: Tensor, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor:
    low = lo if lo is not None else a.get("min")
    high = hi if hi is not None else a.get("max")
    return torch.clamp(x, min=None if low is None else float(low), max=None if high is None else float(high))


def _div(a: Attrs, x: Tensor, y: Tensor) -> Tensor:
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")  # ONNX integer division truncates
    return x / y


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    def run(a: Attrs, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out
    return run


def _unary(fn: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda a, x: fn(x)


def _operators(opset: int) -> dict[str, Callable[..., Tensor]]:
    return {
        "Add": lambda a, x, y: x + y, "Sub": lambda a, x, y: x - y, "Mul": lambda a, x, y: x * y,
        "Div": _div, "Pow": lambda a, x, y: torch.pow(x, y).to(x.dtype),  # ONNX: the base's type
        "Sum": _variadic(torch.add), "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum),
        "Neg": _unary(torch.neg), "Abs": _unary(torch.abs), "Exp": _unary(torch.exp),
        "Log": _unary(torch.log), "Sqrt": _unary(torch.sqrt), "Reciprocal": _unary(torch.reciprocal),
        "Relu": _unary(F.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
        "Erf": _unary(torch.erf), "Softplus": _unary(F.softplus), "Identity": _unary(lambda x: x),
        "Dropout": lambda a, x, *rest: x,
        "LeakyRelu": lambda a, x: F.leaky_relu(x, float(a.get("alpha", 0.01))),
        "Elu": lambda a, x: F.elu(x, float(a.get("alpha", 1.0))),
        "Selu": lambda a, x: float(a.get("gamma", 1.0507009873554805)) * torch.where(
            x > 0, x, float(a.get("alpha", 1.6732632423543772)) * (torch.exp(x) - 1)),
        "Gelu": lambda a, x: F.gelu(x, approximate=a.get("approximate", "none")),
        "HardSigmoid": lambda a, x: torch.clamp(float(a.get("alpha", 0.2)) * x + float(a.get("beta", 0.5)), 0, 1),
        "HardSwish": _unary(F.hardswish), "Clip": _clip,
        "Softmax": _softmax(torch.softmax, opset), "LogSoftmax": _softmax(torch.log_softmax, opset),
        "MatMul": lambda a, x, y: torch.matmul(x, y), "Gemm": _gemm,
        "Conv": _conv, "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
        "GlobalAveragePool": lambda a, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
        "GlobalMaxPool": lambda a, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
        "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm,
        "InstanceNormalization": _instance_norm, "GroupNormalization": _group_norm(opset), "Pad": _pad,
        "Flatten": _flatten, "Reshape": _reshape, "Transpose": lambda a, x: x.permute(
            *(a["perm"] if "perm" in a else reversed(range(x.dim())))),
        "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Concat": _concat, "Gather": _gather,
        "Slice": _slice, "Shape": _shape, "Expand": _expand, "Cast": _cast,
        "Constant": _constant, "ConstantOfShape": _constant_of_shape,
        "ReduceMean": _reduce("mean"), "ReduceSum": _reduce("sum"), "ReduceMax": _reduce("max"),
        "ReduceMin": _reduce("min"), "ReduceLogSumExp": _reduce("logsumexp"),
        "Einsum": lambda a, *xs: torch.einsum(a["equation"], *xs),
        "ArgMax": _arg(torch.argmax), "ArgMin": _arg(torch.argmin),
        "Where": lambda a, c, x, y: torch.where(c, x, y),
        "Equal": lambda a, x, y: x == y, "Greater": lambda a, x, y: x > y, "Less": lambda a, x, y: x < y,
        "GreaterOrEqual": lambda a, x, y: x >= y, "LessOrEqual": lambda a, x, y: x <= y,
        "Not": _unary(torch.logical_not), "And": lambda a, x, y: x & y, "Or": lambda a, x, y: x | y,
        "Split": _split, "Tile": lambda a, x, repeats: x.repeat(*(_ints(repeats) or [])),
    }


# Operators whose every output is computed (the others compute their first output only).
MULTI_OUTPUT = frozenset({"Split"})


SUPPORTED = tuple(sorted(_operators(21)))


class OnnxGraph(nn.Module):
    """``forward(x)`` -> the graph's outputs (a tuple), computed by torch operations so that
    gradients reach ``x``. The initializers are buffers: fixed, moved with ``.to(device)``."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        ops = _operators(opset)
        foreign = sorted({f"{n.domain}.{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")})
        unknown = sorted({n.op_type for n in graph.node if n.domain in ("", "ai.onnx") and n.op_type not in ops})
        if foreign or unknown:
            raise Unsupported(f"operators without a PyTorch translation here: {', '.join(foreign + unknown)}")
        if len(graph.output) < 1:
            raise Unsupported("a graph without outputs")
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        extra = sorted({n.op_type for n in graph.node for name in n.output[1:]
                        if name in used and n.op_type not in MULTI_OUTPUT})
        if extra:  # only a node's first output is computed
            raise Unsupported(f"second outputs of {', '.join(extra)} are used")
        inits = {t.name for t in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in inits]
        if len(inputs) != 1:
            raise Unsupported(f"one graph input expected, got {inputs}")
        self.input_name = inputs[0]
        self.output_names = [o.name for o in graph.output]
        self._names: dict[str, str] = {}
        for i, t in enumerate(graph.initializer):
            self._names[t.name] = f"w{i}"
            self.register_buffer(f"w{i}", torch.as_tensor(numpy_helper.to_array(t).copy()), persistent=False)
        self._steps: list[tuple[Callable[..., Any], Attrs, list[str], list[str]]] = []
        for i, n in enumerate(graph.node):
            attrs = Attrs.of(n)
            if n.op_type == "Constant":  # a buffer like the initializers, so that it moves with the graph
                self._names[n.output[0]] = f"c{i}"
                self.register_buffer(f"c{i}", _constant(attrs), persistent=False)
                continue
            if n.op_type in MULTI_OUTPUT:
                attrs["_outputs"] = len(n.output)
            self._steps.append((ops[n.op_type], attrs, list(n.input), list(n.output)))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        values: dict[str, Tensor] = {self.input_name: x}
        for name, buffer in self._names.items():
            values[name] = getattr(self, buffer)
        for run, attrs, ins, outs in self._steps:
            args = [values[n] if n else None for n in ins]
            while args and args[-1] is None:  # trailing optional inputs left out
                args.pop()
            result = run(attrs, *args)
            if isinstance(result, tuple):
                values.update(zip(outs, result))
            else:
                values[outs[0]] = result
        return tuple(values[n] for n in self.output_names)


def translate(path: Any) -> OnnxGraph:
    """The graph of an ONNX file as an ``OnnxGraph``; raises Unsupported with the reason."""
    return OnnxGraph(onnx.load(str(path)))


def largest_difference(graph: OnnxGraph, feed: np.ndarray, expected: list[np.ndarray]) -> float:
    """Largest |difference| between the translation's outputs on ``feed`` and ``expected``
    (ONNX Runtime's), relative to the size of the expected values (at least 1)."""
    device = next(graph.buffers(), torch.empty(0)).device
    with torch.no_grad():
        got = graph(torch.as_tensor(feed, device=device))
    worst = [0.0]
    for g, e in zip(got, expected):
        e = np.asarray(e, dtype=np.float64)
        g = g.detach().double().cpu().numpy().reshape(e.shape)
        scale = max(1.0, float(np.abs(e).max(initial=0.0)))
        worst.append(float(np.abs(g - e).max(initial=0.0)) / scale)
    return float(np.max(worst))  # NaN when any output differs by NaN (Python's max would drop it)
