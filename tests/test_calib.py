"""Calibration sources, batching, and statistics that do not depend on the batch size."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune import prune
from onnxprune.calib import InputSpec, open_calibration
from onnxprune.errors import CalibrationError
from onnxprune.stats import collect
from tests.helpers import run

SPEC = [InputSpec("input", np.dtype("float32"), ("N", 1, 8, 8))]


def _data(n: int = 50) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 1, 8, 8)).astype(np.float32)


def _collect_all(cal) -> np.ndarray:
    return np.concatenate([b["input"] for b in cal.batches()])


def test_folder_of_arrays_and_per_sample_files(tmp_path):
    data = _data()
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "input.npy", data)
    (tmp_path / "b" / "input").mkdir(parents=True)
    for i, sample in enumerate(data):
        np.save(tmp_path / "b" / "input" / f"{i:04d}.npy", sample)
    for folder in ("a", "b"):
        cal = open_calibration(str(tmp_path / folder), SPEC, batch_size=16, limit=None)
        assert cal.samples == 50
        np.testing.assert_array_equal(_collect_all(cal), data)
        assert [b["input"].shape[0] for b in cal.batches()] == [16, 16, 16, 2]


def test_script_source_rechunks_and_limits(tmp_path):
    script = tmp_path / "calib.py"
    script.write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.standard_normal((50, 1, 8, 8)).astype(np.float32)\n"
        "    for start in (0, 7, 30):\n"
        "        yield {'input': x[start:{0: 7, 7: 30, 30: 50}[start]]}\n"
    )
    cal = open_calibration(f"{script}:batches", SPEC, batch_size=20, limit=45)
    sizes = [b["input"].shape[0] for b in cal.batches()]
    assert sizes == [20, 20, 5] and cal.samples == 45
    np.testing.assert_array_equal(_collect_all(cal), _data()[:45])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("def load_data():\n    yield {'other': 1}\n", "no array for input 'input'"),
        ("x = 1\n", "no function load_data()"),
        ("raise RuntimeError('boom')\n", "failed to import"),
        (
            "import numpy as np\ndef load_data():\n"
            "    yield {'input': np.zeros((2, 1, 8, 8), np.float64)}\n",
            "dtype float64",
        ),
    ],
)
def test_script_errors_are_one_clear_line(tmp_path, content, message):
    script = tmp_path / "bad.py"
    script.write_text(content)
    with pytest.raises(CalibrationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cal = open_calibration(str(script), SPEC, batch_size=4, limit=None)
        list(cal.batches())


def test_labels_must_cover_the_samples(tmp_path):
    np.save(tmp_path / "input.npy", _data(10))
    np.save(tmp_path / "labels.npy", np.arange(5))
    with pytest.raises(CalibrationError, match="5 entries for 10"):
        open_calibration(str(tmp_path), SPEC, 4, None, str(tmp_path / "labels.npy"))


def test_statistics_equal_numpy_and_ignore_batch_size(models_dir, calib_path, tmp_path):
    result = prune(models_dir / "vgg_digits.onnx", filters=0.5, write=False, reconstruct=False)
    groups = [g for g in result.groups if g.prunable]
    nodes = {n.name: n for n in result.reference.graph.node}
    consumer_inputs = {name: n.input[0] for name, n in nodes.items() if n.input}
    shapes = {}
    from onnxprune.graph import infer_shapes

    shapes = infer_shapes(result.reference)
    per_batch = {}
    for batch_size in (7, 64, 256):
        cal = open_calibration(str(calib_path), SPEC, batch_size, 200)
        per_batch[batch_size] = collect(
            result.reference, groups, consumer_inputs, shapes, cal.batches()
        )
    # Direct numpy on captured activations.
    from onnx import helper

    probe = type(result.reference)()
    probe.CopyFrom(result.reference)
    for st in per_batch[64].values():
        probe.graph.output.append(helper.make_empty_tensor_value_info(st.tensor))
    x = np.load(calib_path)["input"][:200]
    outs = dict(zip([o.name for o in probe.graph.output], run(probe, {"input": x}), strict=True))
    by_id = {g.id: g for g in groups}
    for gid, st in per_batch[64].items():
        tensor = next(t for t in by_id[gid].tensors if t.tensor == st.tensor)
        act = outs[st.tensor].astype(np.float64)
        # Channel c owns positions[c] on the axis (several after a Flatten).
        act = np.moveaxis(np.take(act, tensor.positions, axis=tensor.axis), tensor.axis, 0)
        axes = tuple(range(1, act.ndim))
        np.testing.assert_allclose(st.mean, act.mean(axis=axes), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.energy, (act**2).mean(axis=axes), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.apoz, (act == 0).mean(axis=axes), rtol=1e-6)
        for other in (7, 256):
            np.testing.assert_allclose(per_batch[other][gid].energy, st.energy, rtol=1e-6)
