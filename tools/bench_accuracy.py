"""Accuracy without retraining (issue 7): held-out top-1 of pruned sample models.

    python tools/bench_accuracy.py            # full grid, writes BENCHMARKS.md sections
    python tools/bench_accuracy.py --quick    # ratio 0.5 only

For each sample CNN, ratio (0.3/0.5/0.7) and criterion, with and without
least-squares reconstruction, uniform vs sensitivity allocation; plus wall time of
a run and the share of it spent inside onnxruntime, and peak memory (RSS) as the
number of calibration samples grows from 64 to 4096.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, machine, markdown_table, update_section  # noqa: E402

import onnxprune  # noqa: E402

MODELS = ROOT / "models"
CALIB = MODELS / "digits_calib.npz"
CRITERIA = ("l1", "l2", "apoz", "mean-act", "energy", "obd", "reconstruction")


class OrtTimer:
    """Accumulates the time spent in InferenceSession.run (creation excluded)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._run = ort.InferenceSession.run

    def __enter__(self) -> OrtTimer:
        timer = self

        def timed(sess, *args, **kwargs):
            start = time.perf_counter()
            try:
                return timer._run(sess, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - start

        ort.InferenceSession.run = timed
        return self

    def __exit__(self, *exc) -> None:
        ort.InferenceSession.run = self._run


def accuracy(model, data) -> float:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": data["input"]})[0]
    return float((logits.argmax(1) == data["labels"]).mean())


def run_one(name: str, **options) -> dict:
    start = time.perf_counter()
    with OrtTimer() as timer:
        result = onnxprune.prune(
            MODELS / name,
            calib=str(CALIB),
            calib_samples=256,
            write=False,
            command=["bench"],
            **options,
        )
    wall = time.perf_counter() - start
    report = result.report
    return {
        "model": result.model,
        "wall": wall,
        "ort_share": timer.seconds / wall if wall else 0.0,
        "macs": report["flops"]["after"] / report["flops"]["before"],
        "params": report["params"]["after"] / report["params"]["before"],
    }


def one_ort_pass(name: str) -> float:
    data = np.load(CALIB)["input"][:256]
    sess = ort.InferenceSession(str(MODELS / name), providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    for i in range(0, 256, 32):
        sess.run(None, {"input": data[i : i + 32]})
    return time.perf_counter() - start


def grid(eval_data, ratios, criteria=CRITERIA) -> str:
    rows = []
    for name in ("vgg_digits.onnx", "resnet_digits.onnx"):
        dense = accuracy(onnxprune.prune(MODELS / name, write=False).reference, eval_data)
        for ratio in ratios:
            for crit in criteria:
                cells = [name.split("_")[0], ratio, crit, f"{dense:.3f}"]
                for opts in (
                    {"reconstruct": False, "uniform": True},
                    {"reconstruct": True, "uniform": True},
                    {"reconstruct": True, "uniform": False},
                ):
                    r = run_one(name, filters=ratio, criterion=crit, **opts)
                    cells.append(f"{accuracy(r['model'], eval_data):.3f} ({r['macs']:.2f})")
                rows.append(cells)
                print(*cells, flush=True)
    header = [
        "model",
        "--filters",
        "criterion",
        "dense",
        "no repair, uniform",
        "LS repair, uniform",
        "LS repair, sensitivity",
    ]
    return markdown_table(header, rows)


def equal_macs(eval_data) -> str:
    rows = []
    for name in ("vgg_digits.onnx", "resnet_digits.onnx"):
        for keep in (0.37, 0.2):
            cells = [name.split("_")[0], keep]
            for uniform in (True, False):
                r = run_one(name, target_macs=keep, uniform=uniform)
                cells.append(f"{accuracy(r['model'], eval_data):.3f} ({r['macs']:.3f})")
            rows.append(cells)
            print(*cells, flush=True)
    return markdown_table(["model", "--target-macs", "uniform", "sensitivity"], rows)


def timing() -> str:
    rows = []
    for name in ("vgg_digits.onnx", "resnet_digits.onnx"):
        base = min(one_ort_pass(name) for _ in range(3))
        r = min((run_one(name, filters=0.5) for _ in range(2)), key=lambda x: x["wall"])
        rows.append(
            [
                name.split("_")[0],
                f"{base * 1000:.1f} ms",
                f"{r['wall']:.2f} s",
                f"{r['ort_share'] * 100:.0f}%",
                f"{3 * base + 2:.2f} s",
            ]
        )
        print(*rows[-1], flush=True)
    return markdown_table(
        [
            "model",
            "one ORT pass (256 samples)",
            "prune --filters 0.5 (energy, sensitivity, LS repair)",
            "time in ORT run()",
            "target 3×pass+2 s",
        ],
        rows,
    )


MEMORY_CHILD = """
import resource, sys, numpy as np, onnxprune
n = int(sys.argv[1]); base = np.load(sys.argv[2])["input"]
rng = np.random.default_rng(0)
x = base[rng.integers(0, len(base), n)] + rng.normal(0, 0.01, (n, 1, 8, 8)).astype("float32")
np.save(sys.argv[3], x.astype("float32"))
del x, base
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
onnxprune.prune(sys.argv[4], filters=0.5, calib=sys.argv[5], calib_samples=n, write=False)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def memory(tmp: Path) -> str:
    rows = []
    for n in (64, 256, 1024, 4096):
        folder = tmp / f"calib{n}"
        folder.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                MEMORY_CHILD,
                str(n),
                str(CALIB),
                str(folder / "input.npy"),
                str(MODELS / "resnet_digits.onnx"),
                str(folder),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        rows.append([n, f"{int(out[1]) / 1024:.0f} MiB"])
        print(*rows[-1], flush=True)
    return markdown_table(["calibration samples (ResNet, --filters 0.5)", "peak RSS"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ratio 0.5 only")
    parser.add_argument("--criteria", help="comma list: only this grid, in its own section")
    args = parser.parse_args()
    with np.load(MODELS / "digits_eval.npz") as f:
        eval_data = {k: f[k] for k in f.files}
    ratios = (0.5,) if args.quick else (0.3, 0.5, 0.7)
    if args.criteria:
        chosen = tuple(args.criteria.split(","))
        command = f"python tools/bench_accuracy.py --criteria {args.criteria}"
        update_section(
            f"Accuracy without retraining: {', '.join(chosen)} (issue 7)",
            f"Command: `{command}` ({machine()}). Columns as in the main accuracy table.\n\n"
            + grid(eval_data, ratios, chosen),
        )
        return
    command = "python tools/bench_accuracy.py" + (" --quick" if args.quick else "")
    intro = (
        f"Command: `{command}` ({machine()}). Held-out top-1 on the 500 evaluation "
        "images of `models/digits_eval.npz`; 256 calibration images; each cell is "
        "top-1 (fraction of MACs kept). No retraining anywhere.\n\n"
    )
    update_section("Accuracy without retraining (issue 7)", intro + grid(eval_data, ratios))
    update_section(
        "Uniform vs sensitivity allocation at equal MACs (issue 7)",
        f"Command: `{command}`. Cells: top-1 (fraction of MACs kept); criterion "
        "energy, LS repair.\n\n" + equal_macs(eval_data),
    )
    update_section(
        "Pipeline time (issue 7)",
        f"Command: `{command}`. Best of 2 runs; machine shared with other work "
        "may inflate times.\n\n" + timing(),
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        update_section(
            "Peak memory vs calibration samples (issue 7)",
            f"Command: `{command}`. Calibration as a memory-mapped `.npy` folder; "
            "peak RSS of the whole process.\n\n" + memory(Path(tmp)),
        )
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


if __name__ == "__main__":
    main()
