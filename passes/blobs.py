"""blobs and sparse_initializers: how the pruned weights are stored.

`sparse_initializers` rewrites the model so pruned weights are ONNX sparse initializers
(the written file shrinks), and proves onnxruntime gives the dense zeroed model's outputs
exactly. `blobs` encodes every pruned weight in the sparse accelerator formats, adds the
byte accounting to the report, and — when given a directory — writes the blobs atomically
and decodes every one back to check it. Both run after verify and report, before emit.
"""

from __future__ import annotations

import shutil

from onnxprune.pipeline import Context, Param, Pass
from onnxprune.sparse import DEFAULT_FORMATS, write_blobs
from onnxprune.sparse_onnx import check_sparse_model, to_sparse_initializers
from onnxprune.sparsity import (
    DEFAULT_BLOCK,
    analyze_blobs,
    blob_section,
    blob_tensors,
    check_blobs,
    check_block,
    parse_block,
    parse_formats,
    parse_index_bits,
)


class SparseInitializersPass(Pass):
    name = "sparse_initializers"
    description = "Store pruned weights as ONNX sparse initializers; outputs must stay identical."
    requires = ("pruned", "sparsity", "calibration", "report")
    provides = ("pruned",)

    def run(self, ctx: Context) -> None:
        dense = ctx.pruned
        names = [row["weight"] for row in ctx.sparsity["layers"]]
        sparse, rows = to_sparse_initializers(dense, names)
        samples = check_sparse_model(sparse, dense, ctx.calibration.batches())
        ctx.pruned = sparse
        ctx.report["size_bytes"]["after"] = sparse.ByteSize()
        section = ctx.report.get("sparsity")
        if section is not None:
            section["sparse_initializers"] = {
                "tensors": rows,
                "stored_sparse": sum(r["stored"] == "sparse" for r in rows),
                "model_bytes_dense": dense.ByteSize(),
                "model_bytes_sparse": sparse.ByteSize(),
                "verified": f"outputs identical to the dense zeroed model on {samples} "
                f"{ctx.calibration.source} inputs",
            }


class BlobsPass(Pass):
    name = "blobs"
    description = "Sparse-format blobs of every pruned weight, byte accounting, exact decode."
    params = {
        "directory": Param(str, None, "blob directory (None: only account the bytes)"),
        "formats": Param(tuple, DEFAULT_FORMATS, "formats to encode"),
        "values": Param(str, "fp32", "value encoding", ("fp32", "fp16", "int8")),
        "index_bits": Param(object, None, "relidx index bits: N or {'conv': N, 'fc': M}"),
        "block": Param(tuple, None, "BSR block (R, C); given explicitly it must divide"),
        "n_pe": Param(int, 64, "EIE processing elements"),
    }
    requires = ("pruned", "sparsity", "report")

    def run(self, ctx: Context) -> None:
        o = self.options
        formats = parse_formats(o["formats"])
        bits = parse_index_bits(o["index_bits"])
        block = parse_block(o["block"])
        tensors = blob_tensors(ctx.pruned, ctx.sparsity)
        if block is not None and "bsr" in formats:
            check_block(tensors, block)
        block = block or DEFAULT_BLOCK
        directory = o["directory"]
        if directory:
            manifest = write_blobs(
                directory, tensors, formats, o["values"], index_bits=bits, block=block,
                n_pe=o["n_pe"],
            )  # fmt: skip
            try:
                check_blobs(directory, tensors, manifest, o["values"])
            except Exception:
                shutil.rmtree(directory, ignore_errors=True)  # never leave unproven blobs
                raise
            entries = manifest["tensors"]
        else:
            entries = analyze_blobs(tensors, formats, o["values"], bits, block, o["n_pe"])
        section = ctx.report.get("sparsity")
        if section is not None:
            options = {"index_bits": bits, "block": list(block), "n_pe": o["n_pe"]}
            blob_section(section, entries, o["values"], formats, options, directory)
