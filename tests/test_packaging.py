"""Both install modes must ship the passes package (setuptools package-dir maps passes/)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from onnxprune.passes import PASSES

ROOT = Path(__file__).resolve().parent.parent


def test_passes_importable_as_subpackage():
    import onnxprune.passes as passes_pkg

    assert Path(passes_pkg.__file__).parent.name == "passes"
    assert {"load", "normalize", "groups", "surgery", "verify", "emit"} <= set(PASSES)


@pytest.mark.slow
def test_regular_wheel_contains_passes(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("onnxprune-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "onnxprune/passes/surgery.py" in names
    assert "onnxprune/cli.py" in names
    assert not any(n.startswith("passes/") for n in names)
    # Every subpackage in the source tree must be listed in pyproject.toml.
    for init in (ROOT / "onnxprune").rglob("__init__.py"):
        rel = init.relative_to(ROOT).as_posix()
        assert rel in names, f"{rel} missing from the wheel: add it to [tool.setuptools]"
