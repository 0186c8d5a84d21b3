"""Calibration inputs: read, validate against the model's inputs, and serve in batches.

Every problem with the data (a missing input, a wrong shape or dtype, NaN, no
samples) is a one-line CalibrationError naming the input and what was expected.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxprune.errors import CalibrationError, UsageError
from onnxprune.graph import Dim, real_inputs, value_shape

log = logging.getLogger("onnxprune")


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]  # first axis = batch

    def describe(self) -> str:
        dims = ",".join("?" if not isinstance(d, int) else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


def input_specs(
    model: onnx.ModelProto, overrides: Mapping[str, tuple[int, ...]] | None = None
) -> list[InputSpec]:
    """The model's real inputs, with --input-shape overrides applied."""
    overrides = overrides or {}
    specs = []
    for inp in real_inputs(model):
        elem = inp.type.tensor_type.elem_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
        shape = tuple(overrides.get(inp.name, value_shape(inp) or ()))
        specs.append(InputSpec(inp.name, dtype, shape))
    unknown = set(overrides) - {s.name for s in specs}
    if unknown:
        valid = ", ".join(s.name for s in specs)
        raise UsageError(f"--input-shape names unknown input(s) {sorted(unknown)}; inputs: {valid}")
    return specs


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse NAME:D0,D1,... (the name may itself contain ':')."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape '{text}' is not NAME:D0,D1,... with positive dims")
    return name, shape


class Calibration:
    """Validated calibration arrays served in batches along axis 0."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, source: str) -> None:
        self.arrays = dict(arrays)
        self.batch_size = batch_size
        self.source = source
        self.samples = int(next(iter(self.arrays.values())).shape[0])

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.samples, self.batch_size):
            yield {k: v[start : start + self.batch_size] for k, v in self.arrays.items()}


def load_npz(path: str | Path, specs: list[InputSpec], limit: int | None) -> dict[str, np.ndarray]:
    """Read a .npz keyed by input name; first axis = samples."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            missing = [s.name for s in specs if s.name not in keys]
            if missing:
                raise CalibrationError(
                    f"{path.name} has no array for input(s) {missing}; "
                    f"it has {sorted(keys)} (keys must be model input names)"
                )
            extra = sorted(keys - {s.name for s in specs})
            if extra:
                log.warning("calibration file: ignoring arrays %s (not model inputs)", extra)
            arrays = {s.name: data[s.name][:limit] if limit else data[s.name] for s in specs}
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CalibrationError(f"{path} is not a readable .npz file ({exc})") from exc
    validate(arrays, specs)
    return arrays


def validate(arrays: Mapping[str, np.ndarray], specs: list[InputSpec]) -> None:
    counts = set()
    for spec in specs:
        arr = arrays[spec.name]
        if arr.dtype != spec.dtype:
            raise CalibrationError(
                f"calibration input '{spec.name}' has dtype {arr.dtype}, model expects {spec.dtype}"
            )
        if arr.ndim != len(spec.shape):
            raise CalibrationError(
                f"calibration input '{spec.name}' has shape {list(arr.shape)}, model expects "
                f"{spec.describe()}"
            )
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if axis > 0 and isinstance(want, int) and got != want:
                raise CalibrationError(
                    f"calibration input '{spec.name}' has shape {list(arr.shape)}, model expects "
                    f"{spec.describe()} (axis {axis})"
                )
        if arr.shape[0] == 0:
            raise CalibrationError(f"calibration input '{spec.name}' has no samples")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise CalibrationError(f"calibration input '{spec.name}' contains NaN or Inf")
        counts.add(arr.shape[0])
    if len(counts) > 1:
        raise CalibrationError(f"calibration inputs have different sample counts {sorted(counts)}")


def random_inputs(specs: list[InputSpec], samples: int, seed: int) -> dict[str, np.ndarray]:
    """Standard-normal floats (small non-negative ints for integer inputs), seeded."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        dims = list(spec.shape[1:])
        if any(not isinstance(d, int) for d in dims):
            raise UsageError(
                f"input '{spec.name}' has dynamic dims {spec.describe()}; give them with "
                f"--input-shape {spec.name}:D0,D1,... or pass --calib"
            )
        shape = [samples, *dims]
        if np.issubdtype(spec.dtype, np.floating):
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif np.issubdtype(spec.dtype, np.integer):
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise UsageError(f"cannot make random data for input '{spec.name}' of {spec.dtype}")
    return arrays
