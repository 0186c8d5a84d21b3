"""Tiny hand-built ONNX models for rule tests (IR 8, opset 17 unless asked)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Accumulate nodes and random initializers, then build a checked model."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def weight(self, shape: Sequence[int], name: str | None = None, positive: bool = False) -> str:
        name = name or f"w{len(self.inits)}"
        values = self.rng.standard_normal(shape).astype(np.float32)
        if positive:
            values = np.abs(values) + 0.5
        self.inits.append(numpy_helper.from_array(values, name))
        return name

    def const(self, values: np.ndarray, name: str | None = None) -> str:
        name = name or f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> str | list[str]:
        self.count += 1
        outs = [f"{op_type.lower()}{self.count}_{i}" for i in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outs, name=f"{op_type}_{self.count}", **attrs)
        )
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, bias: bool = True, **attrs) -> str:
        inputs = [x, self.weight([cout, cin // attrs.get("group", 1), k, k])]
        if bias:
            inputs.append(self.weight([cout]))
        return self.op("Conv", inputs, pads=[k // 2] * 4, **attrs)

    def bn(self, x: str, c: int) -> str:
        return self.op(
            "BatchNormalization",
            [
                x,
                self.weight([c]),
                self.weight([c]),
                self.weight([c]),
                self.weight([c], positive=True),
            ],
        )

    def gemm(self, x: str, k: int, n: int, trans_b: int = 1) -> str:
        shape = [n, k] if trans_b else [k, n]
        return self.op("Gemm", [x, self.weight(shape), self.weight([n])], transB=trans_b)

    def model(
        self, inputs: dict[str, Sequence], outputs: Sequence[str], opset: int = 17
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "test",
            [
                helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
                for n, s in inputs.items()
            ],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8 if opset <= 19 else 10  # IR 8 knows opsets up to 19
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model, full_check=True)
        return model


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)
