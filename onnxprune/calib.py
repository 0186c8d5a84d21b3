"""Calibration inputs: read, validate against the model's inputs, and serve in batches.

Every problem with the data (a missing input, a wrong shape or dtype, NaN, no
samples) is a one-line CalibrationError naming the input and what was expected.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from tqdm import tqdm

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
    """Validated calibration batches, re-iterable: every pass re-opens the source.

    `open_source()` returns an iterator of {input: array} chunks of any size; they
    are validated and re-cut into `batch_size` samples, and at most `limit` samples
    are served. Only one batch is held at a time, so memory does not grow with the
    number of samples (arrays from .npy files are memory-mapped).
    """

    def __init__(
        self,
        open_source: Callable[[], Iterable[Mapping[str, np.ndarray]]],
        specs: list[InputSpec],
        batch_size: int,
        source: str,
        limit: int | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        self.open_source = open_source
        self.specs = specs
        self.batch_size = batch_size
        self.source = source
        self.limit = limit
        self.labels = labels
        self._samples: int | None = None

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, np.ndarray],
        batch_size: int,
        source: str,
        specs: list[InputSpec] | None = None,
        labels: np.ndarray | None = None,
    ) -> Calibration:
        specs = specs or [InputSpec(k, v.dtype, (None, *v.shape[1:])) for k, v in arrays.items()]
        cal = cls(lambda: [arrays], specs, batch_size, source, labels=labels)
        cal._samples = int(next(iter(arrays.values())).shape[0])
        return cal

    @property
    def samples(self) -> int:
        """Samples served per pass (counted on a first pass if the source cannot say)."""
        if self._samples is None:
            self._samples = sum(next(iter(b.values())).shape[0] for b in self.batches())
        return self._samples

    def batches(self, desc: str | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Validated batches; with `desc`, a progress bar on a terminal (none in logs/CI)."""
        if desc is None:
            yield from self._batches()
            return
        total = -(-self._samples // self.batch_size) if self._samples else None
        yield from tqdm(
            self._batches(), desc=desc, total=total, unit="batch", leave=False, disable=None
        )

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        served = 0
        pending: list[dict[str, np.ndarray]] = []
        pending_n = 0
        for chunk in self.open_source():
            chunk = {s.name: _as_array(chunk, s.name) for s in self.specs}
            pending.append(chunk)
            pending_n += next(iter(chunk.values())).shape[0]
            while pending_n >= self.batch_size:
                batch, pending, pending_n = _take(pending, self.batch_size)
                validate(batch, self.specs)
                batch, stop = self._clip(batch, served)
                if batch:
                    served += next(iter(batch.values())).shape[0]
                    yield batch
                if stop:
                    return
        if pending_n:
            batch, _, _ = _take(pending, pending_n)
            validate(batch, self.specs)
            batch, _ = self._clip(batch, served)
            if batch:
                served += next(iter(batch.values())).shape[0]
                yield batch
        if served == 0:
            raise CalibrationError(f"calibration source {self.source} gave no samples")

    def _clip(self, batch: dict[str, np.ndarray], served: int) -> tuple[dict, bool]:
        if self.limit is None:
            return batch, False
        room = self.limit - served
        n = next(iter(batch.values())).shape[0]
        if n >= room:
            return ({k: v[:room] for k, v in batch.items()} if room > 0 else {}), True
        return batch, False

    def label_batches(self) -> Iterator[np.ndarray | None]:
        """Labels aligned with batches() (None per batch without --labels)."""
        start = 0
        for batch in self.batches():
            n = next(iter(batch.values())).shape[0]
            yield None if self.labels is None else self.labels[start : start + n]
            start += n


def _as_array(chunk: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in chunk:
        raise CalibrationError(
            f"calibration batch has no array for input '{name}'; it has {sorted(chunk)}"
        )
    return np.asarray(chunk[name])


def _take(
    pending: list[dict[str, np.ndarray]], n: int
) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]], int]:
    """Cut the first n samples off a queue of chunks."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in pending[0]}
    need, rest = n, []
    for i, chunk in enumerate(pending):
        size = next(iter(chunk.values())).shape[0]
        if need >= size:
            for k, v in chunk.items():
                parts[k].append(v)
            need -= size
        else:
            if need:
                for k, v in chunk.items():
                    parts[k].append(v[:need])
            rest = [{k: v[need:] for k, v in chunk.items()}] + pending[i + 1 :]
            need = 0
            break
        if need == 0:
            rest = pending[i + 1 :]
            break
    batch = {
        k: np.concatenate(v) if len(v) > 1 else np.ascontiguousarray(v[0]) for k, v in parts.items()
    }
    left = sum(next(iter(c.values())).shape[0] for c in rest)
    return batch, rest, left


def open_calibration(
    spec: str,
    specs: list[InputSpec],
    batch_size: int,
    limit: int | None,
    labels_path: str | None = None,
) -> Calibration:
    """A Calibration from --calib: FILE.npz, a folder of .npy, or SCRIPT.py[:function]."""
    labels = _load_labels(labels_path) if labels_path else None
    script, sep, func = spec.rpartition(":")
    if sep and script.endswith(".py"):
        return Calibration(_script_source(script, func), specs, batch_size, spec, limit, labels)
    path = Path(spec)
    if path.suffix == ".py":
        return Calibration(
            _script_source(spec, "load_data"), specs, batch_size, spec, limit, labels
        )
    arrays = _load_folder(path, specs) if path.is_dir() else load_npz(path, specs, None)
    cal = Calibration(lambda: [arrays], specs, batch_size, spec, limit, labels)
    total = int(next(iter(arrays.values())).shape[0])
    cal._samples = min(total, limit) if limit else total
    if labels is not None and labels.shape[0] < cal._samples:
        raise CalibrationError(
            f"--labels has {labels.shape[0]} entries for {cal._samples} calibration samples"
        )
    return cal


def _load_labels(path: str) -> np.ndarray:
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read --labels {path}: {exc}") from exc
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise CalibrationError(f"--labels {path} must be a 1-D integer array of class indices")
    return labels


def _load_folder(path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """DIR/<input>.npy (memory-mapped), or DIR/<input>/*.npy with one sample per file."""
    arrays = {}
    for spec in specs:
        single = path / f"{spec.name}.npy"
        sub = path / spec.name
        if single.is_file():
            arrays[spec.name] = np.load(single, mmap_mode="r", allow_pickle=False)
        elif sub.is_dir():
            files = sorted(sub.glob("*.npy"))
            if not files:
                raise CalibrationError(f"calibration folder {sub} has no .npy files")
            arrays[spec.name] = np.stack([np.load(f, allow_pickle=False) for f in files])
        else:
            raise CalibrationError(
                f"calibration folder {path} has neither {single.name} nor {sub.name}/ "
                f"for input '{spec.name}'"
            )
    return arrays


def _script_source(script: str, func: str) -> Callable[[], Iterable[Mapping[str, np.ndarray]]]:
    """The generator function `func` of a user's Python file, called once per pass."""
    import importlib.util

    path = Path(script)
    if not path.is_file():
        raise CalibrationError(f"calibration script not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"onnxprune_calib_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report it in one line
        raise CalibrationError(f"calibration script {path} failed to import: {exc}") from exc
    fn = getattr(module, func, None)
    if not callable(fn):
        raise CalibrationError(f"calibration script {path} has no function {func}()")

    def open_source() -> Iterable[Mapping[str, np.ndarray]]:
        try:
            yield from fn()
        except CalibrationError:
            raise
        except Exception as exc:
            raise CalibrationError(f"calibration script {path}:{func}() failed: {exc}") from exc

    return open_source


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
