"""`onnxprune estimate`: output, options and one-line errors with documented exit codes."""

from __future__ import annotations

import json
import sys

import click
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.estimate_cli import estimate_command
from tests.test_estimate import FULL_TOML, two_layer


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "two.onnx"
    onnx.save(two_layer(), str(path))
    return path


def run(*args):
    group = click.Group("onnxprune")
    group.add_command(estimate_command)
    return CliRunner().invoke(group, ["estimate", *map(str, args)])


def test_text_report(model_path):
    res = run(model_path)
    assert res.exit_code == 0, res.output
    assert "accelerator  generic-45nm" in res.output
    assert "ALL FIT on chip" in res.output
    assert "energy per inference" in res.output


def test_json_and_sram_option(model_path):
    res = run(model_path, "--json", "--sram-bytes", "41")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["model"] == str(model_path)
    assert r["accelerator"]["sram_bytes"] == 41
    assert r["fit"]["on_chip"] is False and r["dram_bytes_per_inference"] == 14


def test_toml_accelerator_and_dtype(model_path, tmp_path):
    toml = tmp_path / "npu.toml"
    toml.write_text(FULL_TOML)
    r = json.loads(run(model_path, "--json", "-a", toml).output)
    assert r["accelerator"]["name"] == "my-npu"
    r = json.loads(run(model_path, "--json", "--dtype", "fp16").output)
    assert r["accelerator"]["pj_per_mac_used"] == 1.5


def test_compare_and_plot(model_path, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "energy.png"
    res = run(model_path, "--compare", model_path, "--plot", out, "-a", "eie-64pe")
    assert res.exit_code == 0, res.output
    assert "compared with two.onnx (baseline)" in res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = json.loads(run(model_path, "--compare", model_path, "--json").output)
    assert r["compare"]["model"] == str(model_path)
    assert r["compare"]["energy_pj"] == r["energy_pj"]


def test_plot_without_matplotlib_is_a_clear_error(model_path, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):  # importing them now raises ImportError
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "energy.png"
    res = run(model_path, "--plot", out)
    assert res.exit_code == 2
    assert "pip install 'onnxprune[plot]'" in res.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-a", "tpu9"], 2, "unknown accelerator 'tpu9'"),
        (["--sram-bytes", "-1"], 2, "--sram-bytes must be a byte count"),
        (["--layers", "conv*"], 2, "matches no"),
        (["--input-shape", "nope:1,4"], 2, "unknown input"),
        (["--plot", "out.jpg"], 2, "path ending in .png"),
    ],
)
def test_usage_errors(model_path, args, code, message):
    res = run(model_path, *args)
    assert res.exit_code == code
    assert message in res.output
    assert res.output.startswith("onnxprune: error: ") and res.output.count("\n") == 1


def test_bad_toml_and_missing_model(model_path, tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("dtype = 'fp32'\n")
    res = run(model_path, "-a", toml)
    assert res.exit_code == 2 and "missing required key" in res.output
    res = run(tmp_path / "missing.onnx")
    assert res.exit_code == 3 and "model file not found" in res.output
