"""The CPU this process runs on, read once, and the one rule that puts it in a class.

:class:`CpuInfo` holds what /proc/cpuinfo says about the first processor: vendor, model name and
its feature flags; its properties name the flags that decide which runtime and precision are
fast (AVX2, AVX-512, VNNI, bf16, AMX, fp16). :func:`cpu_class` is the rule the measurements are
filed under (benchmarks/RESULTS.md, one section per class) and that ``--backend auto`` decides by
(runtime/auto_backend.py):

- **A**: AVX-512 with VNNI (``avx512f`` + ``avx512_vnni``). Measured: AMD EPYC with avx512_bf16
  too. bf16 is not required: ``--backend auto`` has chosen by these two flags since it exists, and
  an Intel Xeon with them (and bf16, fp16) is class A as well (../shared/facts/cpu-classes.md).
- **B**: AVX2 without them. Measured: AMD EPYC, avx2 only.
- **?**: neither, or /proc/cpuinfo unreadable.

The rule is the ordered table :data:`CLASS_RULES`: the first class whose flags the CPU has all of.
A finer split (vendor, microarchitecture, bf16, AMX, fp16) adds rows there and fields here.
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
    "avx512_fp16",
)
# What a class's one-line description shows (``describe_cpu_class``).
CLASS_DESCRIPTION_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
# (class, the flags a CPU of that class has all of), checked in order; the first match wins.
CLASS_RULES = (
    ("A", frozenset({"avx512f", "avx512_vnni"})),
    ("B", frozenset({"avx2"})),
)
UNKNOWN_CLASS = "?"


@dataclass(frozen=True)
class CpuInfo:
    """vendor: /proc/cpuinfo's ``vendor_id`` (e.g. "AuthenticAMD", "GenuineIntel"); model_name: its
    ``model name`` (e.g. "AMD EPYC 9R14 Processor"); flags: every feature flag. Empty where unknown."""

    vendor: str = ""
    model_name: str = ""
    flags: frozenset = field(default_factory=frozenset)

    @classmethod
    def from_cpuinfo_text(cls, text):
        """The first processor of a /proc/cpuinfo text (every processor of a machine is the same kind)."""
        found = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                found.setdefault(key.strip(), value.strip())
        return cls(found.get("vendor_id", ""), found.get("model name", ""), frozenset(found.get("flags", "").split()))

    @classmethod
    def from_flags(cls, flags, vendor="", model_name=""):
        return cls(vendor, model_name, frozenset(flags))

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
    """'A', 'B' or '?' (see the module docstring) for ``info`` (default: this machine)."""
    info = this_cpu() if info is None else info
    for name, required in CLASS_RULES:
        if required <= info.flags:
            return name
    return UNKNOWN_CLASS


def describe_cpu_class(info=None):
    """E.g. 'class A (avx2 avx512f avx512_vnni avx512_bf16)' or 'class B (avx2 only)'."""
    info = this_cpu() if info is None else info
    klass = cpu_class(info)
    if klass == "B":
        return "class B (avx2 only)"
    shown = [flag for flag in CLASS_DESCRIPTION_FLAGS if flag in info.flags]
    return f"class {klass} ({' '.join(shown) or 'no avx2'})"


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
