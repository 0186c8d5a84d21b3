"""Reading and writing models safely: clear errors on bad input, atomic writes.

The input file is only ever opened for reading; outputs go to a temporary file in
the destination directory and are renamed into place, so a failed run leaves
nothing half-written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxprune.errors import ModelError, OutputError

# Protobuf cannot serialise a single message above 2 GiB; larger models need
# ONNX external data for their weights.
_PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | Path, check: bool = True) -> onnx.ModelProto:
    """Load and validate a model, turning every failure into a one-line ModelError."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path}")
    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelError(f"{path} is not a readable ONNX model ({_first_line(exc)})") from exc
    if not model.graph.node:
        raise ModelError(f"{path} is not an ONNX model with a graph (no nodes found)")
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ModelError(f"{path} fails onnx.checker: {_first_line(exc)}") from exc
    return model


def check_output_path(output: str | Path, inputs: list[str | Path]) -> Path:
    """Refuse an output that would overwrite an input or land in an unwritable place."""
    output = Path(output)
    for src in inputs:
        if output.resolve() == Path(src).resolve():
            raise OutputError(f"output path {output} is the input file; choose another with -o")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory is not writable: {parent}")
    if output.exists() and output.is_dir():
        raise OutputError(f"output path is a directory: {output}")
    return output


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` only on success."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def save_model(model: onnx.ModelProto, dest: str | Path) -> int:
    """Write `model` atomically and return the file size in bytes."""
    dest = Path(dest)
    try:
        with atomic_path(dest) as tmp:
            if model.ByteSize() > _PROTOBUF_LIMIT:
                onnx.save_model(
                    model,
                    str(tmp),
                    save_as_external_data=True,
                    location=dest.name + ".data",
                )
            else:
                tmp.write_bytes(model.SerializeToString(deterministic=True))
    except OSError as exc:
        raise OutputError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    return dest.stat().st_size


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
