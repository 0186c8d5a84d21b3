"""Regenerate the bundled sample models and data sets under ``models/``.

Why: onnxprune's tests and examples need small, real, *trained* ONNX models
(a VGG-style CNN with BatchNormalization, a ResNet-style CNN with residual
Adds and a strided 1x1 downsample shortcut, and a LeNet-300-100-like MLP)
plus calibration and evaluation data, all small enough to commit and fully
reproducible without any network access. The product itself never imports
torch; only this offline generator does.

Data: ``sklearn.datasets.load_digits`` (shipped inside scikit-learn, no
download): 1797 grey 8x8 images with values 0..16, scaled to float32 x/16
and shaped [N, 1, 8, 8]. A stratified, seeded split gives 1297 training
and 500 held-out evaluation images; the 256 calibration images are drawn
(seeded) from the training split.

How to run (from the repository root)::

    python tools/make_sample_models.py            # writes into models/
    python tools/make_sample_models.py --out-dir /tmp/x   # e.g. to compare

If torch (exactly 2.13.0, CPU), scikit-learn, onnx or onnxruntime are
missing, the script installs them with pip first. Training runs on one CPU
thread with fixed seeds and deterministic algorithms; the .onnx and .npz
files are written byte-deterministically (doc strings stripped, fixed zip
timestamps), so two runs on the same machine give identical files. The
script also rewrites models/PROVENANCE.md with the measured accuracies and
SHA-256 digests. Takes about a minute.
"""

# ruff: noqa: E402  (third-party imports follow the dependency bootstrap)

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

REQUIREMENTS: dict[str, str] = {
    "torch": "torch==2.13.0",
    "sklearn": "scikit-learn",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
}


def ensure_packages() -> None:
    """Install missing dependencies (torch pinned to the local 2.13.0 CPU wheel)."""
    missing = [spec for mod, spec in REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        print(f"installing: {' '.join(missing)}", flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", *missing])


ensure_packages()

import hashlib
import io
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
OPSET = 17
N_EVAL = 500
N_CALIB = 256
SPLIT_SEED = 0
CALIB_SEED = 1
TRAIN_SEED = 2024
EPOCHS = 40
BATCH_SIZE = 64
LR = 1e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 1


# --------------------------------------------------------------------- data


@dataclass(frozen=True)
class Digits:
    x_train: np.ndarray  # float32 [1297, 1, 8, 8]
    y_train: np.ndarray  # int64 [1297]
    x_eval: np.ndarray  # float32 [500, 1, 8, 8]
    y_eval: np.ndarray  # int64 [500]
    x_calib: np.ndarray  # float32 [256, 1, 8, 8]


def load_data() -> Digits:
    """Load sklearn digits, scale to [0, 1], split train/eval and draw calibration."""
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        x, y, test_size=N_EVAL, stratify=y, random_state=SPLIT_SEED
    )
    rng = np.random.default_rng(CALIB_SEED)
    calib_idx = np.sort(rng.choice(len(x_train), N_CALIB, replace=False))
    return Digits(
        x_train=np.ascontiguousarray(x_train),
        y_train=np.ascontiguousarray(y_train),
        x_eval=np.ascontiguousarray(x_eval),
        y_eval=np.ascontiguousarray(y_eval),
        x_calib=np.ascontiguousarray(x_train[calib_idx]),
    )


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps (byte-deterministic)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


# ------------------------------------------------------------------- models


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class VGGDigits(nn.Module):
    """Conv-BN-ReLU x2 (32), MaxPool, Conv-BN-ReLU x2 (64), MaxPool, FC 256-128-10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(1, 32),
            *conv_bn_relu(32, 32),
            nn.MaxPool2d(2),
            *conv_bn_relu(32, 64),
            *conv_bn_relu(64, 64),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 2 * 2, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block; a strided 1x1 Conv+BN shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetDigits(nn.Module):
    """Stem 1->32, block 32, block 32->64 (stride 2, 1x1 shortcut), block 64, GAP, FC."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(1, 32))
        self.layer1 = BasicBlock(32, 32)
        self.layer2 = BasicBlock(32, 64, stride=2)
        self.layer3 = BasicBlock(64, 64)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


class MLPDigits(nn.Module):
    """LeNet-300-100-like MLP: 64-300-100-10."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 300),
            nn.ReLU(),
            nn.Linear(300, 100),
            nn.ReLU(),
            nn.Linear(100, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# name -> (architecture, train with random shifts?). Shifts help the CNNs but
# cost the MLP (not translation invariant) ~4 points, so it trains without.
MODELS: dict[str, tuple[type[nn.Module], bool]] = {
    "vgg_digits": (VGGDigits, True),
    "resnet_digits": (ResNetDigits, True),
    "mlp_digits": (MLPDigits, False),
}


# ----------------------------------------------------------------- training


def set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to MAX_SHIFT pixels in x and y, zero fill."""
    n = x.shape[0]
    pad = nn.functional.pad(x, (MAX_SHIFT,) * 4)
    dy = torch.randint(0, 2 * MAX_SHIFT + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * MAX_SHIFT + 1, (n,), generator=gen)
    rows = dy[:, None] + torch.arange(8)[None, :]  # [n, 8]
    cols = dx[:, None] + torch.arange(8)[None, :]  # [n, 8]
    batch = torch.arange(n)[:, None, None]
    return pad[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train(model: nn.Module, data: Digits, seed: int, augment: bool) -> nn.Module:
    """Adam + cosine LR, cross-entropy, optional random shifts; returns the model in eval()."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = EPOCHS * ((len(x) + BATCH_SIZE - 1) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), BATCH_SIZE):
            idx = perm[start : start + BATCH_SIZE]
            xb = random_shift(x[idx], gen) if augment else x[idx]
            loss = loss_fn(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def torch_predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x)).argmax(1).numpy()


# ------------------------------------------------------------------- export


def export_onnx(model: nn.Module, path: Path) -> None:
    """Legacy TorchScript export; PRESERVE in eval() mode keeps BN unfused."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, 8, 8),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    clean_model(path)


def inline_identity_initializers(graph: onnx.GraphProto) -> None:
    """Replace `Identity(initializer)` nodes (the exporter's dedup of equal tensors) by copies."""
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def clean_model(path: Path) -> None:
    """Strip doc strings, inline Identity constants, infer shapes, re-save deterministically."""
    model = onnx.load(str(path))
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    inline_identity_initializers(model.graph)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString(deterministic=True))


def check_graph(path: Path) -> Counter[str]:
    """Validate the interface and BN form of an exported model; return its op counts."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input" and out.name == "logits", (inp.name, out.name)
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == ["N", 1, 8, 8] and out_dims == ["N", 10], (in_dims, out_dims)
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            assert len(node.output) == 1, f"{node.name}: BN not in inference form"
    for init in model.graph.initializer:
        assert init.data_type == onnx.TensorProto.FLOAT, init.name
    return Counter(node.op_type for node in model.graph.node)


def ort_predict(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"input": x})
    return logits.argmax(1)


# --------------------------------------------------------------------- main


@dataclass(frozen=True)
class Result:
    name: str
    torch_acc: float
    ort_acc: float
    ops: Counter[str]
    n_params: int


def build_one(name: str, data: Digits, out_dir: Path) -> Result:
    set_determinism(TRAIN_SEED)  # before construction: seeds the weight init
    arch, augment = MODELS[name]
    model = train(arch(), data, TRAIN_SEED, augment)
    path = out_dir / f"{name}.onnx"
    export_onnx(model, path)
    ops = check_graph(path)
    pred_torch = torch_predict(model, data.x_eval)
    pred_ort = ort_predict(path, data.x_eval)
    n_diff = int((pred_torch != pred_ort).sum())
    assert n_diff <= 1, f"{name}: torch and onnxruntime disagree on {n_diff} images"
    result = Result(
        name=name,
        torch_acc=float((pred_torch == data.y_eval).mean()),
        ort_acc=float((pred_ort == data.y_eval).mean()),
        ops=ops,
        n_params=sum(p.numel() for p in model.parameters()),
    )
    print(
        f"{name}: torch top-1 {result.torch_acc:.4f}, onnxruntime top-1 {result.ort_acc:.4f}, "
        f"{result.n_params} params, {path.stat().st_size} bytes, ops {dict(ops)}",
        flush=True,
    )
    return result


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


PROVENANCE_TEMPLATE = """\
# Sample models and data: provenance

All files in this folder, this one included, are generated by
`tools/make_sample_models.py`. Do not edit the models or data by hand:
change the script and regenerate with

    python tools/make_sample_models.py

(run from the repository root; it installs torch=={torch_version}, scikit-learn,
onnx and onnxruntime with pip if they are missing, and takes about a minute on
one CPU thread).

## Data

- Source: `sklearn.datasets.load_digits()`, bundled with scikit-learn (no
  download): 1797 grey 8x8 images of handwritten digits 0-9, pixel values
  0..16. It is a copy of the test set of the UCI "Optical Recognition of
  Handwritten Digits" (optdigits) data set.
- Preprocessing: `x / 16.0` as float32 (values in [0, 1]), shape `[N, 1, 8, 8]`
  (NCHW); labels int64. No mean/std normalisation.
- Split: `sklearn.model_selection.train_test_split(test_size={n_eval},
  stratify=labels, random_state={split_seed})` gives {n_train} training and
  {n_eval} held-out evaluation images.
- Calibration: {n_calib} images drawn without replacement from the training
  split with `numpy.random.default_rng({calib_seed}).choice({n_train}, {n_calib},
  replace=False)`, kept in ascending index order.

| file | keys |
| --- | --- |
| `digits_calib.npz` | `input`: float32 [{n_calib}, 1, 8, 8] (model input names only, no labels) |
| `digits_eval.npz` | `input`: float32 [{n_eval}, 1, 8, 8], `labels`: int64 [{n_eval}] |

## Models

Every model has one input `input` float32 `[N, 1, 8, 8]` (`N` a symbolic
batch dimension) and one output `logits` float32 `[N, 10]` (no softmax),
ONNX opset {opset}, IR version {ir_version}.

- `vgg_digits.onnx` (VGG-style): [Conv3x3(pad 1, no bias) + BatchNorm + ReLU]
  1->32, 32->32, MaxPool2 (8->4), 32->64, 64->64, MaxPool2 (4->2), Flatten,
  Linear 256->128, ReLU, Linear 128->10.
- `resnet_digits.onnx` (ResNet-style): stem Conv3x3 1->32 + BN + ReLU; basic
  block 32->32 (identity shortcut); basic block 32->64 with stride 2 and a
  strided 1x1 Conv + BN downsample shortcut (8x8 -> 4x4); basic block 64->64
  (identity shortcut); GlobalAveragePool; Flatten; Linear 64->10. A basic
  block is conv3x3-BN-ReLU-conv3x3-BN, Add(shortcut), ReLU.
- `mlp_digits.onnx` (LeNet-300-100-like): Flatten, Linear 64->300, ReLU,
  Linear 300->100, ReLU, Linear 100->10.

Export: torch {torch_version} legacy TorchScript exporter (`dynamo=False`),
`training=TrainingMode.PRESERVE` with the model in `eval()` mode and
`do_constant_folding=True`, so BatchNormalization stays a separate inference
node (one output) and is not fused into the Conv. Afterwards the script strips
doc strings, turns the exporter's `Identity(initializer)` nodes (if any) into
plain initializers, stores the result of `onnx.shape_inference` (intermediate
`value_info`) and checks the model with `onnx.checker.check_model(full_check=True)`.

Conv layers followed by BatchNorm have no bias input (`bias=False`, as usual).
In `resnet_digits.onnx` the initializers `layer2.bn2.bias` and
`layer2.downsample.1.bias` are bitwise equal: both BNs feed the same Add, so
they always receive the same gradient from the same zero init (only their sum
matters). The exporter had deduplicated them into an `Identity` node; the
script stores them as two separate initializers again.

## Training

Each model trained separately on the {n_train} training images only:
`torch.manual_seed({train_seed})`, one CPU thread,
`torch.use_deterministic_algorithms(True)`; Adam (lr {lr}, weight decay
{weight_decay}), cosine annealing of the lr to 0 over all steps, {epochs}
epochs, batch {batch}, cross-entropy loss, BatchNorm in train mode (running
statistics, momentum 0.1). Augmentation for the two CNNs only: random
translation by up to {max_shift} pixel in x and y with zero fill (seeded
torch.Generator); the MLP trains on the unshifted images (shifts cost it
about 4 points of held-out accuracy, as it is not translation invariant).

## Held-out top-1 on the {n_eval} evaluation images

| model | params | ONNX ops | torch | onnxruntime | bytes | sha256 |
| --- | --- | --- | --- | --- | --- | --- |
{model_rows}

| data file | bytes | sha256 |
| --- | --- | --- |
{data_rows}

The files are byte-deterministic across runs of the script on the same
machine (fixed seeds, single thread, fixed zip timestamps). Floating-point
results may differ on another CPU or with other library versions, which would
change the weights and hashes (not the architectures or the data files).
"""


def write_provenance(out_dir: Path, results: list[Result], data: Digits) -> None:
    model_rows = []
    for r in results:
        path = out_dir / f"{r.name}.onnx"
        ops = ", ".join(f"{op} {n}" for op, n in sorted(r.ops.items()))
        model_rows.append(
            f"| `{path.name}` | {r.n_params} | {ops} | {r.torch_acc:.3f} | {r.ort_acc:.3f} "
            f"| {path.stat().st_size} | `{sha256(path)[:16]}` |"
        )
    data_rows = [
        f"| `{name}` | {(out_dir / name).stat().st_size} | `{sha256(out_dir / name)[:16]}` |"
        for name in ("digits_calib.npz", "digits_eval.npz")
    ]
    ir_version = onnx.load(str(out_dir / f"{results[0].name}.onnx")).ir_version
    text = PROVENANCE_TEMPLATE.format(
        torch_version=torch.__version__.split("+")[0],
        n_train=len(data.x_train),
        n_eval=len(data.x_eval),
        n_calib=len(data.x_calib),
        split_seed=SPLIT_SEED,
        calib_seed=CALIB_SEED,
        train_seed=TRAIN_SEED,
        opset=OPSET,
        ir_version=ir_version,
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        epochs=EPOCHS,
        batch=BATCH_SIZE,
        max_shift=MAX_SHIFT,
        model_rows="\n".join(model_rows),
        data_rows="\n".join(data_rows),
    )
    (out_dir / "PROVENANCE.md").write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "models")
    args = parser.parse_args(argv)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    data = load_data()
    assert data.x_train.shape == (1297, 1, 8, 8) and data.x_calib.shape == (N_CALIB, 1, 8, 8)
    save_npz(out_dir / "digits_calib.npz", {"input": data.x_calib})
    save_npz(out_dir / "digits_eval.npz", {"input": data.x_eval, "labels": data.y_eval})

    results = [build_one(name, data, out_dir) for name in MODELS]
    write_provenance(out_dir, results, data)
    for path in sorted(out_dir.glob("*")):
        print(f"{sha256(path)}  {path.name}")


if __name__ == "__main__":
    main()
