"""Test helpers: running models, and the independent masking oracle.

`masked_original` builds the third model of the oracle: the original graph with a
Mul-by-mask node inserted in front of every layer that reads a pruned channel.
It shares nothing with surgery (which slices) or --mask-only (which zeroes weights)
except the plan's choice of channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxprune.depgraph import Group
from onnxprune.graph import skeleton
from onnxprune.plan import Plan


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(feeds))


def masked_original(
    reference: onnx.ModelProto, groups: Sequence[Group], plan: Plan
) -> onnx.ModelProto:
    """`reference` with every pruned channel zeroed on the input of each layer that reads it."""
    model = onnx.ModelProto()
    model.CopyFrom(reference)
    sizes = _inferred(model)
    shapes = {k: len(v) for k, v in sizes.items()}
    by_id = {g.id: g for g in groups}
    # (consumer node, input tensor) -> (axis, removed positions)
    masks: dict[tuple[str, str], tuple[int, set[int]]] = {}
    for gplan in plan.groups:
        group = by_id[gplan.group]
        removed = np.asarray(gplan.removed, dtype=np.int64)
        if removed.size == 0:
            continue
        tensors = {t.tensor: t for t in group.tensors}
        for param in group.params:
            if param.role != "in":
                continue
            node = next(n for n in model.graph.node if n.name == param.node)
            data = node.input[0]
            ta = tensors[data]
            axis, positions = masks.get((node.name, data), (ta.axis, set()))
            positions |= set(ta.positions[removed].reshape(-1).tolist())
            masks[(node.name, data)] = (axis, positions)
    new_nodes = []
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            key = (node.name, name)
            if key not in masks:
                continue
            axis, positions = masks[key]
            rank = shapes[name]
            size = sizes[name][axis]
            vec = np.ones(size, dtype=np.float32)
            vec[sorted(positions)] = 0
            shape = [1] * rank
            shape[axis] = size
            mask_name = f"{name}__mask_for_{node.name}"
            model.graph.initializer.append(numpy_helper.from_array(vec.reshape(shape), mask_name))
            masked = f"{name}__masked_for_{node.name}"
            new_nodes.append(helper.make_node("Mul", [name, mask_name], [masked]))
            node.input[i] = masked
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return model


def _inferred(model: onnx.ModelProto) -> dict[str, list]:
    # Inference on a weight-free copy: same shapes, no copy of a 500 MB model.
    inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    dims: dict[str, list] = {}
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims[v.name] = [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
    return dims


def assert_outputs_close(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], rtol: float = 1e-4
) -> None:
    """Equal to float tolerance: |a-b| <= rtol * max|a| (+ tiny absolute slack)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape
        scale = max(float(np.max(np.abs(x))), 1e-6)
        err = float(np.max(np.abs(x - y))) if x.size else 0.0
        assert err <= rtol * scale + 1e-6, f"max |diff| {err} vs scale {scale}"


def random_feeds(model: onnx.ModelProto, seed: int = 1, dynamic: int = 2) -> dict[str, np.ndarray]:
    """Seeded normal inputs for every real input; unknown dims become `dynamic`."""
    init = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = [d.dim_value if d.dim_value > 0 else dynamic for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def prune_and_check(
    model: onnx.ModelProto,
    tmp_path,
    ratio: float = 0.5,
    mask: bool = True,
    must_change: bool = True,
    **kw,
):
    """Prune `model` (uniform ratio) and hold it to the masking oracle; return the result.

    The pruned model and (with `mask`) the --mask-only model must both equal the
    original with a Mul-by-mask in front of every consumer of a removed channel.
    With `must_change`, masking must also change the output (the oracle can fail);
    random graphs may legitimately saturate (a hard sigmoid gate), so they opt out.
    """
    from onnxprune import prune

    path = str(tmp_path / "model.onnx")
    onnx.save(model, path)
    options = {"filters": ratio, "write": False, "uniform": True, "calib_samples": 4, **kw}
    result = prune(path, **options)
    if any(g.removed for g in result.plan.groups):
        feeds = random_feeds(model)
        oracle = run(masked_original(result.reference, result.groups, result.plan), feeds)
        assert_outputs_close(oracle, run(result.model, feeds))
        if must_change:  # the oracle can fail: masking changed the output
            original = run(result.reference, feeds)
            changed = [
                not np.allclose(a, o, rtol=1e-4, atol=1e-5)
                for a, o in zip(original, oracle, strict=True)
            ]
            assert any(changed), "masking changed nothing: the oracle could not fail"
        if mask:
            masked = prune(path, **{**options, "mask_only": True})
            assert [g.keep for g in masked.plan.groups] == [g.keep for g in result.plan.groups]
            assert_outputs_close(oracle, run(masked.model, feeds))
    return result


def blocked_reasons(result) -> list[str]:
    return [g.blocked for g in result.groups if g.blocked]


def prunable_roots(result) -> list[list[str]]:
    return [g.roots for g in result.groups if g.prunable]
