"""Append a cross-entropy loss and its reverse-mode gradient to a copy of a model.

The result is an ordinary ONNX model in the default domain that onnxruntime runs
like any other: the forward graph is kept as it is, the loss and the backward
nodes are appended, and the outputs become the mean loss, dL/dw for the requested
initializers and (on request) dL/dz and z for named intermediate tensors.

The loss is softmax cross-entropy of the logits against int64 labels, averaged
over the batch. A label below 0 means "no label": the model's own top-1 class
(ArgMax inside the graph) is used instead. That pseudo-label loss, not a
distillation loss, is what makes label-free gradients informative: KL(p_orig ‖ p)
against the unpruned model's own outputs is minimised (zero) exactly at the
current weights, because the model *is* its teacher there, so its gradient is
zero and every gradient criterion would score all weights 0. Cross-entropy against
the hard top-1 is not at a minimum (its optimum pushes p(top-1) to 1), so it keeps
a gradient that says how much each weight supports the current decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune.autodiff.emit import FLOAT_TYPES, Emitter, constant_values, tensor_infos
from onnxprune.autodiff.errors import GradientUnavailable
from onnxprune.autodiff.rules import RULES, Call, Rule
from onnxprune.errors import UsageError

MIN_OPSET = 13  # ReduceSum/Split/Squeeze/Unsqueeze take axes as inputs from here on


@dataclass(frozen=True)
class BackwardModel:
    """A model extended with loss and gradients, and where to find each result.

    `labels` is an extra int64 input of shape [N] (or [1], broadcast over the batch);
    entries < 0 ask for the model's own top-1 as the label. The maps go from the
    tensor the caller asked about to the graph output that holds the answer.
    """

    model: onnx.ModelProto
    logits: str
    labels: str
    loss: str
    samples: str  # int64 scalar output: the batch size N of the logits
    classes: int | None  # C of the logits [N, C] when static
    weight_grads: dict[str, str]
    activation_grads: dict[str, str]
    activation_values: dict[str, str]


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise GradientUnavailable("the model imports no default-domain opset")


def ensure_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model itself if its opset is >= 13, else an upgraded copy (or a clear error)."""
    version = default_opset(model)
    if version >= MIN_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors and more
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise GradientUnavailable(
            f"model opset {version} is below {MIN_OPSET} and could not be upgraded ({first}); "
            f"re-export it with opset >= {MIN_OPSET}"
        ) from exc


def build_gradient_model(
    model: onnx.ModelProto,
    wrt: Sequence[str] | None = None,
    activations: Sequence[str] | None = None,
    output: str | None = None,
    labels_name: str = "labels",
) -> BackwardModel:
    """Build the loss + backward graph for `model` (weights as initializers).

    wrt: initializers to differentiate; None means every float initializer the loss
    depends on through a differentiable input (BatchNormalization statistics
    included), [] means none (a loss-only model). activations: intermediate tensors
    whose gradient dL/dz and value z are also exposed. output: the logits [N, C]
    (default: the first graph output). Raises GradientUnavailable naming the first
    node on a requested path that has no backward rule.
    """
    skeleton, stubs = _set_weights_aside(model)
    skeleton = ensure_opset(skeleton)
    infos = tensor_infos(skeleton)
    model = _restore_weights(skeleton, stubs)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = _topological(list(graph.node), {i.name for i in graph.input} | set(inits))
    requested = output or graph.output[0].name
    if requested not in {o.name for o in graph.output}:
        raise UsageError(f"'{requested}' is not a graph output of the model")
    logits = _trace_logits(requested, nodes, infos)
    _check_logits(logits, infos.get(logits))

    defined = set(inits) | {i.name for i in graph.input} | {o for n in nodes for o in n.output}
    floats = [t.name for t in graph.initializer if t.data_type in FLOAT_TYPES]
    acts = list(dict.fromkeys(activations or []))
    for name in acts:
        if name not in defined or name in inits:
            raise UsageError(f"activation '{name}' is not a tensor computed by the model")

    slots = {id(n): _slots(n, RULES.get(n.op_type) if _default_domain(n) else None) for n in nodes}
    reaches_loss = _reaches(logits, nodes, slots)
    if wrt is None:
        weights = [n for n in floats if n in reaches_loss]
    else:
        weights = list(dict.fromkeys(wrt))
        for name in weights:
            if name not in inits:
                raise UsageError(f"'{name}' is not an initializer of the model")
            if name not in floats:
                raise UsageError(f"initializer '{name}' is not floating point")
    active = _depends_on(set(weights) | set(acts), nodes, slots, infos) & reaches_loss

    taken = defined | {n.name for n in nodes} | {v.name for v in graph.value_info}
    taken |= {o.name for o in graph.output}
    e = Emitter(taken, infos, constant_values(model), default_opset(model))
    labels = e.reserve(labels_name)
    loss, samples, dlogits = _emit_loss(e, logits, labels)

    totals = _backward(e, nodes, slots, active, logits, dlogits)

    outputs: list[onnx.ValueInfoProto] = []
    loss_out = _expose(e, loss, "loss", infos[logits].elem_type, (), outputs)
    samples_out = _expose(e, samples, "samples", TensorProto.INT64, (), outputs)
    weight_grads = {}
    for name in weights:
        grad = totals(name) or _zeros(e, name, tuple(inits[name].dims))
        dims = tuple(inits[name].dims)
        weight_grads[name] = _expose(e, grad, f"grad:{name}", inits[name].data_type, dims, outputs)
    act_grads, act_values = {}, {}
    for name in acts:
        info = e.info(name)
        grad = totals(name) or e.zeros_like(name)
        act_grads[name] = _expose(e, grad, f"grad:{name}", info.elem_type, info.shape, outputs)
        act_values[name] = _expose(e, name, f"value:{name}", info.elem_type, info.shape, outputs)

    del graph.node[:]
    graph.node.extend([*nodes, *e.nodes])
    graph.initializer.extend(e.initializers)
    del graph.output[:]
    graph.output.extend(outputs)
    graph.input.append(helper.make_tensor_value_info(labels, TensorProto.INT64, ["label_count"]))
    classes = e.shape(logits)[1]
    return BackwardModel(
        model=model,
        logits=logits,
        labels=labels,
        loss=loss_out,
        samples=samples_out,
        classes=classes if isinstance(classes, int) else None,
        weight_grads=weight_grads,
        activation_grads=act_grads,
        activation_values=act_values,
    )


# Initializers above this many elements stand aside (as typed graph inputs) while the
# opset converter and shape inference run: they only need shapes, and serialising
# hundreds of MB of weights for each of them dominated the build time.
STUB_LIMIT = 4096


def _set_weights_aside(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """A copy of `model` whose large initializers are replaced by graph inputs of the
    same type and shape (the caller's model is not touched, its weights not copied)."""
    skeleton = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(skeleton, field.name, value)
    graph = model.graph
    for field, value in graph.ListFields():
        if field.name != "initializer":
            _copy_field(skeleton.graph, field.name, value)
    listed = {i.name for i in graph.input}
    stubs: dict[str, tuple[onnx.TensorProto, bool]] = {}
    for init in graph.initializer:
        if int(np.prod(init.dims, dtype=np.int64)) <= STUB_LIMIT:
            skeleton.graph.initializer.append(init)
            continue
        stubs[init.name] = (init, init.name not in listed)
        if init.name not in listed:
            info = helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            skeleton.graph.input.append(info)
    return skeleton, stubs


def _restore_weights(skeleton: onnx.ModelProto, stubs: dict) -> onnx.ModelProto:
    added = {name for name, (_, stub_input) in stubs.items() if stub_input}
    kept = [i for i in skeleton.graph.input if i.name not in added]
    del skeleton.graph.input[:]
    skeleton.graph.input.extend(kept)
    skeleton.graph.initializer.extend(init for init, _ in stubs.values())
    return skeleton


def _copy_field(target: object, name: str, value: object) -> None:
    if isinstance(value, int | float | str | bytes):
        setattr(target, name, value)
    elif hasattr(value, "CopyFrom"):
        getattr(target, name).CopyFrom(value)
    else:
        getattr(target, name).extend(value)


_SHAPE_ONLY = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def _trace_logits(output: str, nodes: list[onnx.NodeProto], infos: dict) -> str:
    """The logits behind `output`: the input of a class-axis Softmax that produces it
    (possibly through reshapes), else `output` itself.

    Cross-entropy needs logits; many exported classifiers end in Softmax, and the
    softmax of probabilities is not the loss any of them was trained with.
    """
    producers = {o: n for n in nodes for o in n.output}
    name = output
    while name in producers and producers[name].op_type in _SHAPE_ONLY:
        name = producers[name].input[0]
    node = producers.get(name)
    if node is None or node.op_type != "Softmax" or not _default_domain(node):
        return output
    source = node.input[0]
    shape = infos[source].shape if source in infos else None
    if shape is None:
        return output
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1) % len(shape)
    if axis == 1 and all(d == 1 for d in shape[2:]):
        return source
    return output


def _check_logits(name: str, info: object) -> None:
    shape = getattr(info, "shape", None)
    elem = getattr(info, "elem_type", 0)
    if elem not in (TensorProto.FLOAT, TensorProto.DOUBLE):
        raise GradientUnavailable(f"output '{name}' is not float32/float64 logits")
    if shape is not None and (len(shape) < 2 or any(d != 1 for d in shape[2:])):
        raise GradientUnavailable(
            f"output '{name}' has shape {list(shape)}; the cross-entropy loss needs "
            "[N, classes] logits (trailing 1-sized dims are accepted)"
        )


def _emit_loss(e: Emitter, logits: str, labels: str) -> tuple[str, str, str]:
    """Mean softmax cross-entropy, the batch size N, and the gradient (softmax − one-hot)/N.

    Logits shaped [N, C, 1, …] are flattened to [N, C] and the gradient reshaped back.
    """
    original = logits
    if e.rank(logits) != 2:
        logits = e.node("Flatten", [original], "loss/flat_logits", axis=1)
    log_probs = e.node("LogSoftmax", [logits], "loss/log_probs", axis=1)
    top1 = e.node("ArgMax", [logits], "loss/top1", axis=1, keepdims=0)
    unlabeled = e.node("Less", [labels, e.const(np.asarray(0, np.int64))], "loss/unlabeled")
    target = e.unsqueeze(e.node("Where", [unlabeled, top1, labels], "loss/target"), [1])
    picked = e.node("GatherElements", [log_probs, target], "loss/picked", axis=1)
    mean = e.node("ReduceMean", [picked], "loss/mean", keepdims=0)
    loss = e.node("Neg", [mean], "loss/value")

    classes_dim = e.shape(original)[1]
    if isinstance(classes_dim, int):
        classes = e.const(np.arange(classes_dim, dtype=np.int64), "loss/classes")
    else:
        count = e.node("Gather", [e.shape_of(original), e.const(np.asarray(1, np.int64))])
        zero, one = e.const(np.asarray(0, np.int64)), e.const(np.asarray(1, np.int64))
        classes = e.node("Range", [zero, count, one], "loss/classes")
    elem = e.elem_type(original)
    onehot = e.node("Cast", [e.node("Equal", [target, classes])], "loss/onehot", to=elem)
    samples = e.node("Gather", [e.shape_of(original), e.const(np.asarray(0, np.int64))], "loss/n")
    batch = e.node("Cast", [samples], "loss/n_float", to=elem)
    probs = e.node("Exp", [log_probs], "loss/probs")
    residual = e.node("Sub", [probs, onehot], "loss/residual")
    dlogits = e.node("Div", [residual, batch], "loss/dlogits")
    if logits != original:
        dlogits = e.reshape_like(dlogits, original)
    return loss, samples, dlogits


def _backward(
    e: Emitter,
    nodes: list[onnx.NodeProto],
    slots: dict[int, list[int]],
    active: set[str],
    logits: str,
    dlogits: str,
):
    """Walk the nodes in reverse, calling each rule; returns a lookup of summed gradients."""
    contributions: dict[str, list[str]] = {logits: [dlogits]}
    summed: dict[str, str] = {}

    def total(name: str) -> str | None:
        if name not in summed:
            terms = contributions.get(name)
            if not terms:
                return None
            summed[name] = e.sum(terms, "grad_acc")
        return summed[name]

    for node in reversed(nodes):
        if not any(o in active for o in node.output if o):
            continue
        rule = RULES.get(node.op_type) if _default_domain(node) else None
        if rule is None:
            domain = f"{node.domain}::" if not _default_domain(node) else ""
            label = node.name or node.output[0]
            raise GradientUnavailable(
                f"no backward rule for {domain}{node.op_type} (node '{label}') on the path "
                "to the loss; gradient criteria are unavailable for this model"
            )
        wanted = frozenset(i for i in slots[id(node)] if node.input[i] in active)
        grads = [total(o) if o in active else None for o in node.output]
        if not wanted or all(g is None for g in grads):
            continue
        call = Call(e, node, grads, wanted)
        try:
            result = rule.backward(call)
        except GradientUnavailable as exc:
            if str(exc).startswith("cannot differentiate"):
                raise
            raise call.unsupported(str(exc)) from exc
        for i, grad in result.items():
            contributions.setdefault(node.input[i], []).append(grad)
    return total


def _expose(
    e: Emitter,
    tensor: str,
    name: str,
    elem: int,
    shape: Iterable[object] | None,
    outputs: list[onnx.ValueInfoProto],
) -> str:
    """Publish `tensor` as a graph output under a fresh version of `name`."""
    out = e.reserve(name)
    e.node("Identity", [tensor], "out", outputs=[out])
    dims = None if shape is None else [d if isinstance(d, int | str) else None for d in shape]
    outputs.append(helper.make_tensor_value_info(out, elem, dims))
    return out


def _zeros(e: Emitter, like: str, dims: tuple[int, ...]) -> str:
    fill = helper.make_tensor("value", e.elem_type(like), [1], [0])
    return e.node("ConstantOfShape", [e.ints(dims)], "zeros", value=fill)


def _default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _slots(node: onnx.NodeProto, rule: Rule | None) -> list[int]:
    """Input slots through which a gradient may flow (every slot for unknown ops)."""
    present = [i for i, name in enumerate(node.input) if name]
    if rule is None or rule.inputs is None:
        return present
    return [i for i in rule.inputs if i in present]


def _implicit_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope tensors read inside If/Loop/Scan bodies (not listed as node inputs)."""
    names: set[str] = set()
    for attr in node.attribute:
        bodies = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for body in bodies:
            for inner in body.node:
                names.update(i for i in inner.input if i)
                names |= _implicit_inputs(inner)
    return names


def _reaches(target: str, nodes: list[onnx.NodeProto], slots: dict[int, list[int]]) -> set[str]:
    """Tensors the target depends on through differentiable inputs (the target included)."""
    needed = {target}
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o):
            needed.update(node.input[i] for i in slots[id(node)])
            if node.op_type not in RULES or not _default_domain(node):
                needed |= _implicit_inputs(node)
    return needed


def _depends_on(
    sources: set[str],
    nodes: list[onnx.NodeProto],
    slots: dict[int, list[int]],
    infos: dict,
) -> set[str]:
    """Float tensors that depend on a source through differentiable inputs."""
    reached = set(sources)
    for node in nodes:
        inputs = [node.input[i] for i in slots[id(node)]]
        if node.op_type not in RULES or not _default_domain(node):
            inputs += sorted(_implicit_inputs(node))
        if any(i in reached for i in inputs):
            for out in node.output:
                elem = infos[out].elem_type if out in infos else 0
                if out and (elem == 0 or elem in FLOAT_TYPES):
                    reached.add(out)
    return reached


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """The nodes in an order where every input is produced first (ONNX asks for it, but
    not every producer complies)."""
    produced = set(available) | {""}
    if all(_ready(n, produced) and not produced.update(n.output) for n in nodes):
        return nodes
    produced = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        ready = [n for n in pending if _ready(n, produced)]
        if not ready:  # a cycle or a missing input: keep the given order for the rest
            ordered.extend(pending)
            break
        for n in ready:
            produced.update(n.output)
        ordered.extend(ready)
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    return ordered


def _ready(node: onnx.NodeProto, produced: set[str]) -> bool:
    return all(i in produced for i in node.input)
