"""Accelerator estimate: hand-computed storage, MACs, activations, fit and energy."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.errors import UsageError
from onnxprune.estimate import (
    BUILTIN,
    Profile,
    before_after,
    estimate,
    format_comparison,
    format_estimate,
    load_profile,
)
from onnxprune.estimate.energy import words
from onnxprune.estimate.fit import place
from onnxprune.estimate.storage import LayerStorage, eie_pe_entries
from onnxprune.sparse import analyze

W1 = np.array([[1, 0, 2, 0], [0, 3, 0, 4], [5, 0, 0, 6]], np.float32)  # Gemm transB=1
W2 = np.array([[1, 0], [0, 2], [3, 0]], np.float32)  # MatMul [in, out]


def _model(nodes, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def two_layer() -> onnx.ModelProto:
    """x[1,4] -> Gemm(W1) -> Relu -> MatMul(W2) -> y[1,2]; both weights half zeros."""
    return _model(
        [
            helper.make_node("Gemm", ["x", "W1"], ["h"], name="fc1", transB=1),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2"),
        ],
        {"x": [1, 4]},
        {"y": [1, 2]},
        {"W1": W1, "W2": W2},
    )


def han(**changes) -> Profile:
    """generic-45nm constants (fp32 4.6 pJ/MAC, 5 / 640 pJ per 32-bit access), resized."""
    return replace(BUILTIN["generic-45nm"], **changes)


# storage, MACs, activations and energy by hand ---------------------------------------


def test_two_layer_by_hand():
    r = estimate(two_layer(), "generic-45nm")
    assert r["params"] == {
        "total": 18, "nonzero": 9, "weights_total": 18, "weights_nonzero": 9,
        "weights_density": 0.5,
    }  # fmt: skip
    s = r["storage_bytes"]
    # Blob = 36-byte header + payload. Dense: 12 and 6 values.
    assert s["dense_fp32"] == (36 + 48) + (36 + 24)
    assert s["dense_fp16"] == (36 + 24) + (36 + 12)
    assert s["dense_int8"] == (36 + 12) + (36 + 6)
    assert s["dense"] == s["dense_fp32"]
    # CSR: u32 indptr[rows+1] + u16 indices[nnz] + fp32 values[nnz]; W2 is viewed [2, 3].
    assert s["csr"] == (36 + 4 * 4 + 6 * 2 + 6 * 4) + (36 + 3 * 4 + 3 * 2 + 3 * 4)
    # relidx (5-bit runs for fc layers, no run over 31): ceil(nnz*5/8) + 4*nnz.
    assert s["relidx"] == (36 + 4 + 24) + (36 + 2 + 12)
    assert s["bsr"] is None and "does not divide" in r["storage_skipped"]["bsr"]
    # MACs: Gemm 1x3 outputs x 4 inputs, MatMul 1x2 x 3; half of every weight is zero.
    assert r["macs"] == {"dense": 18, "effective": 9, "computed": 9}
    # Live activations (fp32): x 16 B + h 12 B while fc1 runs.
    assert r["activation_peak_bytes"] == 28
    assert r["activations"]["peak_node"] == "fc1"
    layers = r["fit"]["layers"]
    assert [(x["node"], x["weight"], x["format"], x["weights_bytes"]) for x in layers] == [
        ("fc1", "W1", "relidx", 4 + 24),  # on chip: no header; relidx beats dense 48 B
        ("fc2", "W2", "relidx", 2 + 12),
    ]
    assert r["fit"]["on_chip"] and r["dram_bytes_per_inference"] == 0
    # Energy: 9 MACs x 4.6 pJ; weights 7 + 4 words, activations x 4 + h 3 + r 3 + y 2
    # words, all from SRAM at 5 pJ.
    e = r["energy_pj"]
    assert e["arithmetic"] == pytest.approx(9 * 4.6)
    assert e["sram"] == pytest.approx((7 + 4 + 4 + 3 + 3 + 2) * 5.0)
    assert e["dram"] == 0.0
    assert e["total"] == pytest.approx(41.4 + 115.0)
    assert sum(x["energy_pj"]["total"] for x in layers) == pytest.approx(e["total"])


def test_result_has_the_documented_keys_and_is_json():
    r = estimate(two_layer())
    json.dumps(r)
    for path in (
        "params.total", "params.nonzero", "storage_bytes", "macs.dense", "macs.effective",
        "activation_peak_bytes", "fit.on_chip", "fit.layers", "dram_bytes_per_inference",
        "energy_pj.arithmetic", "energy_pj.sram", "energy_pj.dram", "energy_pj.total",
        "accelerator.pj_per_mac", "accelerator.sram_bytes",
    ):  # fmt: skip
        value = r
        for part in path.split("."):
            value = value[part]
    assert set(r["fit"]["layers"][0]) >= {"node", "weight", "weights_bytes", "format", "on_chip"}
    assert r == estimate(two_layer())  # deterministic


def test_dense_engine_computes_every_mac_and_stores_dense():
    p = han(skip_zeros=False, sparse_format="dense", dtype="int8")
    r = estimate(two_layer(), p)
    assert r["macs"]["computed"] == 18 and r["macs"]["effective"] == 9
    assert [x["format"] for x in r["fit"]["layers"]] == ["dense", "dense"]
    assert [x["weights_bytes"] for x in r["fit"]["layers"]] == [12, 6]
    assert r["energy_pj"]["arithmetic"] == pytest.approx(18 * 0.23)
    assert r["storage_bytes"]["dense"] == r["storage_bytes"]["dense_int8"]
    assert r["activation_peak_bytes"] == 7  # int8 activations: 4 + 3


def test_dense_wins_when_smaller():
    full = W1 + 1.0  # no zeros: relidx would add index bits to every value
    model = _model(
        [helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transB=1)],
        {"x": [1, 4]},
        {"y": [1, 3]},
        {"W": full},
    )
    row = estimate(model)["fit"]["layers"][0]
    assert (row["format"], row["weights_bytes"], row["macs_computed"]) == ("dense", 48, 12)


# fit at the boundary -----------------------------------------------------------------


def test_fit_exactly_full():
    r = estimate(two_layer(), han(sram_bytes=28 + 14))
    assert r["fit"]["on_chip"] is True
    assert [x["on_chip"] for x in r["fit"]["layers"]] == [True, True]
    assert r["dram_bytes_per_inference"] == 0


def test_fit_one_byte_over():
    r = estimate(two_layer(), han(sram_bytes=28 + 14 - 1))
    assert r["fit"]["on_chip"] is False
    first, second = r["fit"]["layers"]
    assert first["on_chip"] and not second["on_chip"]  # first fit in graph order
    assert second["reason"] == "needs 14 B of the 13 B left in the weight SRAM"
    assert r["dram_bytes_per_inference"] == 14
    e = r["energy_pj"]
    assert e["dram"] == pytest.approx(words(14, 32) * 640.0)
    assert e["sram"] == pytest.approx((7 + 12) * 5.0)
    assert e["total"] == pytest.approx(41.4 + 95.0 + 2560.0)


def test_first_fit_keeps_later_small_layers():
    r = estimate(two_layer(), han(sram_bytes=14))  # W1 (28 B) cannot, W2 (14 B) can
    assert [x["on_chip"] for x in r["fit"]["layers"]] == [False, True]
    assert r["dram_bytes_per_inference"] == 28


def test_activation_buffer_boundary():
    fits = estimate(two_layer(), han(act_sram_bytes=28))["activations"]
    assert fits["on_chip"] is True
    r = estimate(two_layer(), han(act_sram_bytes=27))
    assert r["activations"]["on_chip"] is False
    assert r["dram_bytes"] == {"weights": 0, "activations": 16 + 12 + 12 + 8}
    assert r["energy_pj"]["dram"] == pytest.approx(12 * 640.0)


# EIE: interleaved CSC, per-PE fit ----------------------------------------------------

# Rows 0,2,4 live on PE 0 (local rows 0,1,2), rows 1,3,5 on PE 1.
EIE_W = np.zeros((6, 2), np.float32)
EIE_W[4, 0] = 5  # PE 0, local row 2: a run of 2 > 1 (1-bit runs) -> one padding zero
EIE_W[1, 0], EIE_W[3, 0] = 1, 4  # PE 1, local rows 0 and 1
EIE_W[0, 1] = 2  # PE 0, local row 0
EIE_W[5, 1] = 3  # PE 1, local row 2: one padding zero


def eie_model() -> onnx.ModelProto:
    return _model(
        [helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transB=1)],
        {"x": [1, 2]},
        {"y": [1, 6]},
        {"W": EIE_W},
    )


def eie_profile(**changes) -> Profile:
    base = dict(n_pe=2, run_bits=1, value_bits=4, pointer_bits=16, sram_bytes=6)
    base.update(changes)
    return replace(BUILTIN["eie-64pe"], pointer_sram_bytes=12, **base)


def test_eie_entries_per_pe_by_hand():
    entries = eie_pe_entries(EIE_W != 0, 2, 1)
    assert entries.tolist() == [3, 4]  # PE 0: 2 + 1 padding; PE 1: 3 + 1 padding
    assert int(entries.sum()) == analyze(EIE_W, "eie", n_pe=2, run_bits=1).entries


def test_eie_fit_exactly_full_per_pe():
    r = estimate(eie_model(), eie_profile())
    row = r["fit"]["layers"][0]
    # 5-bit entries: PE 0 ceil(15/8) = 2 B, PE 1 ceil(20/8) = 3 B; 3 pointers x 16 bit.
    assert (row["pe_max_bytes"], row["pe_max_entries"], row["pointer_bytes_per_pe"]) == (3, 4, 6)
    assert row["weights_bytes"] == 2 + 3 + 2 * 6
    assert row["on_chip"] and r["fit"]["on_chip"]
    assert row["macs_computed"] == round(12 * 7 / 12)  # entries incl. padding are multiplied
    assert r["fit"]["per_pe"] == {
        "sram_bytes": 3, "weight_bytes_needed_max": 3, "pointer_sram_bytes": 6,
        "pointer_bytes_needed": 6,
    }  # fmt: skip


def test_eie_fit_one_byte_over_on_the_fullest_pe():
    row = estimate(eie_model(), eie_profile(sram_bytes=5))["fit"]["layers"][0]
    assert not row["on_chip"]
    assert row["reason"] == "needs 3 B of the 2 B left in the weight SRAM of PE 1"


def test_eie_pointer_sram_one_byte_over():
    r = estimate(eie_model(), replace(eie_profile(), pointer_sram_bytes=11))
    assert r["fit"]["layers"][0]["reason"] == "needs 6 B of pointers per PE, 5 B left of 5"


def test_eie_pointer_range():
    row = estimate(eie_model(), eie_profile(pointer_bits=2))["fit"]["layers"][0]
    assert not row["on_chip"]
    assert "4 entries on one PE exceed what 2-bit column pointers address (3)" in row["reason"]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 12),
    n_pe=st.integers(1, 9),
    bits=st.integers(1, 5),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_eie_entries_match_the_encoder(rows, cols, n_pe, bits, density, seed):
    rng = np.random.default_rng(seed)
    w = (rng.random((rows, cols)) < density) * rng.standard_normal((rows, cols))
    w = w.astype(np.float32)
    entries = eie_pe_entries(w != 0, n_pe, bits)
    assert int(entries.sum()) == analyze(w, "eie", n_pe=n_pe, run_bits=bits).entries


# activations, layer kinds, selection -------------------------------------------------


def residual() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    return _model(
        [
            helper.make_node("Gemm", ["x", "A"], ["a"], name="g1", transB=1),
            helper.make_node("Relu", ["a"], ["b"], name="relu"),
            helper.make_node("Add", ["a", "b"], ["c"], name="add"),
            helper.make_node("MatMul", ["c", "B"], ["y"], name="g2"),
        ],
        {"x": [1, 8]},
        {"y": [1, 4]},
        {"A": rng.standard_normal((8, 8)).astype(np.float32),
         "B": rng.standard_normal((8, 4)).astype(np.float32)},
    )  # fmt: skip


def test_activation_peak_follows_liveness():
    r = estimate(residual())
    # x dies after g1; a and b are both read by add, whose output c joins them: 3 x 32 B.
    assert r["activations"]["peak_bytes"] == 96
    assert r["activations"]["peak_node"] == "add"
    assert estimate(residual(), han(dtype="int8"))["activation_peak_bytes"] == 24


def test_activation_product_has_macs_but_no_weights():
    model = _model(
        [helper.make_node("MatMul", ["p", "q"], ["y"], name="mm")],
        {"p": [2, 3], "q": [3, 5]},
        {"y": [2, 5]},
        {},
    )
    r = estimate(model)
    assert r["fit"]["layers"] == [] and r["fit"]["on_chip"] is True
    assert r["weightless_layers"][0]["macs"] == 2 * 5 * 3 == r["macs"]["computed"]
    assert r["energy_pj"]["arithmetic"] == pytest.approx(30 * 4.6)
    assert r["energy_pj"]["sram"] == pytest.approx((6 + 15 + 10) * 5.0)


def test_shared_weight_is_stored_once():
    model = _model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="m1"),
            helper.make_node("MatMul", ["h", "W"], ["y"], name="m2"),
        ],
        {"x": [1, 3]},
        {"y": [1, 3]},
        {"W": np.eye(3, dtype=np.float32)},
    )
    r = estimate(model)
    (row,) = r["fit"]["layers"]
    assert row["nodes"] == ["m1", "m2"] and row["macs"] == 18 and row["macs_computed"] == 6


def test_layers_glob_selects_by_node_or_weight_name():
    r = estimate(two_layer(), layers=["W2"])
    assert [x["node"] for x in r["fit"]["layers"]] == ["fc2"]
    assert r["macs"]["dense"] == 6 and r["params"]["total"] == 18
    assert r["params"]["weights_total"] == 6
    assert estimate(two_layer(), layers=["fc*"])["macs"]["dense"] == 18
    with pytest.raises(UsageError, match="matches no"):
        estimate(two_layer(), layers=["conv*"])


def test_conv_and_constant_node_weights_are_folded():
    w = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)
    w[0] = 0  # one filter pruned
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    const = helper.make_node("Constant", [], ["w"], name="wconst", value=numpy_helper.from_array(w))
    model = _model([const, conv], {"x": [1, 3, 5, 5]}, {"y": [1, 2, 5, 5]}, {})
    r = estimate(model)
    (row,) = r["fit"]["layers"]
    assert (row["kind"], row["shape"], row["nonzero"]) == ("conv", [2, 3, 3, 3], 27)
    assert r["macs"]["dense"] == 2 * 25 * 27
    assert r["macs"]["effective"] == 2 * 25 * 27 // 2


def test_input_shape_overrides_dynamic_dims():
    model = two_layer()
    for info in (model.graph.input[0], model.graph.output[0]):
        info.type.tensor_type.shape.dim[0].dim_param = "batch"
    assert estimate(model)["macs"]["dense"] == 18  # batch 1
    assert estimate(model, input_shapes={"x": (3, 4)})["macs"]["dense"] == 54
    with pytest.raises(UsageError, match="unknown input"):
        estimate(model, input_shapes={"nope": (1, 4)})


def test_text_report_states_constants_and_parts():
    text = format_estimate(estimate(two_layer(), han(sram_bytes=41)), "two")
    assert "MAC 4.6 pJ (fp32)" in text and "640 pJ per 32-bit access" in text
    assert "DO NOT ALL FIT: 1 of 2 layers" in text
    assert "fc2 streams from DRAM" in text
    for part in ("arithmetic", "SRAM", "DRAM", "total"):
        assert part in text


# profiles ----------------------------------------------------------------------------


def test_builtin_profiles_state_their_constants():
    assert set(BUILTIN) == {
        "generic-45nm", "eie-64pe", "eyeriss-v1", "nvdla-small", "nvdla-large", "edge-tpu",
    }  # fmt: skip
    g = BUILTIN["generic-45nm"].to_json()
    assert g["pj_per_mac"] == {"fp32": 4.6, "fp16": 1.5, "int8": 0.23}
    assert (g["pj_sram_access"], g["pj_dram_access"], g["word_bits"]) == (5.0, 640.0, 32)
    eie = BUILTIN["eie-64pe"]
    assert (eie.n_pe, eie.bank_bytes, eie.pointer_sram_bytes // eie.n_pe) == (64, 131072, 32768)
    assert eie.bits_per_value + eie.run_bits == 8
    assert BUILTIN["nvdla-small"].sram_bytes == 128 * 1024
    assert BUILTIN["nvdla-large"].sram_bytes == 512 * 1024
    assert BUILTIN["eyeriss-v1"].sram_bytes == 108 * 1024
    assert BUILTIN["edge-tpu"].sram_bytes == 8 * 1024 * 1024
    assert all(p.source for p in BUILTIN.values())


def test_load_profile_overrides():
    p = load_profile("generic-45nm", sram_bytes="2MiB", dtype="int8")
    assert (p.sram_bytes, p.dtype, p.mac_pj) == (2 * 1024 * 1024, "int8", 0.23)
    assert load_profile("generic-45nm", sram_bytes=1000).sram_bytes == 1000
    assert load_profile("generic-45nm", sram_bytes="64KB").sram_bytes == 64000
    with pytest.raises(UsageError, match="unknown accelerator 'tpu9'.*generic-45nm"):
        load_profile("tpu9")
    with pytest.raises(UsageError, match="byte count"):
        load_profile("generic-45nm", sram_bytes="lots")
    with pytest.raises(UsageError, match="no entry for the profile's dtype 'fp16'"):
        load_profile(replace(BUILTIN["nvdla-small"], pj_per_mac={"int8": 0.23}), dtype="fp16")


FULL_TOML = """
name = "my-npu"
dtype = "int8"
sram_bytes = "256KiB"
word_bits = 64
pj_sram_access = 10.0
pj_dram_access = 1300.0
skip_zeros = true
sparse_format = "bitmask"
pj_per_mac = { int8 = 0.23 }
"""


def test_toml_profile(tmp_path):
    path = tmp_path / "npu.toml"
    path.write_text(FULL_TOML)
    p = load_profile(str(path))
    assert (p.name, p.sram_bytes, p.word_bits, p.sparse_format) == (
        "my-npu", 256 * 1024, 64, "bitmask",
    )  # fmt: skip
    r = estimate(two_layer(), p)
    assert r["accelerator"]["name"] == "my-npu"
    # int8 bitmask: 1-bit mask per weight + one byte per non-zero.
    assert [x["weights_bytes"] for x in r["fit"]["layers"]] == [2 + 6, 1 + 3]
    assert r["energy_pj"]["arithmetic"] == pytest.approx(9 * 0.23)


def test_toml_base_inherits(tmp_path):
    path = tmp_path / "eie-bigger.toml"
    path.write_text('base = "eie-64pe"\npointer_sram_bytes = "4MiB"\n')
    p = load_profile(path)
    assert p.name == "eie-bigger" and p.pointer_sram_bytes == 4 << 20 and p.n_pe == 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dtype = 'fp32'\nsram_bytes = 1\n", r"missing required key\(s\) \['word_bits'"),
        (FULL_TOML.replace('"256KiB"', "-1"), "sram_bytes must be >= 0 bytes, got -1"),
        (FULL_TOML.replace('"256KiB"', "-0.5"), "sram_bytes must be >= 0 bytes"),
        (FULL_TOML + "act_sram_bytes = -4\n", "act_sram_bytes must be >= 0 bytes"),
        (FULL_TOML.replace("word_bits = 64", "word_bits = 0"), "word_bits must be an integer"),
        (FULL_TOML.replace("1300.0", "-1.0"), "pj_dram_access must be a finite number"),
        (FULL_TOML.replace("int8 = 0.23", "fp32 = 4.6"), "no entry for the profile's dtype"),
        (FULL_TOML.replace('"bitmask"', '"zip"'), "sparse_format must be one of"),
        (FULL_TOML.replace('"int8"', '"int4"', 1), "dtype must be one of"),
        (FULL_TOML + "sram_size = 3\n", r"unknown key\(s\) \['sram_size'\]"),
        ('base = "tpu9"\n', "base = 'tpu9' is not a built-in profile"),
        ("dtype = \n", "not valid TOML"),
    ],
)
def test_toml_validation_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as info:
        load_profile(path)
    assert str(path) in str(info.value) or "bad" in str(info.value)


def test_missing_toml_file(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_profile(tmp_path / "none.toml")


def test_words_round_up():
    assert [words(n, 32) for n in (0, 1, 4, 5)] == [0, 1, 1, 2]
    assert math.isclose(words(3, 8), 3)


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(0, 100), min_size=1, max_size=8), sram=st.integers(0, 400))
def test_first_fit_properties(sizes, sram):
    layers = [LayerStorage("dense", n, n, n, np.array([n])) for n in sizes]
    placed = place(layers, han(sram_bytes=sram))
    on = [n for n, pl in zip(sizes, placed, strict=True) if pl.on_chip]
    assert all(pl.on_chip for pl in placed) == (sum(sizes) <= sram)  # policy-independent
    assert sum(on) <= sram
    used = 0
    for n, pl in zip(sizes, placed, strict=True):  # first fit: refused only when too big
        assert pl.on_chip == (used + n <= sram)
        used += n if pl.on_chip else 0


def test_before_after_section():
    pruned = two_layer()
    w1 = numpy_helper.to_array(pruned.graph.initializer[0]).copy()
    w1[2] = 0  # one more output row gone
    pruned.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1, "W1"))
    section = before_after(two_layer(), pruned, han(sram_bytes=41))
    assert section["accelerator"] == "generic-45nm"
    change = section["change"]
    assert change["params.weights_nonzero"] == {"before": 9, "after": 7}
    assert change["fit.on_chip"] == {"before": False, "after": True}
    assert change["energy_pj.total"]["after"] < change["energy_pj.total"]["before"]
    text = format_comparison([("before", section["before"]), ("after", section["after"])])
    assert "non-zero weights" in text and "-22.2%" in text
