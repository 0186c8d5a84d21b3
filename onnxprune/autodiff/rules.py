"""Backward rules: one entry per ONNX op type, in the table `RULES`.

A rule receives a `Call` (the forward node, its attributes, the gradient of each
output, the inputs that need a gradient) and returns the gradient of those inputs
as tensor names it emitted with the `Emitter`. Rules reuse forward tensors (inputs
and outputs stay alive in the combined graph), so nothing is recomputed except
where ONNX offers no other exact spelling (MaxPool re-run for its Indices).

`Rule.inputs` lists the differentiable input slots; the builder only follows those
when it decides which nodes lie between a requested tensor and the loss, so shape,
axes, pads or scales operands never need a gradient. Op types missing from the
table make the builder raise `GradientUnavailable` naming the node — never guess.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune.autodiff.emit import Emitter
from onnxprune.autodiff.errors import GradientUnavailable
from onnxprune.graph import Shape


@dataclass
class Call:
    """One backward invocation: the forward node and the gradients flowing into it."""

    e: Emitter
    node: onnx.NodeProto
    grads: list[str | None]  # per output; None when no gradient reaches that output
    wanted: frozenset[int]  # input slots whose gradient is needed
    attrs: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.attrs = {a.name: _attr_value(a) for a in self.node.attribute}

    @property
    def where(self) -> str:
        label = self.node.name or (self.node.output[0] if self.node.output else "?")
        return f"{self.node.op_type} node '{label}'"

    def input(self, i: int) -> str:
        return self.node.input[i] if i < len(self.node.input) else ""

    def output(self, i: int = 0) -> str:
        return self.node.output[i]

    def grad(self, i: int = 0) -> str:
        """The gradient of output `i`, zeros when nothing reaches it (multi-output ops)."""
        return self.grads[i] or self.e.zeros_like(self.output(i))

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def unsupported(self, reason: str) -> GradientUnavailable:
        return GradientUnavailable(f"cannot differentiate {self.where}: {reason}")


Backward = Callable[[Call], dict[int, str]]


@dataclass(frozen=True)
class Rule:
    backward: Backward
    inputs: tuple[int, ...] | None = (0,)  # differentiable input slots; None: every input


def _attr_value(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    return value.decode() if isinstance(value, bytes) else value


# -- elementwise ----------------------------------------------------------------------------


def _relu(c: Call) -> dict[int, str]:
    e, y = c.e, c.output()
    positive = e.node("Greater", [y, e.scalar(0.0, y)], "relu_mask")
    return {0: e.node("Where", [positive, c.grad(), e.scalar(0.0, y)], "drelu")}


def _leaky_relu(c: Call) -> dict[int, str]:
    e, x, dy = c.e, c.input(0), c.grad()
    positive = e.node("Greater", [x, e.scalar(0.0, x)], "lrelu_mask")
    leak = e.scale(dy, float(c.attr("alpha", 0.01)), x)
    return {0: e.node("Where", [positive, dy, leak], "dlrelu")}


def _clip(c: Call) -> dict[int, str]:
    e, x, dy = c.e, c.input(0), c.grad()
    masks = []
    if c.input(1):
        masks.append(e.node("GreaterOrEqual", [x, c.input(1)], "clip_lo"))
    if c.input(2):
        masks.append(e.node("LessOrEqual", [x, c.input(2)], "clip_hi"))
    if not masks:
        return {0: dy}
    mask = masks[0] if len(masks) == 1 else e.node("And", masks, "clip_mask")
    return {0: e.node("Where", [mask, dy, e.scalar(0.0, x)], "dclip")}


def _sigmoid(c: Call) -> dict[int, str]:
    e, y = c.e, c.output()
    slope = e.mul(y, e.node("Sub", [e.scalar(1.0, y), y], "one_minus"))
    return {0: e.mul(c.grad(), slope)}


def _hard_sigmoid(c: Call) -> dict[int, str]:
    e, x = c.e, c.input(0)
    alpha, beta = float(c.attr("alpha", 0.2)), float(c.attr("beta", 0.5))
    v = e.node("Add", [e.scale(x, alpha, x), e.scalar(beta, x)], "hsig_v")
    inside = e.node(
        "And",
        [
            e.node("Greater", [v, e.scalar(0.0, x)], "hsig_lo"),
            e.node("Less", [v, e.scalar(1.0, x)], "hsig_hi"),
        ],
        "hsig_mask",
    )
    scaled = e.scale(c.grad(), alpha, x)
    return {0: e.node("Where", [inside, scaled, e.scalar(0.0, x)], "dhsig")}


def _hard_swish(c: Call) -> dict[int, str]:
    # y = x·clip(x/6 + 1/2, 0, 1): slope 0 below -3, 1 above 3, x/3 + 1/2 between.
    e, x = c.e, c.input(0)
    middle = e.node("Add", [e.scale(x, 1.0 / 3.0, x), e.scalar(0.5, x)], "hswish_mid")
    above = e.node("Greater", [x, e.scalar(3.0, x)], "hswish_hi")
    upper = e.node("Where", [above, e.scalar(1.0, x), middle], "hswish_up")
    below = e.node("Less", [x, e.scalar(-3.0, x)], "hswish_lo")
    slope = e.node("Where", [below, e.scalar(0.0, x), upper], "hswish_slope")
    return {0: e.mul(c.grad(), slope)}


def _tanh(c: Call) -> dict[int, str]:
    e, y = c.e, c.output()
    slope = e.node("Sub", [e.scalar(1.0, y), e.mul(y, y)], "tanh_slope")
    return {0: e.mul(c.grad(), slope)}


def _neg(c: Call) -> dict[int, str]:
    return {0: c.e.node("Neg", [c.grad()], "dneg")}


def _exp(c: Call) -> dict[int, str]:
    return {0: c.e.mul(c.grad(), c.output())}


def _log(c: Call) -> dict[int, str]:
    return {0: c.e.node("Div", [c.grad(), c.input(0)], "dlog")}


def _sqrt(c: Call) -> dict[int, str]:
    e, y = c.e, c.output()
    return {0: e.node("Div", [e.scale(c.grad(), 0.5, y), y], "dsqrt")}


def _pass_through(c: Call) -> dict[int, str]:
    return {0: c.grad()}


def _dropout(c: Call) -> dict[int, str]:
    if c.input(2):
        mode = c.e.constant_value(c.input(2))
        if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
            raise c.unsupported("training-mode Dropout is random; export the model in eval mode")
    return {0: c.grad()}


def _cast(c: Call) -> dict[int, str]:
    return {0: c.e.node("Cast", [c.grad()], "dcast", to=c.e.elem_type(c.input(0)))}


# -- broadcasting arithmetic ---------------------------------------------------------------


def _reduce_to(c: Call, grad: str, slot: int) -> str:
    e = c.e
    return e.unbroadcast(grad, e.shape(c.output()), c.input(slot), e.shape(c.input(slot)))


def _add(c: Call) -> dict[int, str]:
    return {i: _reduce_to(c, c.grad(), i) for i in c.wanted}


def _sub(c: Call) -> dict[int, str]:
    out = {}
    if 0 in c.wanted:
        out[0] = _reduce_to(c, c.grad(), 0)
    if 1 in c.wanted:
        out[1] = _reduce_to(c, c.e.node("Neg", [c.grad()], "dsub"), 1)
    return out


def _mul(c: Call) -> dict[int, str]:
    out = {}
    for i in c.wanted:
        other = c.input(1 - i)
        out[i] = _reduce_to(c, c.e.mul(c.grad(), other), i)
    return out


def _div(c: Call) -> dict[int, str]:
    e, b, y, dy = c.e, c.input(1), c.output(), c.grad()
    out = {}
    if 0 in c.wanted:
        out[0] = _reduce_to(c, e.node("Div", [dy, b], "ddiv_a"), 0)
    if 1 in c.wanted:  # d(a/b)/db = -y/b
        term = e.node("Div", [e.mul(dy, y), b], "ddiv_b")
        out[1] = _reduce_to(c, e.node("Neg", [term], "ddiv_b_neg"), 1)
    return out


def _sum(c: Call) -> dict[int, str]:
    return {i: _reduce_to(c, c.grad(), i) for i in c.wanted}


def _expand(c: Call) -> dict[int, str]:
    return {0: _reduce_to(c, c.grad(), 0)}


# -- softmax -------------------------------------------------------------------------------


def _softmax(c: Call) -> dict[int, str]:
    e, y, dy = c.e, c.output(), c.grad()
    axis = int(c.attr("axis", -1)) % e.rank(y)
    inner = e.reduce_sum(e.mul(dy, y), [axis], keepdims=True)
    return {0: e.mul(y, e.node("Sub", [dy, inner], "dsoftmax"))}


def _log_softmax(c: Call) -> dict[int, str]:
    e, y, dy = c.e, c.output(), c.grad()
    axis = int(c.attr("axis", -1)) % e.rank(y)
    total = e.reduce_sum(dy, [axis], keepdims=True)
    probs = e.node("Exp", [y], "lsm_probs")
    return {0: e.node("Sub", [dy, e.mul(probs, total)], "dlogsoftmax")}


# -- matrix products -----------------------------------------------------------------------


def _gemm(c: Call) -> dict[int, str]:
    e, a, b, dy = c.e, c.input(0), c.input(1), c.grad()
    alpha, beta = float(c.attr("alpha", 1.0)), float(c.attr("beta", 1.0))
    ta, tb = int(c.attr("transA", 0)), int(c.attr("transB", 0))
    out = {}
    if 0 in c.wanted:  # dA' = alpha·dY·B'ᵀ, transposed back when transA
        if ta:
            out[0] = e.node("Gemm", [b, dy], "dgemm_a", alpha=alpha, transA=tb, transB=1)
        else:
            out[0] = e.node("Gemm", [dy, b], "dgemm_a", alpha=alpha, transB=1 - tb)
    if 1 in c.wanted:  # dB' = alpha·A'ᵀ·dY
        if tb:
            out[1] = e.node("Gemm", [dy, a], "dgemm_b", alpha=alpha, transA=1, transB=ta)
        else:
            out[1] = e.node("Gemm", [a, dy], "dgemm_b", alpha=alpha, transA=1 - ta)
    if 2 in c.wanted:
        out[2] = _reduce_to(c, e.scale(dy, beta, c.output()), 2)
    return out


def _swap_last(e: Emitter, x: str, rank: int) -> str:
    return e.transpose(x, [*range(rank - 2), rank - 1, rank - 2])


def _matmul(c: Call) -> dict[int, str]:
    """numpy matmul: 1-D operands are promoted to matrices, then the axis is dropped."""
    e, a, b, dy = c.e, c.input(0), c.input(1), c.grad()
    ashape, bshape, yshape = e.shape(a), e.shape(b), e.shape(c.output())
    a_vec, b_vec = len(ashape) == 1, len(bshape) == 1
    a2, ashape2 = (e.unsqueeze(a, [0]), (1, *ashape)) if a_vec else (a, ashape)
    b2, bshape2 = (e.unsqueeze(b, [1]), (*bshape, 1)) if b_vec else (b, bshape)
    dy2 = dy
    if a_vec and b_vec:
        dy2 = e.unsqueeze(dy, [0, 1])
    elif a_vec:
        dy2 = e.unsqueeze(dy, [-2])
    elif b_vec:
        dy2 = e.unsqueeze(dy, [-1])
    batch: Shape = tuple(yshape[: len(yshape) - 2 + int(a_vec) + int(b_vec)])
    m, k, n = ashape2[-2], ashape2[-1], bshape2[-1]
    out = {}
    if 0 in c.wanted:
        da = e.node("MatMul", [dy2, _swap_last(e, b2, len(bshape2))], "dmatmul_a")
        da = e.unbroadcast(da, (*batch, m, k), a, ashape2)
        out[0] = e.reshape_like(da, a) if a_vec else da
    if 1 in c.wanted:
        db = e.node("MatMul", [_swap_last(e, a2, len(ashape2)), dy2], "dmatmul_b")
        db = e.unbroadcast(db, (*batch, k, n), b, bshape2)
        out[1] = e.reshape_like(db, b) if b_vec else db
    return out


# -- convolution and pooling ---------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Resolved sliding-window geometry (auto_pad turned into explicit pads)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]


def _window(c: Call, kernel: tuple[int, ...], in_dims: tuple[int, ...]) -> Window:
    n = len(kernel)
    strides = tuple(int(s) for s in c.attr("strides", [1] * n))
    dilations = tuple(int(d) for d in c.attr("dilations", [1] * n))
    auto_pad = c.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = [int(p) for p in c.attr("pads", [0] * (2 * n))]
        begin, end = tuple(pads[:n]), tuple(pads[n:])
    elif auto_pad == "VALID":
        begin = end = (0,) * n
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        b, en = [], []
        for size, k, s, d in zip(in_dims, kernel, strides, dilations, strict=True):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            b.append(small if auto_pad == "SAME_UPPER" else total - small)
            en.append(total - b[-1])
        begin, end = tuple(b), tuple(en)
    else:
        raise c.unsupported(f"unknown auto_pad '{auto_pad}'")
    return Window(kernel, strides, dilations, begin, end)


def _spatial(c: Call, name: str, rank: int) -> tuple[int, ...]:
    return c.e.static_dims(name, range(2, rank), f"the backward of {c.where}")


def _conv_weight_grad(
    e: Emitter,
    inp: str,
    gout: str,
    *,
    cin: int,
    cout: int,
    group: int,
    win: Window,
    in_dims: tuple[int, ...],
    out_dims: tuple[int, ...],
) -> str:
    """dW[m, c, k] = Σ_{n,o} gout[n, m, o] · inp[n, g(m)·Cg + c, o·s + k·d − p].

    That is itself a (grouped) convolution once batch and channels swap roles: the
    input's channels become the batch, the batch becomes the channels, the output
    gradient is the kernel, and stride and dilation trade places. Returns
    [cout, cin/group, *kernel]. Ungrouped layers with small patch tensors take the
    faster explicit-patch GEMM instead (`_conv_weight_grad_patches`).
    """
    n = len(win.kernel)
    sp = list(range(2, 2 + n))
    patch_size = int(np.prod(win.kernel)) * cin * int(np.prod(out_dims))
    if group == 1 and patch_size <= PATCH_LIMIT:
        return _conv_weight_grad_patches(
            e, inp, gout, cin=cin, cout=cout, win=win, out_dims=out_dims
        )
    if group == 1:
        xt = e.transpose(inp, [1, 0, *sp])  # [C, N, S]
        gt = e.transpose(gout, [1, 0, *sp])  # [M, N, O]
    else:
        cg, mg = cin // group, cout // group
        x5 = e.reshape(inp, e.ints([0, group, cg, *in_dims]))  # [N, g, Cg, S]
        x5 = e.transpose(x5, [2, 1, 0, *(i + 1 for i in sp)])  # [Cg, g, N, S]
        xt = e.reshape(x5, e.ints([cg, -1, *in_dims]))  # [Cg, g·N, S]
        g5 = e.reshape(gout, e.ints([0, group, mg, *out_dims]))  # [N, g, Mg, O]
        g5 = e.transpose(g5, [1, 2, 0, *(i + 1 for i in sp)])  # [g, Mg, N, O]
        gt = e.reshape(g5, e.ints([cout, -1, *out_dims]))  # [M, N, O]
    conv = e.node(
        "Conv",
        [xt, gt],
        "dconv_w",
        strides=list(win.dilations),
        dilations=list(win.strides),
        pads=[*win.begin, *win.end],
        group=group,
        kernel_shape=list(out_dims),
    )
    full = [
        (size + b + en - ((o - 1) * s + 1)) // d + 1
        for size, b, en, o, s, d in zip(
            in_dims, win.begin, win.end, out_dims, win.strides, win.dilations, strict=True
        )
    ]
    if full != list(win.kernel):  # strides that do not divide evenly leave extra taps
        conv = e.node(
            "Slice", [conv, e.ints([0] * n), e.ints(win.kernel), e.ints(sp)], "dconv_w_crop"
        )
    return e.transpose(conv, [1, 0, *sp])


# Patch values per sample up to which a weight gradient is one GEMM over explicit
# patches (K·C·O floats per sample: 4 MiB in float32); larger layers use the swapped
# convolution, which needs no patch tensor.
PATCH_LIMIT = 1 << 20


def _conv_weight_grad_patches(
    e: Emitter,
    inp: str,
    gout: str,
    *,
    cin: int,
    cout: int,
    win: Window,
    out_dims: tuple[int, ...],
) -> str:
    """The ungrouped weight gradient as one GEMM: P[(k, c), (n, o)] = inp[n, c, o·s + k·d − p]
    gathered by one strided Slice per kernel tap, then dW = gout[m, (n, o)] · Pᵀ.

    The swapped convolution has a tiny output (the kernel), which makes onnxruntime's
    im2col GEMMs narrow and slow; one wide GEMM is several times faster.
    """
    n = len(win.kernel)
    sp = list(range(2, 2 + n))
    xt = e.transpose(inp, [1, 0, *sp])  # [C, N, S]
    if any(win.begin) or any(win.end):
        xt = e.node("Pad", [xt, e.ints([0, 0, *win.begin, 0, 0, *win.end])], "dconv_w_pad")
    taps = []
    for tap in itertools.product(*(range(k) for k in win.kernel)):
        starts = [t * d for t, d in zip(tap, win.dilations, strict=True)]
        ends = [b + (o - 1) * s + 1 for b, o, s in zip(starts, out_dims, win.strides, strict=True)]
        operands = [xt, e.ints(starts), e.ints(ends), e.ints(sp)]
        if any(s != 1 for s in win.strides):
            operands.append(e.ints(win.strides))
        taps.append(e.node("Slice", operands, "dconv_w_tap"))
    patches = taps[0] if len(taps) == 1 else e.node("Concat", taps, "dconv_w_patches", axis=0)
    taps_count = int(np.prod(win.kernel))
    patches = e.reshape(patches, e.ints([taps_count * cin, -1]))  # [K·C, N·O]
    grads = e.reshape(e.transpose(gout, [1, 0, *sp]), e.ints([cout, -1]))  # [M, N·O]
    dw = e.node("Gemm", [grads, patches], "dconv_w", transB=1)  # [M, K·C]
    dw = e.reshape(dw, e.ints([cout, *win.kernel, cin]))
    return e.transpose(dw, [0, n + 1, *range(1, n + 1)])


def _conv_input_grad(
    e: Emitter,
    dy: str,
    w: str,
    wshape: tuple[int, ...],
    group: int,
    win: Window,
    in_dims: tuple[int, ...],
    out_dims: tuple[int, ...],
) -> str:
    """dL/dX of a Conv: the adjoint convolution.

    With unit strides it is a plain Conv with the kernel flipped and its channel axes
    swapped (onnxruntime's fastest kernel); otherwise ConvTranspose with the same
    geometry, whose output_padding restores the trailing rows a stride skipped so the
    shape matches exactly.
    """
    n = len(win.kernel)
    sp = list(range(2, 2 + n))
    reach = [(k - 1) * d for k, d in zip(win.kernel, win.dilations, strict=True)]
    flipped_begin = [r - b for r, b in zip(reach, win.begin, strict=True)]
    flipped_end = [r - en for r, en in zip(reach, win.end, strict=True)]
    if all(s == 1 for s in win.strides) and min(flipped_begin + flipped_end) >= 0:
        if group == 1:
            swapped = e.transpose(w, [1, 0, *sp])  # [C, M, K]
        else:
            mg, cg = wshape[0] // group, wshape[1]
            grouped = e.reshape(w, e.ints([group, mg, cg, *win.kernel]))
            grouped = e.transpose(grouped, [0, 2, 1, *(i + 1 for i in sp)])
            swapped = e.reshape(grouped, e.ints([group * cg, mg, *win.kernel]))
        lowest = int(np.iinfo(np.int64).min)
        flipped = e.node(
            "Slice",
            [swapped, e.ints([-1] * n), e.ints([lowest] * n), e.ints(sp), e.ints([-1] * n)],
            "dconv_flip",
        )
        return e.node(
            "Conv",
            [dy, flipped],
            "dconv_x",
            dilations=list(win.dilations),
            pads=[*flipped_begin, *flipped_end],
            group=group,
            kernel_shape=list(win.kernel),
        )
    extra = [
        size - (s * (o - 1) + (k - 1) * d + 1 - b - en)
        for size, o, k, s, d, b, en in zip(
            in_dims,
            out_dims,
            win.kernel,
            win.strides,
            win.dilations,
            win.begin,
            win.end,
            strict=True,
        )
    ]
    return e.node(
        "ConvTranspose",
        [dy, w],
        "dconv_x",
        strides=list(win.strides),
        dilations=list(win.dilations),
        pads=[*win.begin, *win.end],
        group=group,
        kernel_shape=list(win.kernel),
        output_padding=extra if any(extra) else None,
    )


def _conv(c: Call) -> dict[int, str]:
    e, x, w, dy = c.e, c.input(0), c.input(1), c.grad()
    rank = e.rank(x)
    in_dims, out_dims = _spatial(c, x, rank), _spatial(c, c.output(), rank)
    wshape = e.static_dims(w, range(rank), f"the backward of {c.where}")
    kernel = tuple(int(k) for k in c.attr("kernel_shape", wshape[2:]))
    group = int(c.attr("group", 1))
    win = _window(c, kernel, in_dims)
    sp = list(range(2, rank))
    out = {}
    if 0 in c.wanted:
        out[0] = _conv_input_grad(e, dy, w, wshape, group, win, in_dims, out_dims)
    if 1 in c.wanted:
        out[1] = _conv_weight_grad(
            e,
            x,
            dy,
            cin=wshape[1] * group,
            cout=wshape[0],
            group=group,
            win=win,
            in_dims=in_dims,
            out_dims=out_dims,
        )
    if 2 in c.wanted:
        out[2] = e.reduce_sum(dy, [0, *sp], keepdims=False)
    return out


def _conv_transpose(c: Call) -> dict[int, str]:
    e, x, w, dy = c.e, c.input(0), c.input(1), c.grad()
    if c.attr("output_shape") or c.attr("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID"):
        raise c.unsupported("output_shape / SAME auto_pad are not supported; use explicit pads")
    rank = e.rank(x)
    sp = list(range(2, rank))
    in_dims, out_dims = _spatial(c, x, rank), _spatial(c, c.output(), rank)
    wshape = e.static_dims(w, range(rank), f"the backward of {c.where}")
    kernel = tuple(int(k) for k in c.attr("kernel_shape", wshape[2:]))
    group = int(c.attr("group", 1))
    n = len(kernel)
    strides = tuple(int(s) for s in c.attr("strides", [1] * n))
    dilations = tuple(int(d) for d in c.attr("dilations", [1] * n))
    pads = [int(p) for p in c.attr("pads", [0] * 2 * n)]
    if c.attr("auto_pad", "NOTSET") == "VALID":
        pads = [0] * 2 * n
    begin = tuple(pads[:n])
    # Y is the full scatter of extent F, cropped by `begin` and ended by pads/output_padding.
    full = [
        s * (i - 1) + (k - 1) * d + 1
        for s, i, k, d in zip(strides, in_dims, kernel, dilations, strict=True)
    ]
    end = [f - o - b for f, o, b in zip(full, out_dims, begin, strict=True)]
    dyc, used_out = dy, list(out_dims)
    if any(t < 0 for t in end):  # output_padding rows no input reaches: drop them
        used_out = [o + min(t, 0) for o, t in zip(out_dims, end, strict=True)]
        dyc = e.node("Slice", [dy, e.ints([0] * n), e.ints(used_out), e.ints(sp)], "dconvt_crop")
        end = [max(t, 0) for t in end]
    win = Window(kernel, strides, dilations, begin, tuple(end))
    out = {}
    if 0 in c.wanted:
        out[0] = e.node(
            "Conv",
            [dyc, w],
            "dconvt_x",
            strides=list(strides),
            dilations=list(dilations),
            pads=[*begin, *end],
            group=group,
            kernel_shape=list(kernel),
        )
    if 1 in c.wanted:
        out[1] = _conv_weight_grad(
            e,
            dyc,
            x,
            cin=wshape[1] * group,
            cout=wshape[0],
            group=group,
            win=win,
            in_dims=tuple(used_out),
            out_dims=in_dims,
        )
    if 2 in c.wanted:
        out[2] = e.reduce_sum(dy, [0, *sp], keepdims=False)
    return out


def _scatter_into(e: Emitter, like: str, indices: str, updates: str, add: bool) -> str:
    """A tensor shaped like `like`, zero except `updates` at flat `indices`."""
    if add and e.opset < 16:
        raise GradientUnavailable("scatter-add needs ScatterElements reduction (opset >= 16)")
    fill = helper.make_tensor("value", e.elem_type(like), [1], [0])
    zeros = e.node("ConstantOfShape", [e.numel(like)], "zeros_flat", value=fill)
    flat_idx = e.reshape(indices, e.ints([-1]))
    flat_upd = e.reshape(updates, e.ints([-1]))
    scattered = e.node(
        "ScatterElements",
        [zeros, flat_idx, flat_upd],
        "scatter",
        axis=0,
        reduction="add" if add else None,
    )
    return e.reshape_like(scattered, like)


def _flat_index(e: Emitter, like: str, elem: int = TensorProto.INT64) -> str:
    """A tensor shaped like `like` whose entries are their own flat positions."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    static = e.static_shape(like)
    if static is not None and int(np.prod(static)) >= np.iinfo(dtype).max:
        raise GradientUnavailable(f"'{like}' is too large for {np.dtype(dtype).name} indices")
    count = e.numel(like, scalar=True)
    if elem != TensorProto.INT64:
        count = e.node("Cast", [count], "numel_cast", to=elem)
    zero, one = e.const(np.asarray(0, dtype)), e.const(np.asarray(1, dtype))
    flat = e.node("Range", [zero, count, one], "flat_index")
    return e.reshape_like(flat, like)


def _max_pool(c: Call) -> dict[int, str]:
    """Route each output gradient to the input its window picked (MaxPool's Indices).

    Overlapping windows may pick one input twice, so the scatter must add. From opset
    16 ScatterElements adds by itself; before that the outputs are split into
    r₁×r₂… strided classes (r = ⌈window extent / stride⌉) whose windows are disjoint,
    each class is scattered without collisions, and the classes are summed.
    """
    e, x, dy = c.e, c.input(0), c.grad()
    attrs = {k: v for k, v in c.attrs.items() if k != "storage_order"}
    kernel = [int(k) for k in attrs["kernel_shape"]]
    n = len(kernel)
    strides = [int(s) for s in attrs.get("strides", [1] * n)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * n)]
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    overlap = any(s < x_ for s, x_ in zip(strides, extent, strict=True))
    # Indices are flat positions in the whole input (N·C·spatial), row-major.
    _, indices = e.node_multi("MaxPool", [x], "maxpool_idx", n_out=2, **attrs)
    if not overlap or e.opset >= 16:
        return {0: _scatter_into(e, x, indices, dy, add=overlap)}
    classes = [-(-x_ // s) for x_, s in zip(extent, strides, strict=True)]
    sp = list(range(2, 2 + n))
    end = int(np.iinfo(np.int64).max)
    parts = []
    for offset in itertools.product(*(range(r) for r in classes)):
        bounds = [e.ints(offset), e.ints([end] * n), e.ints(sp), e.ints(classes)]
        picked = e.node("Slice", [indices, *bounds], "maxpool_class_idx")
        grads = e.node("Slice", [dy, *bounds], "maxpool_class_grad")
        parts.append(_scatter_into(e, x, picked, grads, add=False))
    return {0: e.sum(parts, "dmaxpool")}


def _pool_divisor(
    in_dims: tuple[int, ...], out_dims: tuple[int, ...], win: Window, include_pad: bool
) -> np.ndarray:
    """How many taps each AveragePool output divides by (padding counted or not)."""
    per_axis = []
    for size, o, k, s, d, b, en in zip(
        in_dims,
        out_dims,
        win.kernel,
        win.strides,
        win.dilations,
        win.begin,
        win.end,
        strict=True,
    ):
        taps = (np.arange(o) * s - b)[:, None] + d * np.arange(k)[None, :]
        lo, hi = (-b, size + en) if include_pad else (0, size)
        per_axis.append(((taps >= lo) & (taps < hi)).sum(axis=1))
    divisor = per_axis[0]
    for counts in per_axis[1:]:
        divisor = np.multiply.outer(divisor, counts)
    return divisor


def _average_pool(c: Call) -> dict[int, str]:
    e, x, dy = c.e, c.input(0), c.grad()
    rank = e.rank(x)
    in_dims, out_dims = _spatial(c, x, rank), _spatial(c, c.output(), rank)
    kernel = tuple(int(k) for k in c.attr("kernel_shape"))
    win = _window(c, kernel, in_dims)
    divisor = _pool_divisor(in_dims, out_dims, win, bool(c.attr("count_include_pad", 0)))
    inv = np.where(divisor > 0, 1.0 / np.maximum(divisor, 1), 0.0).astype(e.np_dtype(x))
    weighted = e.mul(dy, e.const(inv, "avgpool_inv"))
    # Every (n, c) plane scatters back through the same window: one single-channel
    # ConvTranspose with a ones kernel over N·C "images".
    planes = e.reshape(weighted, e.ints([-1, 1, *out_dims]))
    ones = e.const(np.ones((1, 1, *kernel), dtype=e.np_dtype(x)), "avgpool_ones")
    end, extra = [], []
    for size, o, k, s, d, b in zip(
        in_dims, out_dims, kernel, win.strides, win.dilations, win.begin, strict=True
    ):
        crop = s * (o - 1) + (k - 1) * d + 1 - b - size  # may be < 0: rows no window reads
        end.append(max(crop, 0))
        extra.append(max(-crop, 0))
    back = e.node(
        "ConvTranspose",
        [planes, ones],
        "davgpool",
        strides=list(win.strides),
        dilations=list(win.dilations),
        pads=[*win.begin, *end],
        kernel_shape=list(kernel),
        output_padding=extra if any(extra) else None,
    )
    return {0: e.reshape_like(back, x)}


def _global_average_pool(c: Call) -> dict[int, str]:
    e, x = c.e, c.input(0)
    rank = e.rank(x)
    dims = e.shape(x)[2:]
    if all(isinstance(d, int) for d in dims):
        scaled = e.scale(c.grad(), 1.0 / float(np.prod(dims)), x)
    else:
        spatial = e.node("Slice", [e.shape_of(x), e.ints([2]), e.ints([rank])], "gap_dims")
        count = e.node("ReduceProd", [spatial], "gap_count", keepdims=0)
        count = e.node("Cast", [count], "gap_count_f", to=e.elem_type(x))
        scaled = e.node("Div", [c.grad(), count], "gap_scaled")
    return {0: e.node("Expand", [scaled, e.shape_of(x)], "dgap")}


def _batch_norm(c: Call) -> dict[int, str]:
    """Inference BatchNormalization: y = scale·(x − mean)/√(var + ε) + B, per channel."""
    e, x, dy = c.e, c.input(0), c.grad()
    if int(c.attr("training_mode", 0)) or len([o for o in c.node.output if o]) > 1:
        raise c.unsupported("training-mode BatchNormalization; export the model in eval mode")
    scale, mean, var = c.input(1), c.input(3), c.input(4)
    rank = e.rank(x)
    axes = [0, *range(2, rank)]
    per_channel = e.ints([-1, *([1] * (rank - 2))])
    eps = e.scalar(float(c.attr("epsilon", 1e-5)), x)
    inv = e.node("Reciprocal", [e.node("Sqrt", [e.node("Add", [var, eps])])], "bn_inv_std")
    scale_inv = e.mul(scale, inv)
    out = {}
    if 0 in c.wanted:
        out[0] = e.mul(dy, e.reshape(scale_inv, per_channel))
    need_sum = {2, 3} & c.wanted
    need_dot = {1, 4} & c.wanted
    dy_sum = e.reduce_sum(dy, axes, keepdims=False) if need_sum else ""
    if need_dot:
        centred = e.node("Sub", [x, e.reshape(mean, per_channel)], "bn_centred")
        dot = e.reduce_sum(e.mul(dy, centred), axes, keepdims=False)  # Σ dy·(x − mean)
    if 1 in c.wanted:
        out[1] = e.mul(dot, inv)
    if 2 in c.wanted:
        out[2] = dy_sum
    if 3 in c.wanted:
        out[3] = e.node("Neg", [e.mul(dy_sum, scale_inv)], "dbn_mean")
    if 4 in c.wanted:  # d/dvar (var + ε)^-½ = -½ (var + ε)^-3/2
        inv3 = e.mul(inv, e.mul(inv, inv))
        out[4] = e.scale(e.mul(e.mul(dot, scale), inv3), -0.5, x)
    return out


def _channel_window_sum(e: Emitter, t: str, like: str, channels: int, before: int, after: int):
    """Σ of t over channels [c − before, c + after] for every c (zero outside): a ones
    kernel convolved along the channel axis of t viewed as [N, 1, C, rest]."""
    planes = e.reshape(t, e.ints([0, 1, channels, -1]))
    ones = e.const(np.ones((1, 1, before + after + 1, 1), dtype=e.np_dtype(like)), "lrn_ones")
    summed = e.node("Conv", [planes, ones], "lrn_window", pads=[before, 0, after, 0])
    return e.reshape_like(summed, like)


def _lrn(c: Call) -> dict[int, str]:
    """y = x·s^(−β), s = bias + α/size·Σ_window x²; the window term sends gradient to
    every channel whose window contains the input channel (the transposed window)."""
    e, x, y, dy = c.e, c.input(0), c.output(), c.grad()
    size = int(c.attr("size"))
    alpha, beta = float(c.attr("alpha", 1e-4)), float(c.attr("beta", 0.75))
    bias = float(c.attr("bias", 1.0))
    (channels,) = e.static_dims(x, [1], f"the backward of {c.where}")
    lo, hi = (size - 1) // 2, size // 2  # the window of channel c is [c − lo, c + hi]
    squares = _channel_window_sum(e, e.mul(x, x), x, channels, lo, hi)
    s = e.node("Add", [e.scalar(bias, x), e.scale(squares, alpha / size, x)], "lrn_s")
    direct = e.mul(dy, e.node("Pow", [s, e.scalar(-beta, x)], "lrn_pow"))
    t = e.node("Div", [e.mul(dy, y), s], "lrn_t")
    spread = _channel_window_sum(e, t, x, channels, hi, lo)
    cross = e.scale(e.mul(x, spread), 2.0 * alpha * beta / size, x)
    return {0: e.node("Sub", [direct, cross], "dlrn")}


# -- shape and data movement ---------------------------------------------------------------


def _reshape_back(c: Call) -> dict[int, str]:
    return {0: c.e.reshape_like(c.grad(), c.input(0))}


def _transpose(c: Call) -> dict[int, str]:
    rank = c.e.rank(c.input(0))
    perm = [int(p) for p in c.attr("perm", list(reversed(range(rank))))]
    return {0: c.e.transpose(c.grad(), [int(i) for i in np.argsort(perm)])}


def _concat(c: Call) -> dict[int, str]:
    e = c.e
    axis = int(c.attr("axis")) % e.rank(c.output())
    inputs = list(c.node.input)
    dims = [e.shape(t)[axis] for t in inputs]
    if all(isinstance(d, int) for d in dims):
        sizes = e.ints(dims)
    else:
        parts = [
            e.node("Slice", [e.shape_of(t), e.ints([axis]), e.ints([axis + 1])], "concat_dim")
            for t in inputs
        ]
        sizes = e.node("Concat", parts, "concat_sizes", axis=0)
    pieces = e.node_multi("Split", [c.grad(), sizes], "dconcat", n_out=len(inputs), axis=axis)
    return {i: pieces[i] for i in c.wanted}


def _split(c: Call) -> dict[int, str]:
    axis = int(c.attr("axis", 0)) % c.e.rank(c.input(0))
    pieces = [c.grad(i) for i in range(len(c.node.output))]
    return {0: c.e.node("Concat", pieces, "dsplit", axis=axis)}


def _slice(c: Call) -> dict[int, str]:
    # Slicing the flat positions with the very same operands says where each output
    # element came from; Slice never repeats an element, so a plain scatter is exact.
    e, x = c.e, c.input(0)
    picked = e.node("Slice", [_flat_index(e, x), *c.node.input[1:]], "slice_index")
    return {0: _scatter_into(e, x, picked, c.grad(), add=False)}


def _pad(c: Call) -> dict[int, str]:
    e, x = c.e, c.input(0)
    if c.attr("mode", "constant") != "constant":
        raise c.unsupported(f"Pad mode '{c.attr('mode')}' (only constant mode has a rule)")
    pads = e.constant_value(c.input(1))
    if pads is None:
        raise c.unsupported("pads must be a constant")
    rank = e.rank(x)
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = list(range(rank))
    if c.input(3):
        given = e.constant_value(c.input(3))
        if given is None:
            raise c.unsupported("axes must be a constant")
        axes = [int(a) % rank for a in np.asarray(given).reshape(-1)]
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[len(axes) + i]
    grad = c.grad()
    if any(p < 0 for p in begin + end):  # the forward cropped: re-grow with zeros first
        regrow = [max(-p, 0) for p in begin] + [max(-p, 0) for p in end]
        grad = e.node("Pad", [grad, e.ints(regrow)], "dpad_regrow")
    starts = [max(p, 0) for p in begin]
    static = e.static_shape(x)
    if static is not None:
        ends = e.ints([s + d for s, d in zip(starts, static, strict=True)])
    else:
        ends = e.node("Add", [e.ints(starts), e.shape_of(x)], "dpad_ends")
    return {0: e.node("Slice", [grad, e.ints(starts), ends, e.ints(range(rank))], "dpad")}


def _resize(c: Call) -> dict[int, str]:
    e, x = c.e, c.input(0)
    if c.attr("mode", "nearest") != "nearest":
        raise c.unsupported(f"Resize mode '{c.attr('mode')}' (only nearest has a rule)")
    if e.opset < 16:
        raise c.unsupported("nearest Resize needs ScatterElements reduction (opset >= 16)")
    # Resizing the flat positions with the same operands says which input each output
    # copied; several outputs copy one input, so their gradients add up.
    index = _flat_index(e, x, TensorProto.INT32)
    moved = e.node("Resize", [index, *c.node.input[1:]], "resize_index", **c.attrs)
    moved = e.node("Cast", [moved], "resize_index64", to=TensorProto.INT64)
    return {0: _scatter_into(e, x, moved, c.grad(), add=True)}


def _reduce(c: Call) -> dict[int, str]:
    """ReduceSum / ReduceMean: broadcast the gradient back (÷ count for the mean)."""
    e, x = c.e, c.input(0)
    rank = e.rank(x)
    axes_as_input = e.opset >= (13 if c.node.op_type == "ReduceSum" else 18)
    if axes_as_input and c.input(1):
        given = e.constant_value(c.input(1))
        if given is None:
            raise c.unsupported("axes must be a constant")
        axes = [int(a) for a in np.asarray(given).reshape(-1)]
    else:
        axes = [int(a) for a in c.attr("axes", [])]
    if not axes:
        if int(c.attr("noop_with_empty_axes", 0)):
            return {0: c.grad()}
        axes = list(range(rank))
    axes = sorted(a % rank for a in axes)
    grad = c.grad() if int(c.attr("keepdims", 1)) else e.unsqueeze(c.grad(), axes)
    if c.node.op_type == "ReduceMean":
        dims = [e.shape(x)[a] for a in axes]
        if all(isinstance(d, int) for d in dims):
            grad = e.scale(grad, 1.0 / float(np.prod(dims)), x)
        else:
            gathered = e.node("Gather", [e.shape_of(x), e.ints(axes)], "rmean_dims")
            count = e.node("ReduceProd", [gathered], "rmean_count", keepdims=0)
            count = e.node("Cast", [count], "rmean_count_f", to=e.elem_type(x))
            grad = e.node("Div", [grad, count], "rmean_scaled")
    return {0: e.node("Expand", [grad, e.shape_of(x)], "dreduce")}


RULES: dict[str, Rule] = {
    # elementwise
    "Relu": Rule(_relu),
    "LeakyRelu": Rule(_leaky_relu),
    "Clip": Rule(_clip),
    "Sigmoid": Rule(_sigmoid),
    "HardSigmoid": Rule(_hard_sigmoid),
    "HardSwish": Rule(_hard_swish),
    "Tanh": Rule(_tanh),
    "Neg": Rule(_neg),
    "Exp": Rule(_exp),
    "Log": Rule(_log),
    "Sqrt": Rule(_sqrt),
    "Identity": Rule(_pass_through),
    "Dropout": Rule(_dropout),
    "Cast": Rule(_cast),
    # broadcasting arithmetic
    "Add": Rule(_add, (0, 1)),
    "Sub": Rule(_sub, (0, 1)),
    "Mul": Rule(_mul, (0, 1)),
    "Div": Rule(_div, (0, 1)),
    "Sum": Rule(_sum, None),
    "Expand": Rule(_expand),
    # softmax
    "Softmax": Rule(_softmax),
    "LogSoftmax": Rule(_log_softmax),
    # products
    "Gemm": Rule(_gemm, (0, 1, 2)),
    "MatMul": Rule(_matmul, (0, 1)),
    "Conv": Rule(_conv, (0, 1, 2)),
    "ConvTranspose": Rule(_conv_transpose, (0, 1, 2)),
    # pooling and normalization
    "MaxPool": Rule(_max_pool),
    "AveragePool": Rule(_average_pool),
    "GlobalAveragePool": Rule(_global_average_pool),
    "BatchNormalization": Rule(_batch_norm, (0, 1, 2, 3, 4)),
    "LRN": Rule(_lrn),
    "ReduceSum": Rule(_reduce),
    "ReduceMean": Rule(_reduce),
    # shape and data movement
    "Flatten": Rule(_reshape_back),
    "Reshape": Rule(_reshape_back),
    "Squeeze": Rule(_reshape_back),
    "Unsqueeze": Rule(_reshape_back),
    "Transpose": Rule(_transpose),
    "Concat": Rule(_concat, None),
    "Split": Rule(_split),
    "Slice": Rule(_slice),
    "Pad": Rule(_pad),
    "Resize": Rule(_resize),
}
