"""Third-party test models: the onnx wheel's "light" zoo and PP-OCR from a pip wheel.

Nobody in this project wrote these models, which is the point: they carry the
patterns real exporters produce. Nothing here is committed; PP-OCR is fetched into
a cache (`.cache/test-models/`, git-ignored) with `pip download --no-deps`.

    python tools/fetch_test_models.py            # fetch PP-OCR, list every model path

The light models store their weights as ConstantOfShape fills (every weight 0.02),
so `prepared_light_model` folds them and gives them seeded random values (He-scaled
filters, positive BN variances) before anyone measures fidelity on them.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "test-models"

LIGHT = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
]

RAPIDOCR = "rapidocr_onnxruntime==1.4.4"
PPOCR = {
    "ppocr_det": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "ppocr_cls": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
# Concrete input shapes for the dynamic dims of the PP-OCR models (batch 1).
PPOCR_SHAPES = {"ppocr_det": (1, 3, 96, 128), "ppocr_cls": (1, 3, 48, 192)}


def light_model_path(name: str) -> Path:
    """Path of a light model inside the installed onnx wheel."""
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def fetch_ppocr(cache: Path = CACHE) -> dict[str, Path]:
    """Download the rapidocr wheel once and extract the PP-OCR det/cls models.

    Raises RuntimeError (with pip's message) when the download fails.
    """
    wanted = {name: cache / "ppocr" / Path(member).name for name, member in PPOCR.items()}
    if all(p.is_file() for p in wanted.values()):
        return wanted
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", RAPIDOCR, "-d", str(cache)]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = sorted(cache.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
        if run.returncode != 0 or not wheels:
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"pip download {RAPIDOCR} failed: {tail[0]}")
    (cache / "ppocr").mkdir(exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name, member in PPOCR.items():
            tmp = wanted[name].with_suffix(".part")
            tmp.write_bytes(wheel.read(member))
            tmp.replace(wanted[name])
    return wanted


def fold_weights(model: onnx.ModelProto, seed: int | None = None) -> onnx.ModelProto:
    """The model with computed weights folded into initializers (onnxprune's own fold).

    With `seed`, the folded weights are also replaced by seeded random ones (He-scaled
    filters, positive BN variances, multiplicative constants near 1, additive near 0, so
    outputs neither vanish nor explode) before the model is serialized: one pass over
    500 MB, not two.
    """
    import onnx_graphsurgeon as gs

    from onnxprune.fold import fold_constants
    from onnxprune.graph import export_model, import_graph, name_nodes

    graph = import_graph(model)
    graph.inputs = [t for t in graph.inputs if not isinstance(t, gs.Constant)]
    name_nodes(graph)
    fold_constants(graph)
    if seed is not None:
        rng = np.random.default_rng(seed)
        kinds = _weight_kinds((n.op, n.attrs, [t.name for t in n.inputs]) for n in graph.nodes)
        for name, tensor in graph.tensors().items():
            if isinstance(tensor, gs.Constant) and tensor.dtype == np.float32:
                values = _random_like(kinds.get(name, "keep"), tuple(tensor.shape), rng)
                if values is not None:
                    tensor.values = values
    return export_model(graph, model)


def _weight_kinds(nodes) -> dict[str, str]:
    """What each constant is, from the nodes reading it: filter, gemm, BN stat, scale..."""
    kind: dict[str, str] = {}
    for op, attrs, ins in nodes:
        if op in ("Conv", "ConvTranspose") and len(ins) > 1:
            kind.setdefault(ins[1], "filter")
        elif op == "Gemm" and len(ins) > 1:
            kind.setdefault(ins[1], "gemm_t" if attrs.get("transB", 0) else "gemm")
        elif op == "MatMul" and len(ins) > 1:
            kind.setdefault(ins[1], "gemm")
        elif op == "BatchNormalization":
            for name, k in zip(ins[1:5], ("scale", "shift", "shift", "variance"), strict=False):
                kind.setdefault(name, k)
        elif op in ("Mul", "Div", "InstanceNormalization", "PRelu"):
            for name in ins[1:] if op != "Mul" else ins:
                kind.setdefault(name, "scale")
        elif op in ("Add", "Sub"):
            for name in ins:
                kind.setdefault(name, "shift")
        else:  # Resize scales, Clip bounds, Pad values...: not weights, keep them
            for name in ins:
                kind.setdefault(name, "keep")
    return kind


def _random_like(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | None:
    if kind == "keep" or int(np.prod(shape)) <= 1:
        return None  # scalars (HardSwish's 3 and 6) and non-weights stay as they are
    if kind in ("filter", "gemm", "gemm_t"):
        fan_in = shape[0] if kind == "gemm" else int(np.prod(shape[1:]))
        values = rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(np.sqrt(2.0 / max(fan_in, 1)))
        return values
    if kind == "variance":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
    return values + np.float32(1.0) if kind == "scale" else values


def logits_out(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn a Softmax or Sigmoid that computes a graph output into Identity, in place.

    With random weights a softmax over 1000 classes saturates to one-hot (a sigmoid
    to 0/1), which would hide any difference an oracle should see; the logits do not.
    """
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type in ("Softmax", "Sigmoid") and node.output[0] in outputs:
            node.op_type = "Identity"
            del node.attribute[:]
    return model


def prepared_light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """A light model with folded, seeded random weights and logits out: ready for oracles."""
    return logits_out(fold_weights(onnx.load(str(light_model_path(name))), seed))


def main() -> int:
    for name in LIGHT:
        print(f"{name:14s} {light_model_path(name)}")
    try:
        for name, path in fetch_ppocr().items():
            print(f"{name:14s} {path}")
    except RuntimeError as exc:
        print(f"PP-OCR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
