from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


@pytest.fixture(scope="session")
def calib_path() -> Path:
    return MODELS / "digits_calib.npz"


@pytest.fixture(scope="session")
def eval_data() -> dict[str, np.ndarray]:
    with np.load(MODELS / "digits_eval.npz") as data:
        return {k: data[k] for k in data.files}
