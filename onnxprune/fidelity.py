"""Running models in onnxruntime and measuring how closely a pruned model follows the original.

Metrics are accumulated batch by batch (streaming): max |diff|, cosine similarity of
the flattened outputs, and top-1 agreement for outputs that look like score vectors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.errors import VerificationError


def session(model: onnx.ModelProto, threads: int = 0, probe: bool = False) -> ort.InferenceSession:
    """A CPU session for an in-memory model; load failures become VerificationError.

    probe=True is for models that fetch intermediate tensors: onnxruntime's extended
    fusions (e.g. Conv+Add) can drop a fetched tensor, so only basic ones run.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Between runs we compute in numpy; spinning ORT worker threads would steal its cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if probe:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise VerificationError(f"onnxruntime cannot load the model: {first}") from exc


@dataclass
class OutputFidelity:
    output: str
    max_abs_diff: float
    cosine_similarity: float
    top1_agreement: float | None
    samples: int
    accuracy_before: float | None = None  # top-1 vs --labels, original model
    accuracy_after: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


class _Accumulator:
    def __init__(self, name: str) -> None:
        self.name = name
        self.max_abs = 0.0
        self.dot = self.norm_a = self.norm_b = 0.0
        self.agree = 0
        self.samples = 0
        self.scored = False
        self.correct_a = self.correct_b = 0
        self.labelled = 0

    def add(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray | None = None) -> None:
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if a64.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(a64 - b64))))
        self.dot += float(np.sum(a64 * b64))
        self.norm_a += float(np.sum(a64 * a64))
        self.norm_b += float(np.sum(b64 * b64))
        self.samples += a.shape[0] if a.ndim else 1
        if a.ndim == 2 and a.shape[1] > 1:
            self.scored = True
            self.agree += int(np.sum(a.argmax(axis=1) == b.argmax(axis=1)))
            if labels is not None:
                self.correct_a += int(np.sum(a.argmax(axis=1) == labels))
                self.correct_b += int(np.sum(b.argmax(axis=1) == labels))
                self.labelled += labels.shape[0]

    def result(self) -> OutputFidelity:
        denom = np.sqrt(self.norm_a) * np.sqrt(self.norm_b)
        cosine = self.dot / denom if denom > 0 else (1.0 if self.norm_a == self.norm_b else 0.0)
        top1 = self.agree / self.samples if self.scored and self.samples else None
        acc_a = self.correct_a / self.labelled if self.labelled else None
        acc_b = self.correct_b / self.labelled if self.labelled else None
        return OutputFidelity(
            self.name, self.max_abs, float(cosine), top1, self.samples, acc_a, acc_b
        )


def compare(
    reference: ort.InferenceSession,
    candidate: ort.InferenceSession,
    batches: Iterable[dict[str, np.ndarray]],
    labels: Iterable[np.ndarray | None] | None = None,
) -> list[OutputFidelity]:
    """Run both sessions on every batch and compare each output (and score vs labels)."""
    names = [o.name for o in reference.get_outputs()]
    accs = [_Accumulator(n) for n in names]
    label_iter = iter(labels) if labels is not None else None
    for feeds in batches:
        truth = next(label_iter, None) if label_iter is not None else None
        ref = reference.run(names, feeds)
        cand = candidate.run(names, feeds)
        for acc, a, b in zip(accs, ref, cand, strict=True):
            acc.add(np.asarray(a), np.asarray(b), truth)
    return [acc.result() for acc in accs]
