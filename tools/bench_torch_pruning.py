"""Torch-Pruning side by side (issue 7): onnxprune vs the standard PyTorch library.

    python tools/bench_torch_pruning.py

Why: onnxprune's "accuracy without retraining" numbers compare it only with its own
plain-L1 mode. This runs Torch-Pruning on the SAME trained weights (loaded into the
torch classes of tools/make_sample_models.py from the ONNX initializers, checked to
reproduce the ONNX logits) with no fine-tuning: L1 (and the library's default L2) group
magnitude pruning of half the channels of every layer but the classifier, with and without
re-estimating the BatchNorm statistics on the calibration images, next to onnxprune at
--filters 0.5 (defaults and plain L1) and at Torch-Pruning's MACs.
Every pruned model is evaluated as ONNX in onnxruntime and its MACs/params counted
by onnxprune.metrics, so all rows share one evaluator and one counter.

Benchmark only: installs torch==2.13.0 (the local CPU wheel) and torch-pruning==1.6.1
with pip if missing. The product never imports torch.
"""

# ruff: noqa: E402  (third-party imports follow the dependency bootstrap)

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

PINNED = {"torch": "2.13.0", "torch-pruning": "1.6.1"}


def installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist).split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure_packages() -> None:
    """pip install the pinned torch / torch-pruning when missing or at another version."""
    wrong = [f"{d}=={v}" for d, v in PINNED.items() if installed(d) != v]
    if wrong:
        print(f"installing: {' '.join(wrong)}", flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", *wrong])


ensure_packages()

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch_pruning as tp
from onnx import numpy_helper
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_sample_models as sample  # the classes the models were trained and exported from
from benchlib import ROOT, machine, markdown_table, update_section

import onnxprune
from onnxprune.metrics import count_params, total_macs

COMMAND = "python tools/bench_torch_pruning.py"
SECTION = "Torch-Pruning side by side (issue 7)"
MODELS = ROOT / "models"
CALIB = MODELS / "digits_calib.npz"
RATIO = 0.5
LOGIT_TOL = 1e-4
# model file -> (torch class, attribute path of the final classifier Torch-Pruning ignores)
CASES = {
    "vgg_digits.onnx": (sample.VGGDigits, "classifier.3"),
    "resnet_digits.onnx": (sample.ResNetDigits, "fc"),
}
PLAIN_L1 = {"reconstruct": False, "uniform": True, "criterion": "l1"}
TP_L1 = "Torch-Pruning L1 group magnitude"


# ------------------------------------------------------------------ helpers


def ort_logits(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return model.eval()(torch.from_numpy(x)).numpy()


def load_onnx_weights(model: nn.Module, path: Path) -> nn.Module:
    """Copy the ONNX initializers into the state_dict (same names); every tensor assigned."""
    arrays = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    state = model.state_dict()
    unused = sorted(set(arrays) - set(state))
    assert not unused, f"{path.name}: initializers with no torch tensor: {unused}"
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked"):  # not exported; unused in eval()
            tensor.zero_()
            continue
        assert key in arrays, f"{path.name}: no initializer for {key}"
        value = torch.from_numpy(arrays[key].copy())
        assert value.shape == tensor.shape and value.dtype == tensor.dtype, key
        tensor.copy_(value)
    model.load_state_dict(state, strict=True)
    return model.eval()


def torch_pruning(model: nn.Module, classifier: str, p: int = 1) -> nn.Module:
    """Torch-Pruning Lp group magnitude, 50% of every group's channels, classifier kept."""
    model = copy.deepcopy(model).eval()
    pruner = tp.pruner.MagnitudePruner(  # alias of tp.pruner.BasePruner in 1.6
        model,
        example_inputs=torch.zeros(1, 1, 8, 8),
        importance=tp.importance.GroupMagnitudeImportance(p=p),  # was GroupNormImportance
        pruning_ratio=RATIO,
        global_pruning=False,
        ignored_layers=[model.get_submodule(classifier)],
    )
    pruner.step()
    return model.eval()


@torch.no_grad()
def reestimate_bn(model: nn.Module, x_calib: np.ndarray) -> nn.Module:
    """Recompute every BN's running mean/var from one pass over the calibration images."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: exactly the calibration statistics
            module.train()
    model(torch.from_numpy(x_calib))
    return model.eval()


def export(model: nn.Module, folder: Path, name: str) -> onnx.ModelProto:
    """Export as the sample models were (make_sample_models.export_onnx) and load it back."""
    path = folder / name
    sample.export_onnx(model, path)
    return onnx.load(str(path))


# --------------------------------------------------------------------- main


def bench_model(name: str, x_eval, y_eval, x_calib, folder: Path) -> list[list[object]]:
    arch, classifier = CASES[name]
    path = MODELS / name
    dense_onnx = onnx.load(str(path))
    dense_macs, dense_params = total_macs(dense_onnx), count_params(dense_onnx)

    dense = load_onnx_weights(arch(), path)
    diff = np.abs(torch_logits(dense, x_eval) - ort_logits(path, x_eval)).max()
    assert diff <= LOGIT_TOL, f"{name}: torch and ONNX logits differ by {diff:.2e}"
    print(f"{name}: torch reproduces the ONNX logits (max |diff| {diff:.1e})", flush=True)

    rows: list[list[object]] = []
    macs_kept: dict[str, float] = {}

    def add(label: str, model: onnx.ModelProto, torch_model: nn.Module | None = None) -> None:
        logits = ort_logits(model, x_eval)
        if torch_model is not None:  # the export must compute what the torch model does
            diff = np.abs(torch_logits(torch_model, x_eval) - logits).max()
            assert diff <= LOGIT_TOL, f"{name} {label}: export differs by {diff:.2e}"
        macs_kept[label] = total_macs(model) / dense_macs
        top1 = float((logits.argmax(1) == y_eval).mean())
        params = count_params(model) / dense_params
        row = [name.split("_")[0], label, f"{top1:.3f}", f"{macs_kept[label]:.2f}", f"{params:.2f}"]
        rows.append(row)
        print(*rows[-1], sep=" | ", flush=True)

    add("dense", dense_onnx)
    for p in (1, 2):
        label = TP_L1 if p == 1 else "Torch-Pruning L2 group magnitude (library default p=2)"
        pruned = torch_pruning(dense, classifier, p)
        add(label, export(pruned, folder, f"tp{p}_{name}"), pruned)
        pruned = reestimate_bn(pruned, x_calib)
        label = f"Torch-Pruning L{p} + BN re-estimation (256 calib images)"
        add(label, export(pruned, folder, f"tp{p}_bn_{name}"), pruned)
    runs = {
        "onnxprune defaults (energy, sensitivity, LS repair)": {"filters": RATIO},
        "onnxprune defaults, target_macs = Torch-Pruning's": {"target_macs": macs_kept[TP_L1]},
        "onnxprune plain L1 (uniform, no repair)": {"filters": RATIO, **PLAIN_L1},
        "onnxprune plain L1, protect=False (first conv pruned too)": {
            "filters": RATIO,
            **PLAIN_L1,
            "protect": False,
        },
    }
    for label, options in runs.items():
        result = onnxprune.prune(path, calib=str(CALIB), write=False, command=["bench"], **options)
        add(label, result.model)
    return rows


def main() -> None:
    start = time.perf_counter()
    assert torch.__version__.split("+")[0] == PINNED["torch"], torch.__version__
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with np.load(MODELS / "digits_eval.npz") as f:
        x_eval, y_eval = f["input"], f["labels"]
    with np.load(CALIB) as f:
        x_calib = f["input"][:256]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            rows += bench_model(name, x_eval, y_eval, x_calib, Path(tmp))
    table = markdown_table(["model", "method", "top-1", "MACs kept", "params kept"], rows)
    versions = (
        f"torch {torch.__version__}, torch-pruning {installed('torch-pruning')} "
        f"(its `tp.__version__` says {tp.__version__}), onnxruntime {ort.__version__}, "
        f"onnxprune {onnxprune.__version__}"
    )
    body = f"""\
Command: `{COMMAND}` ({machine()}; {versions}). Total time {time.perf_counter() - start:.0f} s.

Same trained weights on both sides: the ONNX initializers loaded into the torch classes of
`tools/make_sample_models.py` (torch reproduces the ONNX logits on the eval set to
{LOGIT_TOL:g}). No fine-tuning. Held-out top-1 on the 500 images of `models/digits_eval.npz`;
every model runs as ONNX in onnxruntime (Torch-Pruning results exported as the sample models
were, and checked against torch); MACs (batch 1, Conv/Gemm) and params (float initializers,
BN statistics included) counted by `onnxprune.metrics`, as fractions of the dense model.

- Torch-Pruning: `tp.pruner.MagnitudePruner` (an alias of `BasePruner` in 1.6) with
  `GroupMagnitudeImportance(p)` (1.6's name for `GroupNormImportance`: per channel, the mean
  over the coupled group of the conv/linear out- and in-channel and BN-scale Lp norms),
  `pruning_ratio={RATIO}` in every group (not global), final classifier ignored; p = 1 as
  asked, p = 2 is the library's default. BN re-estimation: running stats reset, BN layers in
  train mode with `momentum=None`, one forward pass of the 256 images of
  `models/digits_calib.npz`, then eval.
- onnxprune: `onnxprune.prune(model, filters={RATIO}, calib="models/digits_calib.npz",
  write=False, **options)`. With calibration data onnxprune protects the first conv's group
  (fed by the model input) by default, so its plain-L1 row keeps more MACs than
  Torch-Pruning's; the `protect=False` row prunes the same layers as Torch-Pruning. The
  `target_macs` row asks onnxprune's defaults for Torch-Pruning L1's MACs fraction instead
  of `filters`.

{table}
"""
    update_section(SECTION, body)
    print()
    print(f"## {SECTION}\n\n{body}")


if __name__ == "__main__":
    main()
