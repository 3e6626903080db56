"""Shared fixtures. Tests that need ../shared skip with a reason where it is absent
(a user's clone); .ci/run sets RETINAMASK_REQUIRE_SHARED=1 so that CI fails instead."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RETINAMASK_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"


def _require_shared():
    if not REFERENCE.is_dir():
        msg = (
            f"{REFERENCE} is absent: the reference data from the original RetinaMask ships with CI, "
            "not with the repository"
        )
        if os.environ.get("RETINAMASK_REQUIRE_SHARED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return REFERENCE


@pytest.fixture(scope="session")
def reference_dir():
    """../shared/reference (skips, or fails under CI, where absent)."""
    return _require_shared()


@pytest.fixture(scope="session")
def reference_npz(reference_dir):
    import numpy as np

    return dict(np.load(reference_dir / "reference_image_A_256x320.npz"))


@pytest.fixture(scope="session")
def reference_model(reference_dir):
    """The R-50-FPN RetinaMask with the reference's synthetic weights (eval mode)."""
    import importlib.util

    import torch

    from retinamask.config import load_config
    from retinamask.modeling import build_model

    spec_path = reference_dir / "synthetic_weights.py"
    module_spec = importlib.util.spec_from_file_location("reference_synthetic_weights", spec_path)
    weights = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(weights)
    state = weights.synthetic_state_dict(weights.load_spec(reference_dir / "retinamask_R-50-FPN_state_dict_spec.json"))
    model = build_model(load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms"))
    model.load_state_dict(state, strict=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return model
