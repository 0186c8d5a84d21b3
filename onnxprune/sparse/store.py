"""A directory of sparse blobs: one file per tensor per format, described by manifest.json.

The manifest is the contract with other readers (the estimator, a runtime loader): for
every tensor its original shape, dtype and 2-D view, its non-zero count, and for every
format the file, its exact size and sha256, its byte accounting, and which format is
smallest. The directory is built beside its destination and renamed into place, so a
failed run leaves the previous contents (or nothing) behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxprune.errors import OutputError, UsageError
from onnxprune.sparse.blob import BlobError
from onnxprune.sparse.compressed import BlockShapeError
from onnxprune.sparse.formats import FORMATS, decode, encode_with_stats, get_format
from onnxprune.sparse.options import DEFAULT_INDEX_BITS, Options
from onnxprune.sparse.runlength import EIEPointerError
from onnxprune.sparse.values import value_type
from onnxprune.sparse.view import check_kind, from_matrix, kind_family, to_matrix

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "onnxprune-sparse"
MANIFEST_VERSION = 1
DEFAULT_FORMATS = ("dense", "csr", "csc", "bitmask", "relidx", "eie")
# Errors that mean "this format cannot hold this tensor", not "the request is wrong".
_INAPPLICABLE = (BlockShapeError, EIEPointerError)


def write_blobs(
    directory: str | Path,
    tensors: Mapping[str, tuple[np.ndarray, str]],
    formats: Sequence[str] = DEFAULT_FORMATS,
    value_dtype: str = "fp32",
    *,
    index_bits: int | Mapping[str, int] | None = None,
    block: tuple[int, int] = (4, 1),
    n_pe: int = 64,
    run_bits: int = 4,
    strict: bool = False,
) -> dict[str, Any]:
    """Write `{name: (array, kind)}` in every format and return the manifest.

    kind is the 2-D view ('conv', 'fc', 'fc_t'; see `view`). index_bits: relidx width, one
    int or per family {'conv': 4, 'fc': 5} (the default). A format that cannot hold a tensor
    (BSR block not dividing it, EIE pointer overflow) is listed under the tensor's
    "skipped" with the reason, or raises when `strict`.
    """
    formats = _check_formats(formats)
    value_type(value_dtype)
    bits = _index_bits(index_bits)
    opts = {fam: Options(bits[fam], block, n_pe, run_bits) for fam in bits}
    directory = Path(directory)
    _check_target(directory)
    tmp = directory.parent / f".{directory.name}.{secrets.token_hex(6)}.tmp"
    try:
        os.mkdir(tmp)
        manifest = _manifest_head(formats, value_dtype, opts["conv"], bits)
        stems: set[str] = set()
        for name, (array, kind) in tensors.items():
            stem = _stem(name, stems)
            entry = _write_tensor(tmp, name, stem, array, kind, formats, value_dtype, opts, strict)
            manifest["tensors"][name] = entry
        manifest["totals"] = _totals(manifest["tensors"], formats)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _swap_into_place(tmp, directory)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(
            f"cannot write sparse blobs to {directory}: {exc.strerror or exc}"
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BlobError(f"no {MANIFEST} in {directory}: not a sparse blob directory") from None
    except (OSError, ValueError) as exc:
        raise BlobError(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BlobError(f"{path} is not an onnxprune sparse manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise BlobError(f"{path} has unsupported version {manifest.get('version')}")
    return manifest


def load(directory: str | Path, fmt: str | None = None) -> dict[str, np.ndarray]:
    """Decode every tensor of a blob directory to its original shape and dtype.

    fmt=None reads each tensor's best (smallest) format; all formats decode identically.
    fp32 blobs of float32 weights come back bit-exact (-0.0 as +0.0); fp16/int8 blobs give the
    dequantized values, cast back to each tensor's original dtype.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    out: dict[str, np.ndarray] = {}
    for name, entry in manifest["tensors"].items():
        chosen = fmt or entry["best"]
        info = entry["formats"].get(chosen)
        if info is None:
            raise BlobError(f"tensor '{name}' has no '{chosen}' blob in {directory}")
        matrix = decode(_read_blob(directory, info))
        if list(matrix.shape) != list(entry["matrix"]):
            raise BlobError(f"blob {info['file']} holds a {list(matrix.shape)} matrix")
        array = from_matrix(matrix, tuple(entry["shape"]), entry["kind"])
        out[name] = array.astype(np.dtype(entry["dtype"]), copy=False)
    return out


def _write_tensor(
    tmp, name, stem, array, kind, formats, value_dtype, opts, strict
) -> dict[str, Any]:
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise UsageError(f"sparse blobs hold float weights; '{name}' has dtype {array.dtype}")
    matrix = to_matrix(array, check_kind(kind))
    entry: dict[str, Any] = {
        "shape": list(array.shape), "dtype": array.dtype.name, "kind": kind,
        "matrix": list(matrix.shape), "elements": int(matrix.size),
    }  # fmt: skip
    written: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for fmt in formats:
        try:
            blob, stats = encode_with_stats(matrix, fmt, value_dtype, opts[kind_family(kind)])
        except _INAPPLICABLE as exc:
            if strict:
                raise
            skipped[fmt] = str(exc)
            continue
        file = f"{stem}.{fmt}.bin"
        (tmp / file).write_bytes(blob)
        written[fmt] = {"file": file, "sha256": hashlib.sha256(blob).hexdigest()}
        written[fmt].update(stats.to_json())
    if not written:
        raise UsageError(f"no requested sparse format can hold '{name}': {skipped}")
    first = next(iter(written.values()))
    entry["nnz"] = first["nnz"]
    entry["density"] = first["nnz"] / matrix.size if matrix.size else 0.0
    entry["formats"] = written
    entry["skipped"] = skipped
    entry["best"] = min(written, key=lambda f: (written[f]["bytes"], FORMATS[f].code))
    return entry


def _manifest_head(formats, value_dtype, opts: Options, bits) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "layout": "see onnxprune/sparse/blob.py (header) and each format's module",
        "value_dtype": value_dtype,
        "formats": list(formats),
        "options": {
            "index_bits": dict(bits),
            "block": list(opts.block),
            "n_pe": opts.n_pe,
            "run_bits": opts.run_bits,
        },  # fmt: skip
        "tensors": {},
    }


def _totals(entries: Mapping[str, Any], formats: Sequence[str]) -> dict[str, Any]:
    by_format: dict[str, int | None] = {}
    for fmt in formats:
        sizes = [e["formats"][fmt]["bytes"] for e in entries.values() if fmt in e["formats"]]
        by_format[fmt] = sum(sizes) if len(sizes) == len(entries) else None
    return {
        "tensors": len(entries),
        "elements": sum(e["elements"] for e in entries.values()),
        "nnz": sum(e["nnz"] for e in entries.values()),
        "best_bytes": sum(e["formats"][e["best"]]["bytes"] for e in entries.values()),
        "bytes_by_format": by_format,  # None: the format skipped some tensor
    }


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f.strip()]
    names = tuple(dict.fromkeys(get_format(f.strip()).name for f in formats))
    if not names:
        raise UsageError("no sparse format requested; valid formats: " + ", ".join(FORMATS))
    return names


def _index_bits(index_bits: int | Mapping[str, int] | None) -> dict[str, int]:
    if index_bits is None:
        return dict(DEFAULT_INDEX_BITS)
    if isinstance(index_bits, Mapping):
        unknown = set(index_bits) - set(DEFAULT_INDEX_BITS)
        if unknown:
            raise UsageError(f"index_bits keys must be 'conv' or 'fc', got {sorted(unknown)}")
        return {**DEFAULT_INDEX_BITS, **index_bits}
    return dict.fromkeys(DEFAULT_INDEX_BITS, index_bits)


def _stem(name: str, used: set[str]) -> str:
    """A safe, unique file stem for an initializer name (which may hold '/' or ':')."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80].lstrip(".") or "tensor"
    if stem != name or stem.lower() in used:
        stem = f"{stem}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    used.add(stem.lower())
    return stem


def _check_target(directory: Path) -> None:
    """Refuse to replace a directory that holds anything but our own previous output."""
    parent = directory.parent
    if not parent.is_dir():
        raise OutputError(f"parent directory of the sparse output does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"directory is not writable: {parent}")
    if not directory.exists():
        return
    if not directory.is_dir():
        raise OutputError(f"sparse output {directory} exists and is not a directory")
    present = {p.name for p in directory.iterdir()}
    if not present:
        return
    try:
        manifest = read_manifest(directory)
        ours = {MANIFEST} | {
            info["file"] for e in manifest["tensors"].values() for info in e["formats"].values()
        }
    except (BlobError, KeyError, TypeError, AttributeError):
        ours = set()
    if present - ours:
        raise OutputError(
            f"{directory} is not empty and not a previous onnxprune sparse output; "
            "choose a new or empty directory"
        )


def _swap_into_place(tmp: Path, directory: Path) -> None:
    if not directory.exists():
        os.replace(tmp, directory)
        return
    old = directory.parent / f".{directory.name}.{secrets.token_hex(6)}.old"
    os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def _read_blob(directory: Path, info: Mapping[str, Any]) -> bytes:
    file = str(info["file"])
    if Path(file).name != file or file in (".", ".."):
        raise BlobError(f"manifest names an invalid blob file '{file}'")
    try:
        blob = (directory / file).read_bytes()
    except OSError as exc:
        raise BlobError(f"cannot read blob {directory / file}: {exc.strerror or exc}") from exc
    if len(blob) != info["bytes"] or hashlib.sha256(blob).hexdigest() != info["sha256"]:
        raise BlobError(f"blob {directory / file} does not match its manifest (size or sha256)")
    return blob
