"""Coverage benchmark (issue 3): how much of real exported models the dependency graph prunes.

For every light model of the onnx wheel and PP-OCR det/cls: groups found, prunable
MAC fraction, blocked groups counted by kind of reason, params/MACs before -> after
`--filters 0.3`, and the time of `onnxprune analyze` and of the prune run. Writes
the "Coverage (issue 3)" section of BENCHMARKS.md.

    python tools/bench_coverage.py [--calib-samples N] [--models a,b,...]

The light models' own weights are constant fills, so every model gets seeded
random weights first (tools/fetch_test_models.py); timings do not depend on them.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections import Counter
from pathlib import Path

import onnx
from benchlib import machine, markdown_table, update_section
from fetch_test_models import (
    CACHE,
    LIGHT,
    PPOCR_SHAPES,
    fetch_ppocr,
    fold_weights,
    light_model_path,
)

# (text in a blocked reason, short kind); the first match wins.
KINDS = [
    ("reaches graph output", "graph output"),
    ("reaches graph input", "graph input"),
    ("normalizes each channel by its neighbours", "LRN"),
    ("keep its groups equal", "grouped conv"),
    ("the only unit left", "grouped conv units"),
    ("has no channel rule", "unknown op"),
    ("custom-domain", "custom op"),
    ("attention-style", "attention"),
    ("recurrent", "recurrent"),
    ("subgraph", "control flow"),
    ("shared by several nodes", "shared weight"),
    ("computed at run time", "run-time shape"),
    ("several axes", "reshape mixing channels"),
]


def reason_kind(reason: str) -> str:
    for text, kind in KINDS:
        if text in reason:
            return kind
    match = re.match(r"(\w+) '", reason)
    op = match.group(1) if match else "other"
    if "over the channel axis" in reason:
        return f"{op} over channels"
    return op


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def prepare(name: str, source: Path) -> Path:
    """The model with folded, seeded random weights, cached beside the fetched ones."""
    target = CACHE / "bench" / f"{name}.onnx"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        model = fold_weights(onnx.load(str(source)), seed=0)
        onnx.save(model, str(target))
    return target


def row(name: str, path: Path, shapes: dict, samples: int) -> list[object]:
    from onnxprune import prune
    from onnxprune.analysis import analyze

    start = time.perf_counter()
    analysis = analyze(path, shapes)
    analyze_s = time.perf_counter() - start
    start = time.perf_counter()
    result = prune(path, filters=0.3, write=False, calib_samples=samples, input_shapes=shapes)
    prune_s = time.perf_counter() - start
    cov = analysis["coverage"]
    kinds = Counter(reason_kind(b["reason"]) for b in cov["blocked"])
    blocked = ", ".join(f"{k} ×{n}" for k, n in sorted(kinds.items())) or "none"
    rep = result.report
    n_groups = len(analysis["groups"])
    return [
        name,
        f"{n_groups - len(cov['blocked'])} / {n_groups}",
        f"{cov['prunable_flops_fraction'] * 100:.1f}%",
        blocked,
        f"{_human(rep['params']['before'])} → {_human(rep['params']['after'])}",
        f"{_human(rep['flops']['before'])} → {_human(rep['flops']['after'])}",
        f"{analyze_s:.1f}",
        f"{prune_s:.1f}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--models", default=None, help="comma-separated subset")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.getLogger("onnxprune").setLevel(logging.ERROR)
    models: dict[str, tuple[Path, dict]] = {n: (light_model_path(n), {}) for n in LIGHT}
    try:
        for name, path in fetch_ppocr().items():
            models[name] = (path, {"x": PPOCR_SHAPES[name]})
    except RuntimeError as exc:
        print(f"PP-OCR skipped: {exc}", file=sys.stderr)
    if args.models:
        wanted = args.models.split(",")
        models = {k: v for k, v in models.items() if k in wanted}
    rows = []
    for name, (source, shapes) in models.items():
        rows.append(row(name, prepare(name, source), shapes, args.calib_samples))
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    header = [
        "model",
        "groups prunable / found",
        "prunable MACs",
        "blocked groups by reason",
        "params (--filters 0.3)",
        "MACs (--filters 0.3)",
        "analyze s",
        "prune s",
    ]
    command = "python tools/bench_coverage.py" + (
        f" --calib-samples {args.calib_samples}" if args.calib_samples != 32 else ""
    )
    body = (
        f"`{command}` — {machine()}. Each model gets seeded random weights first (the "
        "light zoo's own are constant fills); PP-OCR runs at batch 1 with input "
        f"{PPOCR_SHAPES['ppocr_det'][2:]} (det) and {PPOCR_SHAPES['ppocr_cls'][2:]} (cls), its "
        "dims stay dynamic in the pruned model. `analyze s` is `onnxprune analyze`; "
        "`prune s` is the whole prune run with default options and "
        f"`--calib-samples {args.calib_samples}` (verification runs every sample through "
        "both models one at a time for batch-1 models, so it dominates). MACs at batch 1.\n\n"
        + markdown_table(header, rows)
    )
    if args.no_write:
        print(body)
    else:
        update_section("Coverage (issue 3)", body)
        print("updated BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
