"""Literature check: AlexNet at Han et al. 2015's per-layer densities (NUMBERS.md).

The onnx wheel's light AlexNet has the real layer shapes with ConstantOfShape weights;
we fold them (load + normalize), draw random weights and prune each layer by magnitude
to Han's kept fraction. The estimate must count 6.7M +- 2% kept weights of 61M, and say
whether the FC layers fit on eie-64pe (the EIE paper says they do; see the README
for why our model streams fc8: the three layers' column pointers overflow the 32 KiB
pointer SRAM of each PE although their weights fit).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from onnxprune.estimate import BUILTIN, estimate, load_profile
from tools.han_alexnet import ALEXNET, ALEXNET_WEIGHTS, KEPT, alexnet_models


@pytest.fixture(scope="module")
def models():
    if not ALEXNET.exists():
        pytest.skip("the onnx wheel has no light AlexNet")
    return alexnet_models()


@pytest.fixture(scope="module")
def generic(models):
    """generic-45nm (1 MiB SRAM) estimates of the dense and the pruned model."""
    return tuple(estimate(m, "generic-45nm") for m in models)


@pytest.mark.slow
def test_han_kept_weights(generic):
    d, r = generic
    p = r["params"]
    assert p["weights_total"] == ALEXNET_WEIGHTS
    assert abs(p["weights_nonzero"] / 6.7e6 - 1) <= 0.02  # 6.80M: Han's rounded percentages
    assert abs(p["nonzero"] / 6.7e6 - 1) <= 0.02  # biases (10,568) included
    for row in r["fit"]["layers"]:
        assert row["density"] == pytest.approx(KEPT[row["weight"].split("_")[0]], abs=1e-4)
    assert d["params"]["weights_nonzero"] == ALEXNET_WEIGHTS
    # Relative-index storage of 11% of the weights takes ~13% of the dense bytes, and
    # every byte that does not fit in 1 MiB streams from DRAM once per inference.
    assert r["fit"]["weights_bytes"] < 0.15 * d["fit"]["weights_bytes"]
    assert r["energy_pj"]["total"] < d["energy_pj"]["total"] / 5
    assert r["energy_pj"]["dram"] > r["energy_pj"]["arithmetic"]  # still DRAM-bound at 1 MiB
    assert r["macs"]["effective"] < 0.45 * d["macs"]["dense"]  # Han: FLOPs 30% (ours: 42%)


@pytest.mark.slow
def test_han_argument_pruned_fits_where_dense_cannot(models, generic):
    d, r = generic
    budget = 32 << 20  # 32 MiB of SRAM: the pruned weights (31 MiB relidx) fit, dense do not
    assert r["fit"]["weights_bytes"] <= budget < d["fit"]["weights_bytes"]
    big = estimate(models[1], load_profile("generic-45nm", sram_bytes=budget))
    assert big["fit"]["on_chip"] and big["dram_bytes_per_inference"] == 0
    memory = {
        k: x["energy_pj"]["sram"] + x["energy_pj"]["dram"] for k, x in (("1M", r), ("32M", big))
    }
    assert memory["32M"] < memory["1M"] / 50  # 5 pJ instead of 640 pJ per 32-bit word


@pytest.mark.slow
def test_eie_fc_layers(models):
    pruned = models[1]
    r = estimate(pruned, "eie-64pe", layers=["fc*"])
    rows = {row["weight"]: row for row in r["fit"]["layers"]}
    assert set(rows) == {"fc6_w_0", "fc7_w_0", "fc8_w_0"}
    per_pe = r["fit"]["per_pe"]
    # The weights of all three FC layers fit every PE's 128 KiB sparse-matrix SRAM...
    assert per_pe["weight_bytes_needed_max"] <= per_pe["sram_bytes"] == 128 * 1024
    assert per_pe["weight_bytes_needed_max"] > 100_000  # ~83% full
    # ...and fc6's busiest PE stays inside 16-bit pointer range (65535 entries)...
    assert 60_000 < rows["fc6_w_0"]["pe_max_entries"] <= 65_535
    # ...but 16-bit column pointers, (columns + 1) per layer per PE, do not fit 32 KiB.
    assert per_pe["pointer_bytes_needed"] == 2 * (9217 + 4097 + 4097) > 32 * 1024
    assert rows["fc6_w_0"]["on_chip"] and rows["fc7_w_0"]["on_chip"]
    assert not rows["fc8_w_0"]["on_chip"] and "pointers" in rows["fc8_w_0"]["reason"]
    assert r["fit"]["on_chip"] is False
    # Each FC layer alone (as the EIE paper benchmarks them) fits, and so do all three
    # with 34,822 B of pointer SRAM per PE: the pointer SRAM is the only difference.
    for glob in ("fc6*", "fc7*", "fc8*"):
        assert estimate(pruned, "eie-64pe", layers=[glob])["fit"]["on_chip"]
    roomier = replace(BUILTIN["eie-64pe"], pointer_sram_bytes=64 * 34_822)
    assert estimate(pruned, roomier, layers=["fc*"])["fit"]["on_chip"]
