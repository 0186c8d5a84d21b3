"""Accelerator profiles: on-chip memory, storage format and energy constants of a target.

A profile is all the estimator knows about a chip. The built-ins share Han et al.'s 45 nm
access energies (5 pJ per 32-bit SRAM access, 640 pJ per 32-bit DRAM access; NIPS 2015
Fig. 1, from Horowitz ISSCC 2014) so that they differ only in capacity, value type and
weight format: they are yardsticks for "does it fit, and what does missing cost", not
measured energies of those chips. Custom profiles come from TOML files (`load_profile`);
every key is documented in docs/estimate.md.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from onnxprune.errors import UsageError
from onnxprune.sparse import FORMATS, VALUE_TYPES

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 without tomli
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

KiB = 1024
MiB = 1024 * KiB
# Han 2015 / Horowitz 2014, 45 nm: one MAC = one multiply + one add of the value type.
HAN_PJ_PER_MAC = {"fp32": 4.6, "fp16": 1.5, "int8": 0.23}  # 3.7+0.9, 1.1+0.4, 0.2+0.03
HAN_PJ_SRAM = 5.0  # 32-bit SRAM access (Horowitz: 10 pJ per 64-bit access of an 8 KB SRAM)
HAN_PJ_DRAM = 640.0  # 32-bit DRAM access
HAN_SOURCE = (
    "Han et al., NIPS 2015, Fig. 1 (Horowitz, ISSCC 2014), 45 nm: fp32 MAC 3.7+0.9 pJ, "
    "fp16 1.1+0.4, int8 0.2+0.03; 32-bit SRAM access 5 pJ, 32-bit DRAM access 640 pJ"
)


@dataclass(frozen=True)
class Profile:
    """What the estimator assumes about an accelerator (see docs/estimate.md for each key).

    sram_bytes is the weight SRAM of the whole chip; with n_pe > 1 each PE owns an equal
    slice (sram_bytes // n_pe) and, for the interleaved `eie` format, fit is checked per PE.
    """

    name: str
    dtype: str  # arithmetic and stored value type: fp32, fp16, int8
    sram_bytes: int
    word_bits: int  # width of the access the pj_*_access figures are for
    pj_per_mac: Mapping[str, float]
    pj_sram_access: float
    pj_dram_access: float
    skip_zeros: bool = False  # zero weights cost no MAC (only stored fillers do)
    sparse_format: str = "dense"  # the sparse layout the chip reads
    dense_fallback: bool = True  # store a layer dense when that is smaller
    n_pe: int = 1
    value_bits: int | None = None  # bits per stored value; None: the dtype's width
    index_bits: int | None = None  # relidx run field; None: 4 for conv, 5 for fc layers
    run_bits: int = 4  # eie zero-run field
    block: tuple[int, int] = (4, 1)  # bsr block
    pointer_bits: int = 16  # eie column pointers
    pointer_sram_bytes: int | None = None  # eie pointers' own SRAM; None: in the weight SRAM
    act_sram_bytes: int | None = None  # activation buffer; None: activations assumed on chip
    description: str = ""
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # informational (e.g. macs)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def mac_pj(self) -> float:
        return float(self.pj_per_mac[self.dtype])

    @property
    def bits_per_value(self) -> int:
        return self.value_bits or VALUE_TYPES[self.dtype].nbytes * 8

    @property
    def bank_bytes(self) -> int:
        """Weight SRAM of one PE."""
        return self.sram_bytes // self.n_pe

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["pj_per_mac"] = dict(self.pj_per_mac)
        out["block"] = list(self.block)
        out["extra"] = dict(self.extra)
        out["pj_per_mac_used"] = self.mac_pj
        out["bits_per_value"] = self.bits_per_value
        out["sram_bytes_per_pe"] = self.bank_bytes
        return out


def _fail(profile: str, message: str) -> UsageError:
    return UsageError(f"accelerator profile '{profile}': {message}")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _validate(p: Profile) -> None:
    def check_int(key: str, value: object, low: int, high: int | None = None) -> None:
        if not _is_int(value) or value < low or (high is not None and value > high):
            bound = f"in {low}..{high}" if high is not None else f">= {low}"
            raise _fail(p.name, f"{key} must be an integer {bound}, got {value!r}")

    if p.dtype not in VALUE_TYPES:
        raise _fail(p.name, f"dtype must be one of {', '.join(VALUE_TYPES)}, got {p.dtype!r}")
    check_int("sram_bytes", p.sram_bytes, 0)
    check_int("word_bits", p.word_bits, 1)
    check_int("n_pe", p.n_pe, 1, 1 << 16)
    check_int("run_bits", p.run_bits, 1, 16)
    check_int("pointer_bits", p.pointer_bits, 1, 32)
    for key in ("value_bits", "index_bits"):
        if getattr(p, key) is not None:
            check_int(key, getattr(p, key), 1, 64 if key == "value_bits" else 16)
    for key in ("pointer_sram_bytes", "act_sram_bytes"):
        if getattr(p, key) is not None:
            check_int(key, getattr(p, key), 0)
    if not isinstance(p.pj_per_mac, Mapping) or not p.pj_per_mac:
        raise _fail(p.name, "pj_per_mac must be a table of pJ per MAC by dtype, e.g. fp32 = 4.6")
    unknown = sorted(set(p.pj_per_mac) - set(VALUE_TYPES))
    if unknown:
        raise _fail(p.name, f"pj_per_mac has unknown dtype(s) {unknown}; valid: fp32, fp16, int8")
    if p.dtype not in p.pj_per_mac:
        raise _fail(p.name, f"pj_per_mac has no entry for the profile's dtype '{p.dtype}'")
    energies = {f"pj_per_mac.{k}": v for k, v in p.pj_per_mac.items()}
    energies.update(pj_sram_access=p.pj_sram_access, pj_dram_access=p.pj_dram_access)
    for key, value in energies.items():
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise _fail(p.name, f"{key} must be a finite number of pJ >= 0, got {value!r}")
    for key in ("skip_zeros", "dense_fallback"):
        if not isinstance(getattr(p, key), bool):
            raise _fail(p.name, f"{key} must be true or false, got {getattr(p, key)!r}")
    if p.sparse_format not in FORMATS:
        raise _fail(
            p.name,
            f"sparse_format must be one of {', '.join(FORMATS)}, got {p.sparse_format!r}",
        )
    block = tuple(p.block) if isinstance(p.block, list | tuple) else ()
    if len(block) != 2 or not all(_is_int(b) and b >= 1 for b in block):
        raise _fail(p.name, f"block must be two positive integers, got {p.block!r}")
    object.__setattr__(p, "block", (int(block[0]), int(block[1])))
    object.__setattr__(p, "pj_per_mac", {k: float(v) for k, v in p.pj_per_mac.items()})


KEYS = tuple(f.name for f in fields(Profile))
REQUIRED = ("dtype", "sram_bytes", "word_bits", "pj_per_mac", "pj_sram_access", "pj_dram_access")
_HAN = {
    "word_bits": 32,
    "pj_per_mac": HAN_PJ_PER_MAC,
    "pj_sram_access": HAN_PJ_SRAM,
    "pj_dram_access": HAN_PJ_DRAM,
}

BUILTIN: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="generic-45nm", dtype="fp32", sram_bytes=1 * MiB, **_HAN,
            skip_zeros=True, sparse_format="relidx",
            description="Han 2015's argument as a chip: a 45 nm engine that reads Deep "
            "Compression relative-index weights and skips zeros; SRAM size is an option "
            "(--sram-bytes, default 1 MiB, the largest SRAM in Horowitz's table)",
            source=HAN_SOURCE,
        ),
        Profile(
            name="eie-64pe", dtype="fp16", sram_bytes=64 * 128 * KiB, **_HAN,
            skip_zeros=True, sparse_format="eie", dense_fallback=False, n_pe=64,
            value_bits=4, run_bits=4, pointer_bits=16, pointer_sram_bytes=64 * 32 * KiB,
            act_sram_bytes=64 * 2 * KiB,
            description="EIE: 64 PEs, each 128 KiB sparse-matrix SRAM (8-bit entries: 4-bit "
            "shared-weight index + 4-bit zero run, interleaved CSC with padding zeros), "
            "32 KiB of 16-bit column pointers and 2 KiB of activations; 16-bit fixed-point "
            "MACs, costed with the fp16 figure (no 16-bit integer figure in the sources)",
            source="Han et al., EIE, ISCA 2016 (memory sizes, format); " + HAN_SOURCE,
            extra={"macs_per_cycle": 64},
        ),
        Profile(
            name="eyeriss-v1", dtype="fp16", sram_bytes=108 * KiB, **_HAN,
            description="Eyeriss v1: 168 PEs, 108 KiB global buffer treated as weight storage "
            "(the chip uses it mostly for feature maps: an optimistic fit), 16-bit fixed point "
            "costed with the fp16 figure; zero activations are gated, zero weights are not",
            source="Chen et al., JSSC 2017 (3rd-party figures); " + HAN_SOURCE,
            extra={"pes": 168},
        ),
        Profile(
            name="nvdla-small", dtype="int8", sram_bytes=128 * KiB, **_HAN,
            description="NVDLA nv_small: 64 INT8 MACs, 128 KiB convolution buffer (shared with "
            "feature maps on the chip; all of it counted as weight storage here)",
            source="NVDLA hw spec nv_small; " + HAN_SOURCE,
            extra={"macs_per_cycle": 64},
        ),
        Profile(
            name="nvdla-large", dtype="int8", sram_bytes=512 * KiB, **_HAN,
            description="NVDLA nv_large: 2048 INT8 MACs, 512 KiB convolution buffer (shared "
            "with feature maps on the chip; all of it counted as weight storage here)",
            source="NVDLA hw spec nv_large; " + HAN_SOURCE,
            extra={"macs_per_cycle": 2048},
        ),
        Profile(
            name="edge-tpu", dtype="int8", sram_bytes=8 * MiB, **_HAN,
            description="Google Edge TPU: 4 TOPS INT8, ~8 MB on-chip parameter cache "
            "(3rd-party figure); dense int8 weights",
            source="Coral documentation (3rd-party cache size); " + HAN_SOURCE,
        ),
    )
}  # fmt: skip


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.I)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": KiB, "mib": MiB, "gib": 1 << 30}


def parse_size(value: object, what: str = "size") -> int:
    """Bytes from an int or a string like '512KiB', '2MB' (KB = 1000, KiB = 1024)."""
    if _is_int(value):
        if value < 0:
            raise UsageError(f"{what} must be >= 0 bytes, got {value}")
        return int(value)
    match = _SIZE_RE.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise UsageError(
            f"{what} must be a byte count such as 131072, '128KiB' or '2MB', got {value!r}"
        )
    number, unit = float(match.group(1)), (match.group(2) or "B").lower()
    size = number * _UNITS[unit]
    if size != int(size):
        raise UsageError(f"{what} {value!r} is not a whole number of bytes")
    return int(size)


def load_profile(
    spec: str | Path | Profile,
    *,
    sram_bytes: int | str | None = None,
    dtype: str | None = None,
) -> Profile:
    """A built-in profile by name or a TOML file by path, with optional overrides."""
    if isinstance(spec, Profile):
        profile = spec
    elif str(spec) in BUILTIN:
        profile = BUILTIN[str(spec)]
    elif str(spec).lower().endswith(".toml") or Path(str(spec)).is_file():
        profile = profile_from_toml(Path(spec))
    else:
        raise UsageError(
            f"unknown accelerator '{spec}'; built-in profiles: {', '.join(BUILTIN)} "
            "(or give a .toml profile file)"
        )
    changes: dict[str, Any] = {}
    if sram_bytes is not None:
        changes["sram_bytes"] = parse_size(sram_bytes, "--sram-bytes")
    if dtype is not None:
        changes["dtype"] = dtype
    return replace(profile, **changes) if changes else profile


def profile_from_toml(path: Path) -> Profile:
    """Read a TOML profile; `base = "NAME"` starts from a built-in and overrides its keys."""
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise UsageError(
            "reading accelerator TOML files needs Python 3.11+ (tomllib) or the 'tomli' "
            "package: pip install tomli"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"accelerator profile file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read accelerator profile {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"accelerator profile {path} is not valid TOML: {exc}") from exc
    return profile_from_mapping(data, default_name=path.stem, where=str(path))


def profile_from_mapping(
    data: Mapping[str, Any], default_name: str = "custom", where: str = "profile"
) -> Profile:
    """A profile from a parsed TOML table, with one clear error per problem."""
    data = dict(data)
    base_name = data.pop("base", None)
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {unknown}; valid keys: base, {', '.join(KEYS)}")
    values: dict[str, Any] = {}
    if base_name is not None:
        if base_name not in BUILTIN:
            raise UsageError(
                f"{where}: base = {base_name!r} is not a built-in profile; "
                f"valid: {', '.join(BUILTIN)}"
            )
        values = {f.name: getattr(BUILTIN[base_name], f.name) for f in fields(Profile)}
    else:
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise UsageError(
                f"{where}: missing required key(s) {missing} (or set base = "
                '"<built-in name>" to inherit them); see docs/estimate.md'
            )
    values.update(data)
    values["name"] = str(data.get("name", default_name))
    for key in ("sram_bytes", "pointer_sram_bytes", "act_sram_bytes"):
        if values.get(key) is not None:
            value = values[key]
            if isinstance(value, numbers.Real) and not _is_int(value) and value < 0:
                raise UsageError(f"{where}: {key} must be >= 0 bytes, got {value}")
            values[key] = parse_size(value, f"{where}: {key}")
    if isinstance(values.get("block"), list):
        values["block"] = tuple(values["block"])
    try:
        return Profile(**values)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
