"""Emitting the backward graph: unique names, shared constants, opset-aware helpers.

The backward rules only describe *what* to compute; the `Emitter` decides how it is
spelled in ONNX for the model's opset (axes as inputs or attributes) and whether a
shape is a constant (known statically) or a `Shape` op evaluated at run time (a
dynamic batch dimension), so the same rule serves every model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.autodiff.errors import GradientUnavailable
from onnxprune.graph import Shape, value_shape

FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
)


@dataclass(frozen=True)
class TensorInfo:
    """Element type and shape of a tensor as ONNX shape inference reports them."""

    elem_type: int  # 0 when unknown
    shape: Shape | None  # None when even the rank is unknown


def tensor_infos(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Types and shapes of every tensor shape inference can reach, initializers included."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    infos: dict[str, TensorInfo] = {}
    graph = inferred.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        ttype = info.type.tensor_type
        infos[info.name] = TensorInfo(int(ttype.elem_type), value_shape(info))
    for init in graph.initializer:
        infos[init.name] = TensorInfo(int(init.data_type), tuple(int(d) for d in init.dims))
    return infos


def constant_values(model: onnx.ModelProto, limit: int = 4096) -> dict[str, np.ndarray]:
    """Values of small initializers and Constant-node outputs (pads, axes, scales live here;
    weights are not needed and are not decoded)."""
    values = {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if int(np.prod(t.dims, dtype=np.int64)) <= limit
    }
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if "value" in attr:
                values[node.output[0]] = numpy_helper.to_array(attr["value"])
            elif "value_ints" in attr:
                values[node.output[0]] = np.array(attr["value_ints"], np.int64)
            elif "value_int" in attr:
                values[node.output[0]] = np.array(attr["value_int"], np.int64)
            elif "value_floats" in attr:
                values[node.output[0]] = np.array(attr["value_floats"], np.float32)
            elif "value_float" in attr:
                values[node.output[0]] = np.array(attr["value_float"], np.float32)
    return values


class Emitter:
    """Appends nodes and constants for the backward graph of one model."""

    def __init__(
        self,
        taken: Iterable[str],
        infos: dict[str, TensorInfo],
        constants: dict[str, np.ndarray],
        opset: int,
    ) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.infos = infos
        self.constants = constants
        self.opset = opset
        self._taken = set(taken)
        self._counter = 0
        self._const_cache: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._shape_cache: dict[str, str] = {}

    # -- names, nodes, constants ---------------------------------------------------------

    def fresh(self, hint: str) -> str:
        """A tensor/node name not used anywhere in the model."""
        base = hint if hint not in self._taken else None
        while base is None or base in self._taken:
            self._counter += 1
            base = f"{hint}__{self._counter}"
        self._taken.add(base)
        return base

    def reserve(self, name: str) -> str:
        """`name` itself if still free, else a fresh variant of it."""
        return self.fresh(name)

    def node(
        self,
        op: str,
        inputs: Sequence[str],
        hint: str = "",
        n_out: int = 1,
        outputs: Sequence[str] | None = None,
        **attrs: object,
    ) -> str:
        """Emit one node; returns its first output (use `node_multi` for several)."""
        return self.node_multi(op, inputs, hint, n_out, outputs, **attrs)[0]

    def node_multi(
        self,
        op: str,
        inputs: Sequence[str],
        hint: str = "",
        n_out: int = 1,
        outputs: Sequence[str] | None = None,
        **attrs: object,
    ) -> list[str]:
        stem = f"bwd/{hint or op}"
        outs = list(outputs) if outputs is not None else [self.fresh(stem) for _ in range(n_out)]
        clean = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.fresh(stem), **clean))
        return outs

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        """An initializer holding `value`; identical constants are shared."""
        value = np.asarray(value, order="C")  # ascontiguousarray would make scalars 1-D
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._const_cache:
            name = self.fresh(f"bwd/{hint}")
            self.initializers.append(numpy_helper.from_array(value, name))
            self._const_cache[key] = name
        return self._const_cache[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), "ints")

    def scalar(self, value: float, like: str) -> str:
        """A scalar constant with the element type of tensor `like`."""
        return self.const(np.asarray(value, dtype=self.np_dtype(like)), "scalar")

    # -- tensor facts --------------------------------------------------------------------

    def info(self, name: str) -> TensorInfo:
        return self.infos.get(name, TensorInfo(0, None))

    def elem_type(self, name: str) -> int:
        elem = self.info(name).elem_type
        if not elem:
            raise GradientUnavailable(f"the element type of tensor '{name}' is unknown")
        return elem

    def np_dtype(self, name: str) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type(name)))

    def shape(self, name: str) -> Shape:
        shape = self.info(name).shape
        if shape is None:
            raise GradientUnavailable(f"the rank of tensor '{name}' is unknown")
        return shape

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        shape = self.info(name).shape
        if shape is None or any(not isinstance(d, int) for d in shape):
            return None
        return tuple(int(d) for d in shape)

    def static_dims(self, name: str, axes: Sequence[int], why: str) -> tuple[int, ...]:
        """Dims of `name` on `axes` that must be known to build the graph (else raise)."""
        shape = self.shape(name)
        dims = [shape[a] for a in axes]
        if any(not isinstance(d, int) for d in dims):
            raise GradientUnavailable(f"{why} needs static dims {list(axes)} of '{name}'")
        return tuple(int(d) for d in dims)

    def constant_value(self, name: str) -> np.ndarray | None:
        return self.constants.get(name) if name else None

    # -- shape-aware helpers ---------------------------------------------------------------

    def shape_of(self, name: str) -> str:
        """The shape of `name` as an int64 tensor: a constant when static, else `Shape`."""
        static = self.static_shape(name)
        if static is not None:
            return self.ints(static)
        if name not in self._shape_cache:
            self._shape_cache[name] = self.node("Shape", [name], "shape")
        return self._shape_cache[name]

    def numel(self, name: str, scalar: bool = False) -> str:
        """Element count of `name` as int64 [1] (or a scalar)."""
        static = self.static_shape(name)
        if static is not None:
            count = int(np.prod(static, dtype=np.int64))
            return self.const(np.asarray(count if scalar else [count], dtype=np.int64), "numel")
        return self.node("ReduceProd", [self.shape_of(name)], "numel", keepdims=0 if scalar else 1)

    def reshape(self, x: str, shape: str) -> str:
        return self.node("Reshape", [x, shape], "reshape")

    def reshape_like(self, x: str, like: str) -> str:
        return self.reshape(x, self.shape_of(like))

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        if list(perm) == sorted(perm):
            return x
        return self.node("Transpose", [x], "transpose", perm=list(perm))

    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: bool) -> str:
        if not axes:
            return x
        if self.opset >= 13:
            return self.node("ReduceSum", [x, self.ints(axes)], "rsum", keepdims=int(keepdims))
        return self.node("ReduceSum", [x], "rsum", axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.node("Unsqueeze", [x, self.ints(axes)], "unsqueeze")
        return self.node("Unsqueeze", [x], "unsqueeze", axes=list(axes))

    def zeros_like(self, name: str) -> str:
        fill = numpy_helper.from_array(np.zeros(1, dtype=self.np_dtype(name)), "value")
        return self.node("ConstantOfShape", [self.shape_of(name)], "zeros", value=fill)

    def mul(self, a: str, b: str) -> str:
        return self.node("Mul", [a, b], "mul")

    def scale(self, x: str, factor: float, like: str) -> str:
        if factor == 1.0:
            return x
        return self.mul(x, self.scalar(factor, like))

    def sum(self, terms: Sequence[str], hint: str = "acc") -> str:
        if len(terms) == 1:
            return terms[0]
        return self.node("Sum", list(terms), hint)

    def unbroadcast(self, grad: str, grad_shape: Shape, target: str, target_shape: Shape) -> str:
        """Sum `grad` (shaped `grad_shape`) back to `target`'s shape after broadcasting.

        Broadcast axes are the leading extra axes and the axes where the target has size
        1; they must be known statically, since reducing over a dim that is only 1 at
        run time would need a dynamic axis list.
        """
        lead = len(grad_shape) - len(target_shape)
        if lead < 0:
            raise GradientUnavailable(f"'{target}' has a higher rank than its consumer output")
        axes = list(range(lead))
        for i, dim in enumerate(target_shape):
            out_dim = grad_shape[lead + i]
            if dim == 1 and out_dim != 1:
                axes.append(lead + i)
            elif not isinstance(dim, int) and dim != out_dim and out_dim != 1:
                raise GradientUnavailable(
                    f"cannot tell whether '{target}' is broadcast on axis {i} (dim {dim!r})"
                )
        if not axes:
            return grad
        reduced = self.reduce_sum(grad, axes, keepdims=True)
        return self.reshape_like(reduced, target) if lead else reduced
