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
    import torch

    from benchmarks.reference import load_reference_model

    model = load_reference_model(reference_dir)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return model
