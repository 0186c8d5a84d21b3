"""Sparse blobs written by a prune run: they decode to exactly the written model's weights,
the report's byte counts are the files', and bad blob options fail before anything is
written."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnxprune import prune, sparse
from onnxprune.cli import main
from onnxprune.sparse.values import quantized_dense
from onnxprune.sparsity import parse_block, parse_formats, parse_index_bits

MLP = "mlp_digits.onnx"


@pytest.fixture()
def workdir(tmp_path, models_dir, calib_path):
    for name in (MLP, "vgg_digits.onnx"):
        shutil.copy(models_dir / name, tmp_path / name)
    shutil.copy(calib_path, tmp_path / "calib.npz")
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def written_inits(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def test_default_blob_dir_and_exact_load(workdir):
    model = workdir / "vgg_digits.onnx"
    result = invoke(
        model, "--weights", "0.8", "--weight-criterion", "magnitude", "--calib",
        workdir / "calib.npz", "--calib-samples", "32", "--report", workdir / "r.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = workdir / "vgg_digits.pruned.onnx"
    blob_dir = workdir / "vgg_digits.pruned.sparse"
    assert out.exists() and (blob_dir / sparse.MANIFEST).exists()
    assert "sparse blobs: best" in result.output
    weights = written_inits(out)
    report = json.loads((workdir / "r.json").read_text())
    section = report["sparsity"]
    names = [row["weight"] for row in section["layers"]]
    assert len(names) == 6  # 4 convs + 2 fc
    loaded = sparse.load(blob_dir)
    assert sorted(loaded) == sorted(names)
    for fmt in sparse.DEFAULT_FORMATS:
        by_format = sparse.load(blob_dir, fmt)
        for name in names:
            assert by_format[name].dtype == weights[name].dtype
            np.testing.assert_array_equal(bits(by_format[name]), bits(weights[name]))
    manifest = sparse.read_manifest(blob_dir)
    for row in section["layers"]:
        entry = manifest["tensors"][row["weight"]]
        assert row["best_format"] == entry["best"] and row["nnz"] == entry["nnz"]
        for fmt, info in row["formats"].items():
            assert info["bytes"] == (blob_dir / entry["formats"][fmt]["file"]).stat().st_size
            assert info["overhead_bytes"] == info["bytes"] - row["nnz"] * 4
        assert row["formats"]["dense"]["bytes"] == row["dense_bytes"] + 36  # + blob header
    totals = section["totals"]
    assert totals["best_bytes"] == sum(r["best_bytes"] for r in section["layers"])
    assert totals["best_bytes"] < 0.35 * totals["dense_bytes"]
    assert section["blobs"]["directory"] == str(blob_dir)
    assert section["blobs"]["options"]["index_bits"] == {"conv": 4, "fc": 5}


def test_relidx_size_is_nnz_times_value_and_index_bits_plus_fillers(workdir):
    result = prune(workdir / MLP, workdir / "m.onnx", weights=0.92)
    for row in result.report["sparsity"]["layers"]:
        info = row["formats"]["relidx"]
        entries = row["nnz"] + info["fillers"]
        assert info["entries"] == entries
        formula = math.ceil(entries * (32 + 5) / 8) + 36  # fc: 5-bit indices, fp32 values
        assert info["bytes"] == formula


@pytest.mark.parametrize("values", ["fp16", "int8"])
def test_quantized_values_decode_to_the_quantized_weights(workdir, values):
    out = workdir / "q.onnx"
    result = invoke(
        workdir / MLP, "--weights", "0.9", "--sparse-values", values, "--sparse-formats",
        "csr,relidx,bsr", "--bsr-block", "2x4", "--index-bits", "conv=3,fc=6", "--eie-pes", "4",
        "-o", out, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    blob_dir = workdir / "q.sparse"
    manifest = sparse.read_manifest(blob_dir)
    assert manifest["value_dtype"] == values and manifest["formats"] == ["csr", "relidx", "bsr"]
    assert manifest["options"]["index_bits"] == {"conv": 3, "fc": 6}
    weights = written_inits(out)
    for fmt in manifest["formats"]:
        for name, array in sparse.load(blob_dir, fmt).items():
            np.testing.assert_array_equal(array, quantized_dense(weights[name], values))


def test_default_bsr_block_skips_what_it_cannot_tile(workdir):
    result = prune(workdir / MLP, workdir / "m.onnx", weights=0.5, sparse_formats="bsr,csr")
    rows = {r["weight"]: r for r in result.report["sparsity"]["layers"]}
    assert "bsr" in rows["net.1.weight"]["formats"]  # 300 rows: 4x1 tiles it
    assert "bsr" in rows["net.5.weight"]["formats_skipped"]  # 10 rows
    assert result.report["sparsity"]["totals"]["bytes_by_format"]["bsr"] is None


def test_no_write_accounts_bytes_like_the_written_blobs(workdir):
    kwargs = {"weights": 0.85, "sparse_formats": ("csr", "eie", "bitmask")}
    written = prune(workdir / MLP, workdir / "m.onnx", **kwargs)
    dry = prune(workdir / MLP, write=False, **kwargs)
    assert dry.report["sparsity"]["blobs"]["directory"] is None
    for a, b in zip(
        written.report["sparsity"]["layers"], dry.report["sparsity"]["layers"], strict=True
    ):
        assert a["formats"] == b["formats"] and a["best_format"] == b["best_format"]


def test_blobs_are_deterministic_and_replace_their_own_output(workdir):
    args = [workdir / MLP, "--weights", "0.9", "-o", workdir / "m.onnx", "-q"]
    assert invoke(*args).exit_code == 0
    first = {p.name: p.read_bytes() for p in (workdir / "m.sparse").iterdir()}
    assert invoke(*args).exit_code == 0
    second = {p.name: p.read_bytes() for p in (workdir / "m.sparse").iterdir()}
    assert first == second


def test_foreign_sparse_dir_is_refused_and_nothing_written(workdir):
    foreign = workdir / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = invoke(workdir / MLP, "--weights", "0.5", "--sparse-dir", foreign)
    assert result.exit_code == 5, result.output
    assert "not empty" in result.output
    assert not (workdir / "mlp_digits.pruned.onnx").exists()
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_blob_option_parsers():
    assert parse_formats("csr, relidx,csr") == ("csr", "relidx")
    assert parse_block("8x2") == (8, 2) and parse_block(None) is None
    assert parse_index_bits(None) == {"conv": 4, "fc": 5}
    assert parse_index_bits("6") == {"conv": 6, "fc": 6}
    assert parse_index_bits("fc=8") == {"conv": 4, "fc": 8}
