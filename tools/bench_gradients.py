"""Gradient criteria (issue 6): SNIP, Taylor and Fisher in the accuracy grid, and the
cost of one backward pass relative to one forward pass.

    python tools/bench_gradients.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import CALIB, MODELS, grid  # noqa: E402
from benchlib import machine, markdown_table, update_section  # noqa: E402

from onnxprune.autodiff import GradientSession  # noqa: E402

COMMAND = "python tools/bench_gradients.py"


def backward_cost(repeats: int = 50) -> str:
    x = np.load(CALIB)["input"][:64]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    rows = []
    for name in ("vgg_digits.onnx", "resnet_digits.onnx"):
        forward = ort.InferenceSession(
            str(MODELS / name), options, providers=["CPUExecutionProvider"]
        )
        backward = GradientSession(str(MODELS / name), session_options=options)

        def best(fn) -> float:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return min(times)

        f = best(lambda: forward.run(None, {"input": x}))  # noqa: B023
        b = best(lambda: backward.run({"input": x}))  # noqa: B023
        rows.append(
            [name.split("_")[0], f"{f * 1000:.2f} ms", f"{b * 1000:.2f} ms", f"{b / f:.1f}x"]
        )
        print(*rows[-1], flush=True)
    return markdown_table(
        ["model (batch 64, 1 thread)", "forward", "forward + loss + all weight gradients", "ratio"],
        rows,
    )


def main() -> None:
    with np.load(MODELS / "digits_eval.npz") as f:
        eval_data = {k: f[k] for k in f.files}
    intro = (
        f"Command: `{COMMAND}` ({machine()}). As in the accuracy table: held-out top-1 "
        "(fraction of MACs kept); loss = cross-entropy against the model's own top-1 "
        "(no labels given).\n\n"
    )
    criteria = ("snip", "taylor", "fisher")
    update_section(
        "Gradient criteria (issue 6)", intro + grid(eval_data, (0.3, 0.5, 0.7), criteria)
    )
    update_section(
        "Backward vs forward time (issue 6)",
        f"Command: `{COMMAND}`. Best of 50 runs each.\n\n" + backward_cost(),
    )


if __name__ == "__main__":
    main()
