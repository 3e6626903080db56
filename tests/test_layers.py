"""The house's import contracts (pyproject.toml, [tool.importlinter]) hold on the tree and catch a break:
an upward import (also one hidden inside a function), torch on the runtime path, a cycle between siblings.

Each break is written into a copy of the package, so the check is the real ``lint-imports`` on real code.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (the test extra)")


def _lint_imports(root):
    """(exit code, report) of lint-imports run on the package under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def package_copy(tmp_path):
    shutil.copytree(
        ROOT / "retinamask", tmp_path / "retinamask", ignore=shutil.ignore_patterns("__pycache__", "assets")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path, code):
    path.write_text(path.read_text() + "\n\n" + code + "\n")


def test_the_tree_keeps_every_contract():
    code, report = _lint_imports(ROOT)
    assert code == 0, report
    assert "0 broken" in report


def test_an_upward_import_inside_a_function_is_caught(package_copy):
    # the runtime reaching up into the apps layer, hidden in a function body
    _append(
        package_copy / "retinamask/runtime/infer.py",
        "def _sneaky():\n    from retinamask.apps.onnx_predictor import OnnxPredictor\n\n    return OnnxPredictor",
    )
    code, report = _lint_imports(package_copy)
    assert code != 0
    assert "retinamask.runtime is not allowed to import retinamask.apps" in report
    assert "retinamask.runtime.infer -> retinamask.apps.onnx_predictor" in report


def test_torch_on_the_runtime_path_is_caught(package_copy):
    _append(
        package_copy / "retinamask/decode/outputs.py",
        "def _to_tensor(x):\n    import torch\n\n    return torch.as_tensor(x)",
    )
    code, report = _lint_imports(package_copy)
    assert code != 0
    assert "retinamask.decode.outputs -> torch" in report


def test_a_cycle_between_siblings_is_caught(package_copy):
    # ops/nms.py and ops/masks.py importing each other: allowed by the layers, refused as a cycle
    _append(
        package_copy / "retinamask/ops/nms.py",
        "def _paste():\n    from retinamask.ops import masks\n\n    return masks",
    )
    _append(
        package_copy / "retinamask/ops/masks.py", "def _nms():\n    from retinamask.ops import nms\n\n    return nms"
    )
    code, report = _lint_imports(package_copy)
    assert code != 0
    assert "No cycles are allowed in retinamask.ops" in report
