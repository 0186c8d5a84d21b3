"""Convolution as a matrix product: unfold (im2col) inputs so Conv layers can be re-fit
by least squares exactly like fully connected ones.

Row order is (sample, out_y, out_x); column order is (in_channel, k_y, k_x), which
is the row-major flattening of a Conv weight [out, in, k_y, k_x].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass(frozen=True)
class Conv2dGeometry:
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilations: tuple[int, int]

    @classmethod
    def from_attrs(
        cls, attrs: Mapping[str, object], kernel: Sequence[int], in_hw: Sequence[int]
    ) -> Conv2dGeometry:
        """Geometry of an ONNX Conv (2-D) from its attributes, resolving auto_pad."""
        strides = tuple(attrs.get("strides", (1, 1)))
        dilations = tuple(attrs.get("dilations", (1, 1)))
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if isinstance(auto_pad, bytes):
            auto_pad = auto_pad.decode()
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for size, k, s, d in zip(in_hw, kernel, strides, dilations, strict=True):
                out = -(-size // s)
                total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
                small, big = total // 2, total - total // 2
                pads.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
            begin, end = zip(*pads, strict=True)
            pad4 = (*begin, *end)
        elif auto_pad == "VALID":
            pad4 = (0, 0, 0, 0)
        else:
            pad4 = tuple(attrs.get("pads", (0, 0, 0, 0)))
        return cls(tuple(kernel), strides, pad4, dilations)  # type: ignore[arg-type]


def unfold(x: np.ndarray, geo: Conv2dGeometry) -> np.ndarray:
    """[N, C, H, W] → [N*Ho*Wo, C*kh*kw] patches (a view where possible, then one copy)."""
    top, left, bottom, right = geo.pads
    if any(geo.pads):
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    (kh, kw), (dh, dw), (sh, sw) = geo.kernel, geo.dilations, geo.strides
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    windows = sliding_window_view(x, (span_h, span_w), axis=(2, 3))  # N,C,H',W',span_h,span_w
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # N,C,Ho,Wo,kh,kw
    n, c, ho, wo = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)


def rows_of(y: np.ndarray) -> np.ndarray:
    """Layer outputs as LS targets: [N, O, *spatial] → [N*prod(spatial), O]; [N, O] unchanged."""
    if y.ndim == 2:
        return y
    return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
