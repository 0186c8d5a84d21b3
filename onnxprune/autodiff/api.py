"""Run the backward graph with onnxruntime: once-built sessions and a one-call helper.

Result keys of the flat dict (`gradients()` and `GradientBatch.flat()`):

- `"<initializer>"` → dL/dw, shaped like the initializer;
- `"grad:<tensor>"` → dL/dz for a requested activation z, shaped like z;
- `"<tensor>"` → the activation z itself (for Taylor scores).

Initializer and activation names never clash (ONNX names each tensor once). L is the
cross-entropy averaged over the batch, so gradients of a batch are the mean of the
per-sample gradients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from onnxprune.autodiff.builder import BackwardModel, build_gradient_model
from onnxprune.errors import CalibrationError
from onnxprune.fold import fold_constant_producers
from onnxprune.graph import export_model, import_graph, real_inputs
from onnxprune.modelio import load_model


@dataclass(frozen=True)
class GradientBatch:
    """The results of one backward run over a batch."""

    loss: float  # mean cross-entropy over the batch
    batch_size: int
    weights: dict[str, np.ndarray]  # initializer → dL/dw
    activation_grads: dict[str, np.ndarray]  # tensor → dL/dz
    activations: dict[str, np.ndarray]  # tensor → z

    def flat(self) -> dict[str, np.ndarray]:
        """One dict: w → dL/dw, "grad:z" → dL/dz, z → z (see the module docstring)."""
        flat = dict(self.weights)
        flat.update({f"grad:{k}": v for k, v in self.activation_grads.items()})
        flat.update(self.activations)
        return flat


def load_for_gradients(model_or_path: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """A ModelProto as given, or a model read from disk, checked, with weights folded into
    initializers (so that Constant-node weights get gradients too)."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    source = load_model(model_or_path)
    graph = import_graph(source)
    graph.inputs = [t for t in graph.inputs if not isinstance(t, gs.Constant)]
    fold_constant_producers(graph)
    return export_model(graph, source)


class GradientSession:
    """Builds the backward graph and its onnxruntime session once; `run` per batch.

    Streaming use: create one session, call `run` for every calibration batch and
    accumulate what you need (see `onnxprune.saliency`); memory does not grow with
    the number of batches.
    """

    def __init__(
        self,
        model: onnx.ModelProto | str | Path,
        wrt: Sequence[str] | None = None,
        activations: Sequence[str] | None = None,
        *,
        output: str | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        source = load_for_gradients(model)
        self.backward: BackwardModel = build_gradient_model(
            source, wrt=wrt, activations=activations, output=output
        )
        self.inputs = [i.name for i in real_inputs(source)]
        if session_options is None:
            session_options = ort.SessionOptions()
            # Callers accumulate in numpy between runs; spinning workers would starve it.
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            self.backward.model.SerializeToString(),
            sess_options=session_options,
            providers=["CPUExecutionProvider"],
        )
        b = self.backward
        self._names = [b.loss, b.samples, *b.weight_grads.values()]
        self._names += list(b.activation_grads.values())
        self._names += list(b.activation_values.values())

    @property
    def wrt(self) -> list[str]:
        return list(self.backward.weight_grads)

    @property
    def activations(self) -> list[str]:
        return list(self.backward.activation_grads)

    def run(
        self, feeds: Mapping[str, np.ndarray], labels: np.ndarray | None = None
    ) -> GradientBatch:
        """Loss and gradients for one batch; labels None → the model's own top-1."""
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise CalibrationError(f"missing input(s) {missing}; the model expects {self.inputs}")
        unknown = sorted(set(feeds) - set(self.inputs))
        if unknown:
            raise CalibrationError(f"unknown input(s) {unknown}; the model expects {self.inputs}")
        run_feeds = dict(feeds)
        run_feeds[self.backward.labels] = self._labels(labels, self.backward.classes)
        try:
            values = self._session.run(self._names, run_feeds)
        except (ort_errors.InvalidArgument, ort_errors.Fail, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0][:300]
            hint = " (labels need one entry per sample)" if labels is not None else ""
            raise CalibrationError(f"onnxruntime rejected the inputs{hint}: {first}") from exc
        results = dict(zip(self._names, values, strict=True))
        b = self.backward
        samples = int(results[b.samples])
        if labels is not None and len(run_feeds[b.labels]) != samples:
            raise CalibrationError(
                f"got {len(run_feeds[b.labels])} labels for a batch of {samples} samples"
            )
        return GradientBatch(
            loss=float(results[b.loss]),
            batch_size=samples,
            weights={k: results[v] for k, v in b.weight_grads.items()},
            activation_grads={k: results[v] for k, v in b.activation_grads.items()},
            activations={k: results[v] for k, v in b.activation_values.items()},
        )

    @staticmethod
    def _labels(labels: np.ndarray | None, classes: int | None) -> np.ndarray:
        if labels is None:
            return np.full(1, -1, dtype=np.int64)  # broadcast: every sample unlabeled
        array = np.asarray(labels)
        if array.ndim != 1:
            raise CalibrationError(f"labels must be 1-D (one per sample), got {array.shape}")
        if not np.issubdtype(array.dtype, np.integer):
            raise CalibrationError(f"labels must be integers, got {array.dtype}")
        if classes is not None and array.size and int(array.max()) >= classes:
            raise CalibrationError(f"labels must be below {classes}, the number of classes")
        return array.astype(np.int64, copy=False)


def gradients(
    model_or_path: onnx.ModelProto | str | Path,
    feeds: Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
    wrt: list[str] | None = None,
    activations: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """dL/dw of the batch-mean cross-entropy for each initializer in `wrt` (default: all
    float initializers the loss depends on), plus "grad:<z>" and "<z>" for requested
    activations. Labels None (or entries < 0) use the model's own top-1 class.

    Builds a session for one call; for many batches use `GradientSession`.
    """
    session = GradientSession(model_or_path, wrt=wrt, activations=activations)
    return session.run(feeds, labels).flat()
