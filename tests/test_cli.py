"""The CLI end to end: outputs, report, determinism, and every bad input of issue 2."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.cli import main
from tests.helpers import run


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def workdir(tmp_path, models_dir, calib_path):
    for name in ("resnet_digits.onnx", "vgg_digits.onnx"):
        shutil.copy(models_dir / name, tmp_path / name)
    shutil.copy(calib_path, tmp_path / "calib.npz")
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_default_output_and_report(workdir):
    model = workdir / "resnet_digits.onnx"
    digest = _sha(model)
    result = invoke(
        model, "--filters", "0.5", "--calib", workdir / "calib.npz", "--report", workdir / "r.json"
    )
    assert result.exit_code == 0, result.output
    out = workdir / "resnet_digits.pruned.onnx"
    assert out.exists()
    assert _sha(model) == digest, "input must never be modified"
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    report = json.loads((workdir / "r.json").read_text())
    for key in ("params", "flops", "size_bytes"):
        assert report[key]["after"] < report[key]["before"]
    assert report["size_bytes"]["after"] == out.stat().st_size
    assert report["fidelity"]["outputs"][0]["top1_agreement"] is not None
    assert set(report["timings"]) >= {"load", "groups", "surgery", "verify"}
    assert report["plan"]["groups"] and report["command"][0] == "onnxprune"
    assert "params" in result.output and "MACs" in result.output


def test_deterministic_output(workdir):
    a, b = workdir / "a.onnx", workdir / "b.onnx"
    for out in (a, b):
        result = invoke(workdir / "vgg_digits.onnx", "--filters", "0.3", "-o", out, "-q")
        assert result.exit_code == 0, result.output
    assert a.read_bytes() == b.read_bytes()


def test_plan_replay_reproduces_model(workdir):
    first, second = workdir / "a.onnx", workdir / "b.onnx"
    assert (
        invoke(
            workdir / "vgg_digits.onnx",
            "--filters",
            "0.5",
            "--criterion",
            "l2",
            "-o",
            first,
            "--report",
            workdir / "r.json",
            "-q",
        ).exit_code
        == 0
    )
    result = invoke(workdir / "vgg_digits.onnx", "--plan", workdir / "r.json", "-o", second, "-q")
    assert result.exit_code == 0, result.output
    assert first.read_bytes() == second.read_bytes()


def test_mask_only_keeps_shapes(workdir):
    out = workdir / "m.onnx"
    assert (
        invoke(
            workdir / "vgg_digits.onnx", "--filters", "0.5", "--mask-only", "-o", out, "-q"
        ).exit_code
        == 0
    )
    src = {
        i.name: list(i.dims) for i in onnx.load(str(workdir / "vgg_digits.onnx")).graph.initializer
    }
    got = {i.name: list(i.dims) for i in onnx.load(str(out)).graph.initializer}
    assert src == got
    zeros = sum(
        int((onnx.numpy_helper.to_array(i) == 0).sum())
        for i in onnx.load(str(out)).graph.initializer
    )
    assert zeros > 1000


def test_exclude_keeps_matching_groups(workdir):
    out = workdir / "e.onnx"
    result = invoke(
        workdir / "vgg_digits.onnx",
        "--filters",
        "0.5",
        "--exclude",
        "*features.0*",
        "--exclude",
        "nothing-matches-this",
        "-o",
        out,
        "--report",
        workdir / "r.json",
    )
    assert result.exit_code == 0, result.output
    assert "nothing-matches-this" in result.output  # the warning
    report = json.loads((workdir / "r.json").read_text())
    excluded = [g for g in report["groups"] if g.get("excluded_by")]
    assert excluded and all(g["channels_after"] == g["channels_before"] for g in excluded)


def test_round_to(workdir):
    result = invoke(
        workdir / "vgg_digits.onnx",
        "--filters",
        "0.3",
        "--round-to",
        "8",
        "-o",
        workdir / "o.onnx",
        "--report",
        workdir / "r.json",
        "-q",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((workdir / "r.json").read_text())
    kept = [len(g["keep"]) for g in report["plan"]["groups"]]
    assert kept and all(k % 8 == 0 for k in kept)


def test_python_dash_m_and_version(workdir):
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "onnxprune", "--version"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0 and "onnxprune" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "onnxprune", str(workdir / "missing.onnx"), "--filters", "0.5"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 3
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


def _bad_calib(workdir: Path, **arrays) -> Path:
    path = workdir / "bad.npz"
    np.savez(path, **arrays)
    return path


BAD_INPUTS = {
    "missing file": (3, lambda w: [w / "nope.onnx", "--filters", "0.5"]),
    "not onnx": (
        3,
        lambda w: [_write(w / "junk.onnx", b"\x00garbage\xff" * 10), "--filters", "0.5"],
    ),
    "ratio too big": (2, lambda w: [w / "vgg_digits.onnx", "--filters", "1.0"]),
    "ratio negative": (2, lambda w: [w / "vgg_digits.onnx", "--filters", "-0.1"]),
    "unknown criterion": (
        2,
        lambda w: [w / "vgg_digits.onnx", "--filters", "0.5", "--criterion", "magic"],
    ),
    "output is input": (
        5,
        lambda w: [w / "vgg_digits.onnx", "--filters", "0.5", "-o", w / "vgg_digits.onnx"],
    ),
    "unwritable dir": (
        5,
        lambda w: [w / "vgg_digits.onnx", "--filters", "0.5", "-o", w / "no" / "such" / "dir.onnx"],
    ),
    "calib missing input": (
        4,
        lambda w: [
            w / "vgg_digits.onnx",
            "--filters",
            "0.5",
            "--calib",
            _bad_calib(w, other=np.zeros((4, 1, 8, 8), np.float32)),
        ],
    ),
    "calib wrong shape": (
        4,
        lambda w: [
            w / "vgg_digits.onnx",
            "--filters",
            "0.5",
            "--calib",
            _bad_calib(w, input=np.zeros((4, 1, 9, 8), np.float32)),
        ],
    ),
    "calib wrong dtype": (
        4,
        lambda w: [
            w / "vgg_digits.onnx",
            "--filters",
            "0.5",
            "--calib",
            _bad_calib(w, input=np.zeros((4, 1, 8, 8), np.float64)),
        ],
    ),
    "calib NaN": (
        4,
        lambda w: [
            w / "vgg_digits.onnx",
            "--filters",
            "0.5",
            "--calib",
            _bad_calib(w, input=np.full((4, 1, 8, 8), np.nan, np.float32)),
        ],
    ),
    "calib empty": (
        4,
        lambda w: [
            w / "vgg_digits.onnx",
            "--filters",
            "0.5",
            "--calib",
            _bad_calib(w, input=np.zeros((0, 1, 8, 8), np.float32)),
        ],
    ),
    "calib not npz": (
        4,
        lambda w: [
            w / "vgg_digits.onnx",
            "--filters",
            "0.5",
            "--calib",
            _write(w / "c.npz", b"not a zip"),
        ],
    ),
    "unknown accelerator": (
        2,
        lambda w: [w / "vgg_digits.onnx", "--filters", "0.5", "--accelerator", "tpu-9000"],
    ),
    "bad input shape flag": (
        2,
        lambda w: [w / "vgg_digits.onnx", "--filters", "0.5", "--input-shape", "input:1,x"],
    ),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_and_code(workdir, case):
    code, make_args = BAD_INPUTS[case]
    args = make_args(workdir)
    before = {p.name: _sha(p) for p in workdir.iterdir() if p.is_file()}
    result = invoke(*args)
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("onnxprune: error:")]
    assert len(errors) == 1, result.output
    after = {p.name: _sha(p) for p in workdir.iterdir() if p.is_file()}
    assert after == before, "nothing may be written or changed on error"


def test_model_failing_checker(workdir):
    model = onnx.load(str(workdir / "vgg_digits.onnx"))
    model.graph.node[0].input[0] = "does_not_exist"
    bad = workdir / "bad.onnx"
    bad.write_bytes(model.SerializeToString())
    result = invoke(bad, "--filters", "0.5")
    assert result.exit_code == 3
    assert "onnx.checker" in result.output
    assert not (workdir / "bad.pruned.onnx").exists()


def test_random_inputs_warn(workdir):
    result = invoke(workdir / "vgg_digits.onnx", "--filters", "0.5", "-o", workdir / "o.onnx")
    assert result.exit_code == 0
    assert "random" in result.output and "WARNING" in result.output


def test_analyze_lists_groups_and_changes_nothing(workdir):
    model = workdir / "resnet_digits.onnx"
    digest = _sha(model)
    result = invoke("analyze", model, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert _sha(model) == digest and not (workdir / "resnet_digits.pruned.onnx").exists()
    blocked = [g for g in data["groups"] if g["blocked"]]
    assert [g["roots"] for g in blocked] == [["/fc/Gemm"]]
    assert "graph output" in blocked[0]["blocked"]
    # Every conv's output channels are in a prunable group; only the classifier is not.
    cov = data["coverage"]
    fc_macs = 64 * 10
    assert cov["total_macs"] - cov["prunable_macs"] == fc_macs
    text = invoke("analyze", model)
    assert text.exit_code == 0 and "BLOCKED" in text.output and "reason:" in text.output


def test_report_has_coverage(workdir):
    assert (
        invoke(
            workdir / "vgg_digits.onnx", "--filters", "0.5", "-q", "--report", workdir / "r.json"
        ).exit_code
        == 0
    )
    cov = json.loads((workdir / "r.json").read_text())["coverage"]
    assert 0.9 < cov["prunable_flops_fraction"] < 1.0
    assert [b["reason"] for b in cov["blocked"]] == [
        "reaches graph output 'logits' (outputs keep their shape)"
    ]


def test_allocation_flags_reach_the_pipeline(workdir):
    report = workdir / "r.json"
    result = invoke(
        workdir / "vgg_digits.onnx",
        "--target-macs",
        "0.5",
        "--calib",
        workdir / "calib.npz",
        "--uniform",
        "--no-protect",
        "--layer-ratio",
        "*features.7*=0.25",
        "--max-ratio",
        "0.8",
        "--no-reconstruct",
        "-o",
        workdir / "o.onnx",
        "--report",
        report,
        "-q",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    alloc = data["allocation"]
    assert alloc["mode"] == "uniform" and alloc["protected"] == []
    assert list(alloc["fixed"].values()) == [0.25]
    assert data["flops"]["after"] <= 0.5 * data["flops"]["before"] * 1.02
    assert data["reconstruction"] is None
    assert data["options"]["max_ratio"] == 0.8


def test_max_drop_guard_prunes_less_to_stay_within(workdir):
    result = invoke(
        workdir / "vgg_digits.onnx",
        "--filters",
        "0.9",
        "--calib",
        workdir / "calib.npz",
        "--max-drop",
        "0.01",
        "--uniform",
        "--no-reconstruct",
        "-o",
        workdir / "h.onnx",
        "--report",
        workdir / "h.json",
        "-q",
    )
    assert result.exit_code == 0, result.output
    data = json.loads((workdir / "h.json").read_text())
    assert 1 - data["fidelity"]["outputs"][0]["top1_agreement"] <= 0.01
    assert 0 < data["options"]["filters"] < 0.9  # scaled down from the request


def test_max_drop_impossible_exits_7_and_writes_nothing(workdir, monkeypatch):
    import onnxprune.api

    monkeypatch.setattr(onnxprune.api, "fidelity_drop", lambda report: 1.0)
    result = invoke(
        workdir / "vgg_digits.onnx",
        "--filters",
        "0.5",
        "--calib",
        workdir / "calib.npz",
        "--max-drop",
        "0.1",
        "-o",
        workdir / "g.onnx",
    )
    assert result.exit_code == 7, result.output
    assert "max-drop" in result.output and not (workdir / "g.onnx").exists()


def test_labels_give_accuracy(workdir, eval_data, tmp_path):
    np.savez(tmp_path / "eval_inputs.npz", input=eval_data["input"])
    np.save(tmp_path / "labels.npy", eval_data["labels"])
    result = invoke(
        workdir / "vgg_digits.onnx",
        "--filters",
        "0.3",
        "--calib",
        tmp_path / "eval_inputs.npz",
        "--calib-samples",
        "500",
        "--labels",
        tmp_path / "labels.npy",
        "-o",
        workdir / "o.onnx",
        "--report",
        workdir / "r.json",
        "-q",
    )
    assert result.exit_code == 0, result.output
    out = json.loads((workdir / "r.json").read_text())["fidelity"]["outputs"][0]
    logits = run(onnx.load(str(workdir / "vgg_digits.onnx")), {"input": eval_data["input"]})[0]
    assert out["accuracy_before"] == float((logits.argmax(1) == eval_data["labels"]).mean())
    assert out["accuracy_after"] is not None


def test_sensitivity_command(workdir):
    plot = workdir / "s.png"
    result = invoke(
        "sensitivity",
        workdir / "resnet_digits.onnx",
        "--calib",
        workdir / "calib.npz",
        "--json",
        "--step",
        "0.25",
        "--plot",
        plot,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[: result.output.rindex("}") + 1])
    assert len(data["groups"]) == 5
    for row in data["groups"]:
        assert row["ratios"][0] == 0.0 and row["errors"][0] == pytest.approx(0.0, abs=1e-9)
        assert row["errors"][-1] > row["errors"][1]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = invoke("sensitivity", workdir / "resnet_digits.onnx")
    assert missing.exit_code == 2  # --calib is required


def test_report_estimate_section(workdir):
    report = workdir / "r.json"
    result = invoke(
        workdir / "vgg_digits.onnx",
        "--filters",
        "0.5",
        "-o",
        workdir / "o.onnx",
        "--report",
        report,
        "--accelerator",
        "nvdla-small",
    )
    assert result.exit_code == 0, result.output
    section = json.loads(report.read_text())["estimate"]
    assert section["accelerator"] == "nvdla-small"
    before, after = section["before"], section["after"]
    assert after["params"]["nonzero"] < before["params"]["nonzero"]
    assert after["energy_pj"]["total"] < before["energy_pj"]["total"]
    assert "energy/inference on nvdla-small" in result.output
    skipped = invoke(
        workdir / "vgg_digits.onnx",
        "--filters",
        "0.5",
        "-o",
        workdir / "p.onnx",
        "--report",
        report,
        "--accelerator",
        "none",
        "-q",
    )
    assert skipped.exit_code == 0 and "estimate" not in json.loads(report.read_text())


def test_estimate_command_is_registered(workdir):
    result = invoke("estimate", workdir / "vgg_digits.onnx", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["macs"]["dense"] > 0


def test_cli_defaults_match_the_api(workdir):
    """With --calib the CLI must choose what prune() chooses: energy, sensitivity, repair."""
    report = workdir / "r.json"
    result = invoke(
        workdir / "resnet_digits.onnx",
        "--filters",
        "0.5",
        "--calib",
        workdir / "calib.npz",
        "-o",
        workdir / "o.onnx",
        "--report",
        report,
        "-q",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["plan"]["criterion"] == "energy"
    assert data["allocation"]["mode"] == "sensitivity"
    assert data["reconstruction"] and "stats" in data["timings"]
    plain = invoke(
        workdir / "resnet_digits.onnx",
        "--filters",
        "0.5",
        "-o",
        workdir / "p.onnx",
        "--report",
        report,
        "-q",
    )
    assert plain.exit_code == 0
    data = json.loads(report.read_text())
    assert data["plan"]["criterion"] == "l1" and data["allocation"]["mode"] == "uniform"
