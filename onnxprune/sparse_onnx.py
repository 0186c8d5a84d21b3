"""Pruned weights as ONNX sparse initializers, so the model file itself shrinks.

A `graph.sparse_initializer` is a COO SparseTensorProto: `values` (named like the dense
initializer it replaces, shape [nnz]) and `indices` (int64 [nnz], linear positions in
ascending order into the dense `dims`). onnxruntime turns them back into dense tensors
when it loads the model, so outputs are those of the dense zeroed model, bit for bit.

onnx's shape inference types a sparse initializer as `sparse_tensor` without a tensor
shape, so `onnx.checker`'s full check rejects it as a Conv/Gemm/MatMul input (an onnx
limitation, not a model error). Such a model is therefore checked structurally, and
proven by running it in onnxruntime against the dense model it came from, which itself
passed the full check in the verify pass.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.errors import VerificationError
from onnxprune.fidelity import session


def sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """The dense array of a COO sparse tensor (linear [nnz] or coordinate [nnz, rank])."""
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    shape = tuple(int(d) for d in sparse.dims)
    flat = np.zeros(math.prod(shape), dtype=values.dtype)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), shape) if indices.size else indices[:, 0]
    flat[indices] = values
    return flat.reshape(shape)


def weight_arrays(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Dense values of the named initializers, whether stored dense or sparse."""
    wanted = set(names)
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in wanted}
    for sp in model.graph.sparse_initializer:
        if sp.values.name in wanted:
            out[sp.values.name] = sparse_to_dense(sp)
    return out


def densify(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every sparse initializer stored dense again."""
    dense = copy.deepcopy(model)
    for sp in dense.graph.sparse_initializer:
        dense.graph.initializer.append(numpy_helper.from_array(sparse_to_dense(sp), sp.values.name))
    del dense.graph.sparse_initializer[:]
    return dense


def to_sparse_initializers(
    model: onnx.ModelProto, names: Sequence[str]
) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """A copy storing each named initializer as a sparse initializer where that is smaller.

    COO costs 8 index bytes per stored value, so a tensor stays dense unless fewer than
    about itemsize/(itemsize + 8) of its entries are non-zero; each row of the returned
    list says which it was and the bytes either way.
    """
    out = copy.deepcopy(model)
    wanted = set(names)
    kept: list[onnx.TensorProto] = []
    rows: list[dict[str, Any]] = []
    for init in out.graph.initializer:
        if init.name not in wanted:
            kept.append(init)
            continue
        array = numpy_helper.to_array(init)
        flat = array.reshape(-1)
        positions = np.flatnonzero(flat)
        sparse = helper.make_sparse_tensor(
            numpy_helper.from_array(flat[positions], init.name),
            numpy_helper.from_array(positions.astype(np.int64)),
            list(array.shape),
        )
        row = {
            "name": init.name,
            "nnz": int(positions.size),
            "dense_bytes": init.ByteSize(),
            "sparse_bytes": sparse.ByteSize(),
        }
        if positions.size == 0:
            row["stored"], row["reason"] = "dense", "no non-zero value"
            kept.append(init)
        elif sparse.ByteSize() >= init.ByteSize():
            row["stored"], row["reason"] = "dense", "COO would be larger than dense"
            kept.append(init)
        else:
            row["stored"] = "sparse"
            out.graph.sparse_initializer.append(sparse)
        rows.append(row)
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out, rows


def check_sparse_model(
    sparse: onnx.ModelProto,
    dense: onnx.ModelProto,
    batches: Iterable[Mapping[str, np.ndarray]],
) -> int:
    """Check the sparse-initializer model and that its outputs equal the dense model's
    exactly on every batch; returns the samples compared. Raises VerificationError."""
    try:
        onnx.checker.check_model(sparse)  # structure; types and shapes: see the module doc
    except onnx.checker.ValidationError as exc:
        raise VerificationError(f"sparse-initializer model fails onnx.checker: {exc}") from exc
    for kind in ("input", "output"):
        a, b = getattr(sparse.graph, kind), getattr(dense.graph, kind)
        if [v.SerializeToString() for v in a] != [v.SerializeToString() for v in b]:
            raise VerificationError(f"sparse-initializer model changed its graph {kind}s")
    reference, candidate = session(dense), session(sparse)
    names = [o.name for o in reference.get_outputs()]
    samples = 0
    for feeds in batches:
        for name, a, b in zip(
            names, reference.run(names, dict(feeds)), candidate.run(names, dict(feeds)), strict=True
        ):
            if not np.array_equal(a, b, equal_nan=True):
                raise VerificationError(
                    f"sparse-initializer model output '{name}' differs from the dense zeroed "
                    f"model (max |diff| {float(np.max(np.abs(a - b))):.3g}); nothing written"
                )
        samples += len(next(iter(feeds.values())))
    return samples
