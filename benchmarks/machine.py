"""What a benchmark ran on: the CPU (model, the flags that decide speed, its class), the package
versions and the command, for a report's head. The CPU comes from :mod:`retinamask.core.cpu`."""

import datetime
import os
import platform
import sys
from pathlib import Path

from retinamask.core.cpu import describe_cpu_class, logical_cpus, physical_cores, this_cpu

PACKAGES = (
    "retinamask",
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "openvino",
    "onnxslim",
    "numpy",
    "opencv-python-headless",
    "pillow",
    "pycocotools",
    "faster-coco-eval",
)


def cpu_model():
    """The CPU's model name (e.g. 'AMD EPYC 9R14 Processor'), else what ``platform`` knows."""
    return this_cpu().model_name or platform.processor() or platform.machine()


def cpu_flags():
    """The flags of this CPU that decide speed, sorted by name."""
    return sorted(this_cpu().speed_flags)


def package_versions():
    """python and each of :data:`PACKAGES` -> its installed version (None where not installed)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def utc_now():
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def load_average():
    """(1, 5, 15 min) load averages, or None where the system has none."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def command_line():
    """This run's arguments as typed: ``-m benchmarks.NAME`` for a module run, then the flags."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    script = ["-m", spec.name] if spec is not None and spec.name else sys.argv[:1]
    return [*script, *sys.argv[1:]]


def environment(threads):
    """The head of a report: date, command, CPU (model, flags, class, CPUs, cores), threads, the load
    average at the start and the package versions."""
    return {
        "date": utc_now(),
        "command": " ".join([Path(sys.executable).name, *command_line()]),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_class": describe_cpu_class(),
        "logical_cpus": logical_cpus(),
        "physical_cores": physical_cores(),
        "threads": threads,
        "load_average_at_start": load_average(),
        "versions": package_versions(),
    }
