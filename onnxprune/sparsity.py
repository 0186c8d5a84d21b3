"""What connection pruning left: measured density, MACs with zero skipping, blob sizes.

Every number is measured on the model itself (non-zeros counted in its initializers,
MACs from `onnxprune.metrics.node_macs`) or, for blob sizes, is the exact byte count of
the blob each format produces; nothing is derived from the requested ratio.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxprune.errors import UsageError, VerificationError
from onnxprune.sparse import (
    DEFAULT_FORMATS,
    BlockShapeError,
    EIEPointerError,
    analyze,
    get_format,
    matrix_shape,
)
from onnxprune.sparse.options import DEFAULT_INDEX_BITS, Options
from onnxprune.sparse.store import _check_target
from onnxprune.sparse.values import quantized_dense, value_type
from onnxprune.sparse.view import kind_family
from onnxprune.sparse_onnx import weight_arrays

DEFAULT_BLOCK = (4, 1)
_EXTRA_KEYS = (
    "target",
    "bias",
    "relative_error_before",
    "exact_refit",
    "han_quality",
    "threshold",
    "relative_error",
    "damping",
    "calibration_rows",
    "note",
)


# options ------------------------------------------------------------------------------


def parse_formats(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """'csr,relidx' (or a sequence) -> validated format names; None: all default formats."""
    if text is None:
        return DEFAULT_FORMATS
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(get_format(f.strip()).name for f in items if f.strip()))
    if not names:
        raise UsageError("--sparse-formats names no format; valid: " + ", ".join(DEFAULT_FORMATS))
    return names


def parse_block(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """'RxC' (or a pair) -> (R, C) positive; None stays None (the default block)."""
    if text is None:
        return None
    if isinstance(text, str):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
        if not match:
            raise UsageError(f"--bsr-block must look like RxC (e.g. 4x1), got '{text}'")
        block = (int(match.group(1)), int(match.group(2)))
    else:
        block = tuple(int(v) for v in text)
    if len(block) != 2 or min(block) < 1:
        raise UsageError(f"--bsr-block must be two positive integers RxC, got {text!r}")
    return block  # type: ignore[return-value]


def parse_index_bits(text: str | int | Mapping[str, int] | None) -> dict[str, int]:
    """'N' (both families) or 'conv=N,fc=M' -> {'conv': N, 'fc': M}; None: Deep Compression's
    4 bits for conv and 5 for fully connected layers."""
    if text is None:
        return dict(DEFAULT_INDEX_BITS)
    if isinstance(text, Mapping):
        bits = {**DEFAULT_INDEX_BITS, **text}
    elif isinstance(text, int) or str(text).strip().isdigit():
        bits = dict.fromkeys(DEFAULT_INDEX_BITS, int(text))
    else:
        bits = dict(DEFAULT_INDEX_BITS)
        for part in str(text).split(","):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in bits or not value.strip().isdigit():
                raise UsageError(f"--index-bits must be N or conv=N,fc=M, got '{text}'")
            bits[key.strip()] = int(value)
    if set(bits) != set(DEFAULT_INDEX_BITS):
        raise UsageError(f"--index-bits keys must be 'conv' and 'fc', got {sorted(bits)}")
    for value in bits.values():
        Options(index_bits=value)  # validates the range
    return bits


def default_sparse_dir(output: str | Path) -> Path:
    """MODEL.sparse/ beside the output model MODEL.onnx."""
    output = Path(output)
    return output.with_name(output.stem + ".sparse")


def check_sparse_dir(directory: str | Path, files: Sequence[str | Path] = ()) -> None:
    """Refuse a blob directory that cannot be written, or that would clobber a file."""
    directory = Path(directory)
    for other in files:
        if directory.resolve() == Path(other).resolve():
            raise UsageError(f"--sparse-dir {directory} is also a model or report path")
    _check_target(directory)


# the report section -------------------------------------------------------------------


def sparsity_section(
    model, record: Mapping[str, Any], node_macs: Mapping[str, int]
) -> dict[str, Any]:
    """Per-layer density, non-zeros and MACs with zero skipping, measured on `model`."""
    arrays = weight_arrays(model, [r["weight"] for r in record["layers"]])
    layers = []
    for rec in record["layers"]:
        w = arrays[rec["weight"]]
        nnz = int(np.count_nonzero(w))
        density = nnz / w.size if w.size else 0.0
        macs = int(node_macs.get(rec["node"], 0))
        row = {
            key: rec[key]
            for key in ("node", "op", "weight", "kind", "criterion", "source", "nm")
            if key in rec
        }
        row.update(
            shape=list(w.shape),
            target_sparsity=round(rec["target_sparsity"], 6),
            elements=int(w.size),
            nnz=nnz,
            density=round(density, 6),
            sparsity=round(1.0 - density, 6),
            dense_bytes=int(w.nbytes),
            macs=macs,
            effective_macs=int(round(macs * density)),
        )
        row.update({k: rec[k] for k in _EXTRA_KEYS if k in rec})
        layers.append(row)
    total_macs = int(sum(node_macs.values()))
    pruned_macs = sum(r["macs"] for r in layers)
    elements = sum(r["elements"] for r in layers)
    nnz = sum(r["nnz"] for r in layers)
    return {
        "criterion": record["criterion"],
        "target": record["sparsity"],
        "nm": record["nm"],
        "sequential": record["sequential"],
        "layers": layers,
        "skipped": list(record["skipped"]),
        "totals": {
            "layers": len(layers),
            "elements": elements,
            "nnz": nnz,
            "density": round(nnz / elements, 6) if elements else 0.0,
            "sparsity": round(1 - nnz / elements, 6) if elements else 0.0,
            "dense_bytes": sum(r["dense_bytes"] for r in layers),
            "macs": total_macs,
            "effective_macs": total_macs - pruned_macs + sum(r["effective_macs"] for r in layers),
            "macs_unit": "MACs, batch 1; effective = per-layer MACs x density (zero skipping)",
        },
    }


# blobs --------------------------------------------------------------------------------


def blob_tensors(model, record: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, str]]:
    """{initializer: (dense pruned array, sparse view kind)} of every pruned layer."""
    arrays = weight_arrays(model, [r["weight"] for r in record["layers"]])
    return {r["weight"]: (arrays[r["weight"]], r["kind"]) for r in record["layers"]}


def check_block(tensors: Mapping[str, tuple[np.ndarray, str]], block: tuple[int, int]) -> None:
    """An explicit --bsr-block must divide the [out, in] view of every pruned weight."""
    for name, (array, kind) in tensors.items():
        rows, cols = matrix_shape(array.shape, kind)
        if rows % block[0] or cols % block[1]:
            raise UsageError(
                f"--bsr-block {block[0]}x{block[1]} does not divide weight '{name}' "
                f"(its [out, in] view is {rows}x{cols}); choose a block that divides every "
                "pruned weight or drop bsr from --sparse-formats"
            )


def analyze_blobs(
    tensors: Mapping[str, tuple[np.ndarray, str]],
    formats: Sequence[str],
    value_dtype: str,
    index_bits: Mapping[str, int],
    block: tuple[int, int],
    n_pe: int,
) -> dict[str, dict[str, Any]]:
    """Manifest-like entries (bytes per format, best) computed without writing a byte."""
    from onnxprune.sparse import to_matrix

    entries: dict[str, dict[str, Any]] = {}
    for name, (array, kind) in tensors.items():
        matrix = to_matrix(array, kind)
        written, skipped = {}, {}
        for fmt in formats:
            try:
                stats = analyze(
                    matrix,
                    fmt,
                    value_dtype,
                    index_bits=index_bits[kind_family(kind)],
                    block=block,
                    n_pe=n_pe,
                )
            except (BlockShapeError, EIEPointerError) as exc:  # this format cannot hold it
                skipped[fmt] = str(exc)
                continue
            written[fmt] = stats.to_json()
        if not written:
            raise UsageError(f"no requested sparse format can hold '{name}': {skipped}")
        best = min(written, key=lambda f: (written[f]["bytes"], get_format(f).code))
        entries[name] = {"formats": written, "skipped": skipped, "best": best}
    return entries


def check_blobs(
    directory: str | Path,
    tensors: Mapping[str, tuple[np.ndarray, str]],
    manifest: Mapping[str, Any],
    value_dtype: str,
) -> None:
    """Every written blob, in every format, must decode to the pruned weight (exactly)."""
    from onnxprune.sparse import load

    for fmt in manifest["formats"]:
        loaded = load(directory, fmt) if _all_have(manifest, fmt) else None
        for name, (array, _kind) in tensors.items():
            if fmt not in manifest["tensors"][name]["formats"]:
                continue
            got = loaded[name] if loaded is not None else _load_one(directory, name, fmt)
            want = quantized_dense(array, value_dtype).astype(array.dtype)
            if got.shape != array.shape or not np.array_equal(got, want):
                raise VerificationError(
                    f"sparse blob of '{name}' in format {fmt} does not decode to the weight"
                )


def _all_have(manifest: Mapping[str, Any], fmt: str) -> bool:
    return all(fmt in e["formats"] for e in manifest["tensors"].values())


def _load_one(directory, name: str, fmt: str) -> np.ndarray:
    from onnxprune.sparse import decode, from_matrix, read_manifest

    entry = read_manifest(directory)["tensors"][name]
    blob = (Path(directory) / entry["formats"][fmt]["file"]).read_bytes()
    return from_matrix(decode(blob), tuple(entry["shape"]), entry["kind"]).astype(entry["dtype"])


def blob_section(
    section: dict[str, Any],
    entries: Mapping[str, Mapping[str, Any]],
    value_dtype: str,
    formats: Sequence[str],
    options: Mapping[str, Any],
    directory: str | Path | None,
) -> None:
    """Add bytes per format, index overhead and the best format to the sparsity section."""
    value_bytes = value_type(value_dtype).nbytes
    by_format: dict[str, int | None] = dict.fromkeys(formats, 0)
    for row in section["layers"]:
        entry = entries[row["weight"]]
        row["formats"] = {}
        for fmt, info in entry["formats"].items():
            row["formats"][fmt] = {
                "bytes": info["bytes"],
                "vs_dense": round(info["bytes"] / row["dense_bytes"], 6)
                if row["dense_bytes"]
                else None,
                "header_bytes": info["header_bytes"],
                "index_bytes": info["index_bytes"],
                "value_bytes": info["value_bytes"],
                "overhead_bytes": info["bytes"] - info["nnz"] * value_bytes,
                "fillers": info["fillers"],
                "entries": info["entries"],
            }
        if entry.get("skipped"):
            row["formats_skipped"] = dict(entry["skipped"])
        row["best_format"] = entry["best"]
        row["best_bytes"] = entry["formats"][entry["best"]]["bytes"]
        for fmt in formats:
            size = entry["formats"].get(fmt, {}).get("bytes")
            current = by_format[fmt]
            by_format[fmt] = None if size is None or current is None else current + size
    totals = section["totals"]
    totals["bytes_by_format"] = by_format
    totals["best_bytes"] = sum(r["best_bytes"] for r in section["layers"])
    totals["best_vs_dense"] = _ratio(totals["best_bytes"], totals["dense_bytes"])
    totals["index_overhead_bytes"] = sum(
        r["formats"][r["best_format"]]["overhead_bytes"] for r in section["layers"]
    )
    section["blobs"] = {
        "directory": str(directory) if directory is not None else None,
        "value_dtype": value_dtype,
        "formats": list(formats),
        "options": dict(options),
    }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None
