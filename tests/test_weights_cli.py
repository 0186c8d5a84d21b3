"""The connection-pruning flags on the command line: they reach the pipeline, and every bad
value is one error line with exit code 2 (UsageError) and nothing written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxprune.cli import main

MLP = "mlp_digits.onnx"


@pytest.fixture()
def workdir(tmp_path, models_dir, calib_path):
    shutil.copy(models_dir / MLP, tmp_path / MLP)
    shutil.copy(calib_path, tmp_path / "calib.npz")
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def tree(root: Path) -> dict[str, str]:
    """Every file and directory under root, with a digest of each file."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


def test_flags_reach_the_report(workdir):
    report = workdir / "r.json"
    result = invoke(
        workdir / MLP, "--weights", "0.8", "--weight-criterion", "wanda", "--calib",
        workdir / "calib.npz", "--layer-ratio", "weights:*net.5*=0.3", "--sparse-dir",
        workdir / "blobs", "--sparse-formats", "csr,eie", "--sparse-values", "fp16",
        "--index-bits", "6", "--eie-pes", "8", "--sparse-initializers", "-o",
        workdir / "o.onnx", "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "weights: " in result.output and "MACs with zero skipping" in result.output
    data = json.loads(report.read_text())
    section = data["sparsity"]
    assert section["criterion"] == "wanda" and section["target"] == 0.8
    rows = {r["node"]: r for r in section["layers"]}
    assert rows["/net/net.5/Gemm"]["source"] == "--layer-ratio weights:*net.5*"
    assert rows["/net/net.5/Gemm"]["target_sparsity"] == 0.3
    assert section["blobs"] == {
        "directory": str(workdir / "blobs"),
        "value_dtype": "fp16",
        "formats": ["csr", "eie"],
        "options": {"index_bits": {"conv": 6, "fc": 6}, "block": [4, 1], "n_pe": 8},
    }
    assert section["sparse_initializers"]["stored_sparse"] >= 1
    assert (workdir / "blobs" / "manifest.json").exists()
    assert data["options"]["weights"] == 0.8 and data["options"]["sparse_initializers"] is True


def test_layer_ratio_with_filters_and_weights_needs_a_prefix(workdir):
    args = [workdir / MLP, "--filters", "0.2", "--weights", "0.5", "-o", workdir / "o.onnx"]
    result = invoke(*args, "--layer-ratio", "*net.1*=0.5")
    assert result.exit_code == 2 and "filters:*net.1*=0.5" in result.output
    result = invoke(*args, "--layer-ratio", "weights:*net.1*=0.7", "--report", workdir / "r.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((workdir / "r.json").read_text())["sparsity"]["layers"]
    assert {r["node"]: r["target_sparsity"] for r in rows}["/net/net.1/Gemm"] == 0.7


def _calib(w: Path) -> list:
    return ["--calib", w / "calib.npz"]


BAD_INPUTS = {
    "weights 1.0": ["--weights", "1.0"],
    "weights negative": ["--weights", "-0.1"],
    "weights nan": ["--weights", "nan"],
    "nm N >= M": ["--nm", "4:2"],
    "nm malformed": ["--nm", "2-4"],
    "nm zero": ["--nm", "0:4"],
    "nm and weights": ["--nm", "2:4", "--weights", "0.5"],
    "unknown weight criterion": ["--weights", "0.5", "--weight-criterion", "magic"],
    "obs without calib": ["--weights", "0.5", "--weight-criterion", "obs"],
    "wanda without calib": ["--weights", "0.5", "--weight-criterion", "wanda"],
    "block not dividing": ["--weights", "0.5", "--sparse-formats", "bsr", "--bsr-block", "4x4"],
    "block malformed": ["--weights", "0.5", "--bsr-block", "4by1"],
    "block zero": ["--weights", "0.5", "--bsr-block", "0x1"],
    "unknown format": ["--weights", "0.5", "--sparse-formats", "csr,zip"],
    "no format": ["--weights", "0.5", "--sparse-formats", ","],
    "unknown values": ["--weights", "0.5", "--sparse-values", "int4"],
    "index bits zero": ["--weights", "0.5", "--index-bits", "0"],
    "index bits too wide": ["--weights", "0.5", "--index-bits", "fc=17"],
    "index bits malformed": ["--weights", "0.5", "--index-bits", "conv:4"],
    "eie pes zero": ["--weights", "0.5", "--eie-pes", "0"],
    "weight layer ratio out of range": ["--weights", "0.5", "--layer-ratio", "weights:x=1"],
    "ambiguous layer ratio": ["--weights", "0.5", "--filters", "0.2", "--layer-ratio", "a=0.5"],
    "sparse initializers alone": ["--filters", "0.2", "--sparse-initializers"],
    "sparse dir alone": ["--filters", "0.2", "--sparse-dir", "blobs"],
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_exit_2_nothing_written(workdir, case):
    before = tree(workdir)
    result = invoke(workdir / MLP, *BAD_INPUTS[case])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("onnxprune: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert tree(workdir) == before, "nothing may be written or changed on error"


def test_block_that_divides_everything_is_accepted(workdir):
    result = invoke(
        workdir / MLP, "--weights", "0.5", "--sparse-formats", "bsr", "--bsr-block", "2x4", "-q"
    )
    assert result.exit_code == 0, result.output
