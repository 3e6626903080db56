"""The CPU this process runs on, read once, and the one rule that puts it in a class.

:class:`CpuInfo` holds what /proc/cpuinfo says about the first processor: vendor, model name and
its feature flags; its properties name the flags that decide which runtime and precision are
fast. :func:`cpu_class` files a CPU under the first row of :data:`CLASS_RULES` that it fits:
the vendor and microarchitecture family and the flags that decide speed -- AVX2, AVX-512, VNNI,
avx512_bf16 with or without AMX tiles, avx512_fp16. Measurements are filed per class
(benchmarks/RESULTS.md) and ``--backend auto`` decides by them (runtime/auto_backend.py).
On AMD the ``cpu family`` names the microarchitecture (25 = 0x19: Zen 3 / Zen 4, 26 = 0x1A: Zen 5);
every recent Intel part is family 6, where the flags (avx512_fp16, AMX) tell the generation.

- **A**: AMD family 25 or 26 (Zen 4, Zen 5: the two measured), AVX-512 + VNNI + avx512_bf16.
  Measured on both: bf16 ~1.9-2x faster than fp32.
- **B**: AMD, AVX2 only. Measured: no bf16 in OpenVINO; AVX2 INT8 kernels.
- **C**: Intel, AVX-512 + VNNI + avx512_bf16 + avx512_fp16, no AMX exposed (a Xeon of the
  Sapphire Rapids family as a VM shows it). Measured (issue 17): bf16 ~1.85x *slower* than fp32.
- **D**: Intel with AMX bf16 + int8 tiles (``amx_bf16``), no ``amx_fp16`` (Sapphire / Emerald Rapids:
  most rented Intel servers). Measured 2026-12-07 (issue 30): bf16 4.9x faster than fp32, INT8 on
  OpenVINO 2.7x ONNX Runtime's, fp16 0.69x fp32 (no fp16 tiles).
- **G**: AMX with fp16 tiles (``amx_fp16``, Granite Rapids): unmeasured; figures of class D stand in.
- **E**: any other AVX-512 + VNNI CPU (an AMD of another family too): unmeasured; figures of
  class A stand in.
- **F**: any other AVX2 CPU: unmeasured; figures of class B stand in.
- **?**: no AVX2, or /proc/cpuinfo unreadable.

An unmeasured class is never assumed fast in reduced precision: ``--backend auto`` runs what is
measured faster in fp32 on its stand-in class and says the class is unmeasured.
"""

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# The flags that decide speed, in the order a machine's description lists them.
SPEED_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_tile",
    "amx_int8",
    "amx_fp16",
    "avx512_fp16",
)
# What a class's one-line description shows (``describe_cpu_class``).
CLASS_DESCRIPTION_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")
AMD, INTEL = "AuthenticAMD", "GenuineIntel"


@dataclass(frozen=True)
class CpuClass:
    """One row of :data:`CLASS_RULES`. A CPU fits when it has every flag of ``requires``, none of
    ``excludes`` and (where set) the ``vendor`` and one of the ``families``. ``stand_in``: "" for a
    measured class, else the measured class whose figures stand in for it."""

    name: str
    summary: str
    requires: frozenset
    vendor: str = ""
    excludes: frozenset = frozenset()
    stand_in: str = ""
    families: frozenset = frozenset()  # the measured ``cpu family`` values; empty: any

    @property
    def measured(self):
        return not self.stand_in

    def fits(self, info):
        return (
            self.requires <= info.flags
            and not (self.excludes & info.flags)
            and self.vendor in ("", info.vendor)
            and (not self.families or info.family in self.families)
        )


_AVX512_VNNI = frozenset({"avx2", "avx512f", "avx512_vnni"})
# Checked in order; the first class a CPU fits wins.
CLASS_RULES = (
    CpuClass("G", "AMX with fp16 tiles", frozenset({"avx512f", "amx_tile", "amx_fp16"}), stand_in="D"),
    CpuClass(
        "D",
        "Intel, AMX bf16 + int8, no amx_fp16",
        frozenset({"avx512f", "amx_tile", "amx_bf16"}),
        vendor=INTEL,
        excludes=frozenset({"amx_fp16"}),
    ),
    CpuClass(
        "C",
        "Intel, AVX-512 + VNNI + bf16 + fp16, no AMX",
        _AVX512_VNNI | {"avx512_bf16", "avx512_fp16"},
        vendor=INTEL,
        excludes=frozenset({"amx_tile"}),
    ),
    CpuClass(
        "A",
        "AMD Zen 4 / Zen 5, AVX-512 + VNNI + bf16",
        _AVX512_VNNI | {"avx512_bf16"},
        vendor=AMD,
        families=frozenset({25, 26}),
    ),
    CpuClass("E", "AVX-512 + VNNI", frozenset({"avx512f", "avx512_vnni"}), stand_in="A"),
    CpuClass("B", "AMD, AVX2 only", frozenset({"avx2"}), vendor=AMD, excludes=frozenset({"avx512_vnni"})),
    CpuClass("F", "AVX2", frozenset({"avx2"}), stand_in="B"),
)
CLASSES = {rule.name: rule for rule in CLASS_RULES}
UNKNOWN_CLASS = "?"


@dataclass(frozen=True)
class CpuInfo:
    """vendor: /proc/cpuinfo's ``vendor_id`` (e.g. "AuthenticAMD", "GenuineIntel"); model_name: its
    ``model name`` (e.g. "AMD EPYC 9R14 Processor"); flags: every feature flag; family: its
    ``cpu family`` (e.g. 26). Empty (None) where unknown."""

    vendor: str = ""
    model_name: str = ""
    flags: frozenset = field(default_factory=frozenset)
    family: int | None = None

    @classmethod
    def from_cpuinfo_text(cls, text):
        """The first processor of a /proc/cpuinfo text (every processor of a machine is the same kind)."""
        found = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                found.setdefault(key.strip(), value.strip())
        family = found.get("cpu family", "")
        return cls(
            found.get("vendor_id", ""),
            found.get("model name", ""),
            frozenset(found.get("flags", "").split()),
            int(family) if family.isdigit() else None,
        )

    @classmethod
    def from_flags(cls, flags, vendor="", model_name="", family=None):
        return cls(vendor, model_name, frozenset(flags), family)

    def has(self, *flags):
        return all(flag in self.flags for flag in flags)

    @property
    def avx2(self):
        return self.has("avx2")

    @property
    def avx512(self):
        return self.has("avx512f")

    @property
    def vnni(self):
        """INT8 dot products without saturation: AVX-512 VNNI or its AVX (VEX) form."""
        return self.has("avx512_vnni") or self.has("avx_vnni")

    @property
    def avx512_bf16(self):
        return self.has("avx512_bf16")

    @property
    def amx(self):
        """Tile matrix units (AMX), where the kernel exposes them."""
        return self.has("amx_tile")

    @property
    def avx512_fp16(self):
        return self.has("avx512_fp16")

    @property
    def speed_flags(self):
        """The flags of :data:`SPEED_FLAGS` this CPU has, in that order."""
        return tuple(flag for flag in SPEED_FLAGS if flag in self.flags)


def read_cpu_info(path=CPUINFO):
    """:class:`CpuInfo` of ``path`` (a /proc/cpuinfo text); an empty one where it cannot be read."""
    try:
        return CpuInfo.from_cpuinfo_text(Path(path).read_text())
    except OSError:
        return CpuInfo()


@lru_cache(maxsize=1)
def this_cpu():
    """This machine's :class:`CpuInfo`, read once."""
    return read_cpu_info()


def cpu_class(info=None):
    """The name of the first :data:`CLASS_RULES` row ``info`` (default: this machine) fits, else '?'."""
    rule = cpu_class_rule(info)
    return UNKNOWN_CLASS if rule is None else rule.name


def cpu_class_rule(info=None):
    """The :class:`CpuClass` ``info`` (default: this machine) fits, or None."""
    info = this_cpu() if info is None else info
    return next((rule for rule in CLASS_RULES if rule.fits(info)), None)


def measured_class(info=None):
    """The class whose measurements apply to ``info``: its own, or its stand-in's; '?' for none."""
    rule = cpu_class_rule(info)
    return UNKNOWN_CLASS if rule is None else (rule.stand_in or rule.name)


def describe_cpu_class(info=None):
    """E.g. 'class A (AMD family 26, avx2 avx512f avx512_vnni avx512_bf16)', 'class B (avx2 only)', or
    for an unmeasured class 'class E (avx2 avx512f avx512_vnni; unmeasured, as class A)'."""
    info = this_cpu() if info is None else info
    rule = cpu_class_rule(info)
    if rule is None:
        return f"class {UNKNOWN_CLASS} (no avx2)"
    shown = [flag for flag in CLASS_DESCRIPTION_FLAGS if flag in info.flags]
    flags = "avx2 only" if shown == ["avx2"] else " ".join(shown)
    if rule.name == "C":
        flags = f"Intel, {flags}, no amx"
    elif info.vendor == INTEL:
        flags = f"Intel, {flags}"
    elif info.vendor == AMD and info.family is not None:
        flags = f"AMD family {info.family}, {flags}"
    unmeasured = f"; unmeasured, as class {rule.stand_in}" if rule.stand_in else ""
    return f"class {rule.name} ({flags}{unmeasured})"


def physical_cores():
    """Physical cores among the CPUs this process may run on (SMT siblings counted once).

    Read from /sys topology (core_id, physical_package_id); falls back to the CPU count.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                (
                    topology.joinpath("physical_package_id").read_text().strip(),
                    topology.joinpath("core_id").read_text().strip(),
                )
            )
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def logical_cpus():
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
