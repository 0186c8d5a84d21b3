"""Sparse blob formats: exact round trips, exact sizes, layouts checked against oracles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxprune import sparse
from onnxprune.errors import ModelError, OutputError, UsageError
from onnxprune.sparse.blob import HEADER

FORMATS = list(sparse.FORMATS)
DTYPES = ["fp32", "fp16", "int8"]
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bits_of(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def random_sparse(rng, rows, cols, density, scale=1.0) -> np.ndarray:
    m = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    m[rng.random((rows, cols)) >= density] = 0.0
    return m


def divisor(rng, n: int) -> int:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return int(rng.choice(divs))


@st.composite
def matrices(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows, cols = draw(st.integers(1, 40)), draw(st.integers(1, 70))
    density = draw(st.sampled_from([0.0, 0.01, 0.03, 0.1, 0.3, 0.7, 1.0]))
    m = random_sparse(rng, rows, cols, density, scale=draw(st.sampled_from([1e-3, 1.0, 50.0])))
    if draw(st.booleans()):  # empty rows and columns
        m[rng.random(rows) < 0.3] = 0.0
        m[:, rng.random(cols) < 0.3] = 0.0
    if draw(st.booleans()):  # -0.0 (what w * mask gives) is a zero: not stored
        zeros = np.argwhere(m == 0)
        if len(zeros):
            r, c = zeros[rng.integers(len(zeros))]
            m[r, c] = -0.0
    options = {
        "index_bits": draw(st.integers(1, 8)),
        "n_pe": draw(st.sampled_from([1, 2, 3, 4, 8, 64])),
        "run_bits": draw(st.integers(1, 6)),
        "block": (divisor(rng, rows), divisor(rng, cols)),
    }
    return m, options


def check_roundtrip(m: np.ndarray, fmt: str, dtype: str, **options) -> sparse.BlobStats:
    blob = sparse.encode(m, fmt, dtype, **options)
    expected = sparse.quantized_dense(m, dtype)
    decoded = sparse.decode(blob)
    assert decoded.dtype == np.float32 and decoded.shape == m.shape
    np.testing.assert_array_equal(bits_of(decoded), bits_of(expected), err_msg=f"{fmt}/{dtype}")
    stats = sparse.analyze(m, fmt, dtype, **options)
    assert sparse.size_bytes(m, fmt, dtype, **options) == len(blob) == stats.total_bytes
    assert stats.header_bytes + stats.index_bytes + stats.value_bytes == stats.total_bytes
    codes, _ = sparse.quantize(m, dtype)
    assert stats.nnz == np.count_nonzero(codes)
    return stats


@SETTINGS
@given(matrices())
def test_every_format_round_trips_exactly(case):
    m, options = case
    for fmt in FORMATS:
        for dtype in DTYPES:
            check_roundtrip(m, fmt, dtype, **options)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_matrices(fmt, dtype):
    rng = np.random.default_rng(1)
    cases = [
        np.zeros((6, 10), np.float32),  # all zero
        rng.standard_normal((8, 12)).astype(np.float32),  # fully dense
        np.zeros((1, 1), np.float32),
        np.full((1, 1), -2.5, np.float32),
        np.eye(16, 4, dtype=np.float32),
    ]
    for m in cases:
        stats = check_roundtrip(m, fmt, dtype, block=(1, 1), n_pe=3)
        if dtype == "fp32":
            assert stats.nnz == np.count_nonzero(m)


def test_fp32_is_bit_exact_and_negative_zero_is_a_zero():
    m = np.zeros((3, 5), np.float32)
    m[1, 2] = np.frombuffer(np.uint32(0x7FC01234).tobytes(), np.float32)[0]  # NaN payload
    m[2, 4] = np.float32(1e-40)  # subnormal
    m[2, 0] = -np.inf
    m[0, 3] = -1.5
    pruned = m * np.array([1, 0, 1, 1, 1], np.float32)  # leaves -0.0 where m < 0
    pruned[0, 0] = -0.0
    for fmt in FORMATS:
        out = sparse.decode(sparse.encode(pruned, fmt, block=(1, 1)))
        np.testing.assert_array_equal(bits_of(out), bits_of(pruned + np.float32(0.0)))
        assert np.count_nonzero(bits_of(out)) == 4
        assert sparse.analyze(pruned, fmt, block=(1, 1)).nnz == 4
        negative_zeros = np.full((3, 5), -0.0, np.float32)
        half = sparse.decode(sparse.encode(negative_zeros, fmt, "fp16", block=(1, 1)))
        assert not np.signbit(half).any()


def test_wide_dimensions_use_32_bit_indices():
    m = np.zeros((1, 70000), np.float32)
    m[0, [3, 65535, 65536, 69999]] = [1, 2, 3, 4]
    for fmt, matrix in [("csr", m), ("csc", m.T), ("bsr", m), ("relidx", m)]:
        stats = check_roundtrip(matrix, fmt, "fp32", block=(1, 1))
        if fmt != "relidx":
            assert sparse.parse(sparse.encode(matrix, fmt, block=(1, 1))).header.aux == 4
    assert sparse.parse(sparse.encode(m[:, :65536], "csr")).header.aux == 2
    assert stats.nnz == 4


def test_int8_and_fp16_decode_to_the_quantized_dense_tensor():
    rng = np.random.default_rng(2)
    m = random_sparse(rng, 20, 30, 0.3)
    m[0, 0] = 1e-5  # quantizes to zero in int8: not stored
    codes, scale = sparse.quantize(m, "int8")
    assert scale == pytest.approx(np.abs(m).max() / 127, rel=1e-6)
    manual = np.clip(np.rint(m.astype(np.float64) / scale), -127, 127).astype(np.float32)
    expected = manual * np.float32(scale)
    for fmt in FORMATS:
        out = sparse.decode(sparse.encode(m, fmt, "int8", block=(2, 3)))
        np.testing.assert_array_equal(out, expected)
        assert out[0, 0] == 0
        half = sparse.decode(sparse.encode(m, fmt, "fp16", block=(2, 3)))
        np.testing.assert_array_equal(half, m.astype(np.float16).astype(np.float32))
    nnz = sparse.analyze(m, "csr", "int8").nnz
    assert nnz == np.count_nonzero(manual) < np.count_nonzero(m)
    with pytest.raises(UsageError, match="fp16"):
        sparse.encode(np.full((1, 2), 1e6, np.float32), "csr", "fp16")
    with pytest.raises(UsageError, match="NaN"):
        sparse.encode(np.full((1, 2), np.nan, np.float32), "csr", "int8")


@SETTINGS
@given(matrices())
def test_csr_csc_bsr_arrays_match_scipy(case):
    m, options = case
    m = m + 0.0  # no -0.0: scipy treats it as zero
    br, bc = options["block"]
    oracles = {
        "csr": scipy.sparse.csr_array(m),
        "csc": scipy.sparse.csc_array(m),
        "bsr": scipy.sparse.bsr_array(m, blocksize=(br, bc)),
    }
    for fmt, ref in oracles.items():
        ref.sort_indices()
        parsed = sparse.parse(sparse.encode(m, fmt, block=(br, bc)))
        assert parsed.fmt == fmt and parsed.value_dtype == "fp32"
        np.testing.assert_array_equal(parsed.arrays["indptr"], ref.indptr)
        np.testing.assert_array_equal(parsed.arrays["indices"], ref.indices)
        if fmt != "bsr":  # scipy keeps all-zero blocks out too, but only compare values for
            values = parsed.arrays["values"].view(np.float32)  # the plain formats
            np.testing.assert_array_equal(values, ref.data)
        else:
            assert parsed.header.entries == ref.indices.size


def test_bitmask_layout_is_lsb_first_row_major():
    m = np.zeros((2, 8), np.float32)
    m[0, 0], m[0, 3], m[1, 7] = 1, 2, 3
    parsed = sparse.parse(sparse.encode(m, "bitmask"))
    blob = sparse.encode(m, "bitmask")
    assert blob[HEADER.size : HEADER.size + 2] == bytes([0b00001001, 0b10000000])
    np.testing.assert_array_equal(parsed.arrays["values"].view(np.float32), [1, 2, 3])


# relative-index CSR (Deep Compression) -------------------------------------------------


def reference_relidx(m: np.ndarray, bits: int) -> tuple[list[int], list[float]]:
    """Plain-Python Deep Compression encoder: one row-major stream, fillers on long runs."""
    runs, values, gap = [], [], 0
    limit = (1 << bits) - 1
    for v in m.ravel().tolist():
        if v == 0:
            gap += 1
            continue
        while gap > limit:
            runs.append(limit)
            values.append(0.0)
            gap -= limit + 1
        runs.append(gap)
        values.append(v)
        gap = 0
    return runs, values


def independent_fillers(m: np.ndarray, bits: int) -> int:
    positions = np.flatnonzero(m)
    gaps = np.diff(np.concatenate([[-1], positions])) - 1
    return int((gaps // 2**bits).sum())


@SETTINGS
@given(matrices())
def test_relidx_matches_a_reference_encoder(case):
    m, options = case
    m = m + 0.0
    bits = options["index_bits"]
    runs, values = reference_relidx(m, bits)
    parsed = sparse.parse(sparse.encode(m, "relidx", index_bits=bits))
    assert parsed.header.aux == bits
    assert parsed.arrays["runs"].tolist() == runs
    np.testing.assert_array_equal(parsed.arrays["values"].view(np.float32), values)
    stats = sparse.analyze(m, "relidx", index_bits=bits)
    assert stats.fillers == independent_fillers(m, bits) == len(runs) - np.count_nonzero(m)


def test_relidx_gaps_longer_than_the_index_range():
    gaps = [0, 15, 16, 31, 32, 100, 0]  # 4-bit runs: fillers 0, 0, 1, 1, 2, 6, 0
    row = []
    for g in gaps:
        row += [0.0] * g + [1.0]
    m = np.array([row + [0.0] * 40], np.float32)  # trailing zeros cost nothing
    stats = check_roundtrip(m, "relidx", "fp32", index_bits=4)
    assert stats.fillers == 10 == independent_fillers(m, 4)
    assert stats.entries == len(gaps) + 10
    assert stats.total_bytes == HEADER.size + math.ceil(17 * 4 / 8) + 17 * 4
    # row boundaries do not reset the run: the same stream reshaped costs the same
    assert sparse.size_bytes(m.reshape(-1, 1), "relidx") == stats.total_bytes


@pytest.mark.parametrize("bits", [4, 5])
def test_relidx_size_is_close_to_the_deep_compression_formula(bits):
    rng = np.random.default_rng(3)
    m = random_sparse(rng, 300, 64, 0.08)
    stats = sparse.analyze(m, "relidx", index_bits=bits)
    formula_bits = (stats.nnz + stats.fillers) * (32 + bits)
    assert abs(stats.total_bytes * 8 - formula_bits) <= 0.05 * formula_bits
    assert stats.fillers == independent_fillers(m, bits)


# EIE -----------------------------------------------------------------------------------


def reference_eie(m: np.ndarray, n_pe: int, bits: int):
    """Plain-Python EIE encoder: per PE, per column, (zero run, value) with padding zeros."""
    rows, cols = m.shape
    limit = (1 << bits) - 1
    colptr, runs, values = [], [], []
    for pe in range(n_pe):
        pointers, count = [0], 0
        local = m[pe::n_pe]
        for j in range(cols):
            gap = 0
            for v in local[:, j].tolist():
                if v == 0:
                    gap += 1
                    continue
                while gap > limit:
                    runs.append(limit)
                    values.append(0.0)
                    count += 1
                    gap -= limit + 1
                runs.append(gap)
                values.append(v)
                count += 1
                gap = 0
            pointers.append(count)
        colptr.extend(pointers)
    return colptr, runs, values


@SETTINGS
@given(matrices())
def test_eie_matches_a_reference_encoder(case):
    m, options = case
    m = m + 0.0
    n_pe, bits = options["n_pe"], options["run_bits"]
    colptr, runs, values = reference_eie(m, n_pe, bits)
    parsed = sparse.parse(sparse.encode(m, "eie", n_pe=n_pe, run_bits=bits))
    assert parsed.arrays["colptr"].tolist() == colptr
    assert parsed.arrays["runs"].tolist() == runs
    np.testing.assert_array_equal(parsed.arrays["values"].view(np.float32), values)
    assert sparse.analyze(m, "eie", n_pe=n_pe, run_bits=bits).fillers == len(runs) - len(
        np.flatnonzero(m)
    )


def test_eie_padding_zeros_on_runs_over_15():
    m = np.zeros((200, 3), np.float32)
    m[0, 0] = m[100, 0] = 1.0  # PE 0, local rows 0 and 50: run 49 -> 3 padding zeros
    m[199, 0] = 2.0  # PE 1, local row 99: run 99 -> 6 padding zeros
    m[17, 2] = 3.0  # PE 1, local row 8: run 8 -> none
    stats = check_roundtrip(m, "eie", "fp32", n_pe=2)
    assert stats.fillers == 9 and stats.entries == 13
    parsed = sparse.parse(sparse.encode(m, "eie", n_pe=2))
    assert parsed.arrays["runs"].tolist() == [0, 15, 15, 15, 1, 15, 15, 15, 15, 15, 15, 3, 8]
    assert parsed.arrays["colptr"].tolist() == [0, 5, 5, 5, 0, 7, 7, 8]
    pointer_bytes = 2 * 2 * (3 + 1)
    assert stats.total_bytes == HEADER.size + pointer_bytes + math.ceil(13 * 4 / 8) + 13 * 4


def test_eie_refuses_more_entries_than_16_bit_pointers_address():
    m = np.ones((70000, 1), np.float32)
    with pytest.raises(sparse.EIEPointerError, match="16-bit"):
        sparse.size_bytes(m, "eie", n_pe=1)
    assert sparse.size_bytes(m, "eie", n_pe=2) > 0


# errors --------------------------------------------------------------------------------


def test_bsr_block_must_divide_the_matrix():
    m = np.ones((6, 9), np.float32)
    with pytest.raises(sparse.BlockShapeError, match="does not divide") as info:
        sparse.encode(m, "bsr", block=(4, 3))
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)
    with pytest.raises(sparse.BlockShapeError):
        sparse.size_bytes(m, "bsr", block=(3, 2))
    check_roundtrip(m, "bsr", "fp32", block=(3, 3))


def test_bad_requests_are_usage_errors():
    m = np.ones((4, 4), np.float32)
    with pytest.raises(UsageError, match="valid formats: dense, csr"):
        sparse.encode(m, "coo")
    with pytest.raises(UsageError, match="value dtype"):
        sparse.encode(m, "csr", "int4")
    with pytest.raises(UsageError, match="index_bits"):
        sparse.encode(m, "relidx", index_bits=0)
    with pytest.raises(UsageError, match="run_bits"):
        sparse.encode(m, "eie", run_bits=17)
    with pytest.raises(UsageError, match="unknown sparse option"):
        sparse.encode(m, "csr", bits=3)
    with pytest.raises(UsageError, match="2-D"):
        sparse.encode(np.ones((2, 2, 2), np.float32), "csr")


def test_corrupt_blobs_raise_blob_errors():
    blob = sparse.encode(np.eye(5, dtype=np.float32), "csr")
    assert issubclass(sparse.BlobError, ModelError)
    with pytest.raises(sparse.BlobError, match="truncated"):
        sparse.decode(blob[:10])
    with pytest.raises(sparse.BlobError, match="bytes"):
        sparse.decode(blob[:-1])
    with pytest.raises(sparse.BlobError, match="magic"):
        sparse.decode(b"XXXX" + blob[4:])
    broken = bytearray(blob)
    broken[HEADER.size + 4] = 9  # an indptr entry out of order
    with pytest.raises(sparse.BlobError):
        sparse.decode(bytes(broken))


# 2-D views, blob directories -----------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 5), min_size=0, max_size=4),
    st.sampled_from(sparse.KINDS),
)
def test_views_round_trip(shape, kind):
    a = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    m = sparse.to_matrix(a, kind)
    assert m.ndim == 2 and m.shape == sparse.matrix_shape(a.shape, kind)
    np.testing.assert_array_equal(sparse.from_matrix(m, a.shape, kind), a)
    if len(shape) >= 2:
        rows = shape[-1] if kind == "fc_t" else shape[0]
        assert m.shape[0] == rows


def test_view_orientation():
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    np.testing.assert_array_equal(sparse.to_matrix(w, "conv")[1], w[1].ravel())
    b = np.arange(6, dtype=np.float32).reshape(2, 3)  # MatMul [in=2, out=3]
    np.testing.assert_array_equal(sparse.to_matrix(b, "fc_t"), b.T)
    np.testing.assert_array_equal(sparse.to_matrix(b, "fc"), b)


def model_tensors(rng) -> dict[str, tuple[np.ndarray, str]]:
    conv = random_sparse(rng, 8, 27, 0.2).reshape(8, 3, 3, 3)
    fc = random_sparse(rng, 10, 64, 0.05)
    matmul = random_sparse(rng, 64, 12, 0.1)
    batched = random_sparse(rng, 2 * 5, 6, 0.5).reshape(2, 5, 6)
    return {
        "conv1/weight:0": (conv, "conv"),
        "fc.weight": (fc, "fc"),
        "MatMul_B": (matmul, "fc_t"),
        "batched": (batched, "fc_t"),
        "bias": (random_sparse(rng, 1, 7, 0.5).ravel().astype(np.float64), "fc"),
    }


def test_write_blobs_and_load(tmp_path):
    rng = np.random.default_rng(4)
    tensors = model_tensors(rng)
    out = tmp_path / "blobs"
    formats = [*sparse.DEFAULT_FORMATS, "bsr"]
    manifest = sparse.write_blobs(out, tensors, formats, block=(2, 1))
    on_disk = json.loads((out / sparse.MANIFEST).read_text())
    assert on_disk == manifest
    for name, (array, _) in tensors.items():
        entry = manifest["tensors"][name]
        assert entry["shape"] == list(array.shape) and entry["dtype"] == array.dtype.name
        assert entry["nnz"] == np.count_nonzero(array)
        sizes = {f: info["bytes"] for f, info in entry["formats"].items()}
        assert entry["best"] == min(sizes, key=sizes.get)
        assert sizes[entry["best"]] == min(sizes.values())
        for info in entry["formats"].values():
            assert (out / info["file"]).stat().st_size == info["bytes"]
            assert "/" not in info["file"] and ":" not in info["file"]
    assert manifest["tensors"]["fc.weight"]["formats"]["relidx"]["bytes"] == sparse.size_bytes(
        tensors["fc.weight"][0], "relidx", index_bits=5
    )
    assert manifest["tensors"]["conv1/weight:0"]["formats"]["relidx"]["bytes"] == (
        sparse.size_bytes(tensors["conv1/weight:0"][0].reshape(8, 27), "relidx", index_bits=4)
    )
    assert "bsr" in manifest["tensors"]["bias"]["skipped"]  # block 2x1 cannot divide [1, 7]
    loaded = sparse.load(out)
    assert list(loaded) == list(tensors)
    for fmt in formats:
        if fmt == "bsr":
            continue
        by_fmt = sparse.load(out, fmt)
        for name, (array, _) in tensors.items():
            assert by_fmt[name].dtype == array.dtype and by_fmt[name].shape == array.shape
            np.testing.assert_array_equal(by_fmt[name], array)
            np.testing.assert_array_equal(loaded[name], array)
    np.testing.assert_array_equal(bits_of(loaded["fc.weight"]), bits_of(tensors["fc.weight"][0]))


def test_write_blobs_is_deterministic_and_replaces_its_own_output(tmp_path):
    rng = np.random.default_rng(5)
    tensors = model_tensors(rng)
    a, b = tmp_path / "a", tmp_path / "b"
    sparse.write_blobs(a, tensors, value_dtype="int8")
    sparse.write_blobs(b, tensors, value_dtype="int8")
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    loaded = sparse.load(a)
    for name, (array, kind) in tensors.items():
        expected = sparse.quantized_dense(sparse.to_matrix(array, kind), "int8")
        got = sparse.to_matrix(loaded[name], kind)
        np.testing.assert_array_equal(got, expected.astype(array.dtype))
    sparse.write_blobs(a, {"only": tensors["fc.weight"]}, ["csr"])  # replaces, no stale files
    assert sorted(p.name for p in a.iterdir()) == ["manifest.json", "only.csr.bin"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_blobs_refuses_foreign_directories_and_bad_requests(tmp_path):
    tensors = {"w": (np.eye(4, dtype=np.float32), "fc")}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        sparse.write_blobs(foreign, tensors)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(OutputError, match="does not exist"):
        sparse.write_blobs(tmp_path / "missing" / "out", tensors)
    with pytest.raises(UsageError, match="valid formats"):
        sparse.write_blobs(tmp_path / "x", tensors, ["csr", "zip"])
    with pytest.raises(UsageError, match="kind"):
        sparse.write_blobs(tmp_path / "x", {"w": (np.eye(4), "lstm")})
    with pytest.raises(sparse.BlockShapeError):
        sparse.write_blobs(tmp_path / "x", {"w": (np.eye(3), "fc")}, ["bsr"], strict=True)
    with pytest.raises(UsageError, match="no requested sparse format"):
        sparse.write_blobs(tmp_path / "x", {"w": (np.eye(3), "fc")}, ["bsr"])
    with pytest.raises(UsageError, match="float"):
        sparse.write_blobs(tmp_path / "x", {"w": (np.eye(3, dtype=np.int64), "fc")})
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["foreign"]


def test_load_detects_tampering(tmp_path):
    out = tmp_path / "blobs"
    manifest = sparse.write_blobs(out, {"w": (np.eye(4, dtype=np.float32), "fc")}, ["csr"])
    path = out / manifest["tensors"]["w"]["formats"]["csr"]["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(sparse.BlobError, match="sha256"):
        sparse.load(out)
    with pytest.raises(sparse.BlobError, match="no 'relidx' blob"):
        sparse.load(out, "relidx")
    with pytest.raises(sparse.BlobError, match="manifest"):
        sparse.load(tmp_path)
