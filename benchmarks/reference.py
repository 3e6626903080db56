"""Fixture A of the original RetinaMask (``shared/reference``): the model with its synthetic
weights, and the rules by which our detections match the reference ones. Shared by the CPU
parity test (tests/test_model_parity.py) and the device check (benchmarks/gpu_check.py).

The folder holds ``synthetic_weights.py``, ``retinamask_R-50-FPN_state_dict_spec.json``,
``reference_image_A_256x320.npz`` and ``image_A_256x320.png`` (see its README.md).
"""

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

REFERENCE_CONFIG = "retinanet_mask_R-50-FPN_2x_adjust_std011_ms"
REFERENCE_NPZ = "reference_image_A_256x320.npz"
REFERENCE_PNG = "image_A_256x320.png"
STATE_DICT_SPEC = "retinamask_R-50-FPN_state_dict_spec.json"
# A reference detection is matched by one of ours with the same label, box IoU >= MIN_IOU and
# |score difference| <= MAX_SCORE_DELTA (output order is implementation-defined: match as sets).
MIN_IOU = 0.99
MAX_SCORE_DELTA = 1e-4


def load_reference_npz(reference_dir):
    """The reference outputs: key -> array (``meta_json`` documents each key)."""
    import numpy as np

    return dict(np.load(Path(reference_dir) / REFERENCE_NPZ))


def load_reference_model(reference_dir):
    """The R-50-FPN RetinaMask with the reference's synthetic weights (eval mode, float32, CPU)."""
    from retinamask.config import load_config
    from retinamask.modeling import build_model

    reference_dir = Path(reference_dir)
    module_spec = importlib.util.spec_from_file_location(
        "reference_synthetic_weights", reference_dir / "synthetic_weights.py"
    )
    weights = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(weights)
    state = weights.synthetic_state_dict(weights.load_spec(reference_dir / STATE_DICT_SPEC))
    model = build_model(load_config(REFERENCE_CONFIG))
    model.load_state_dict(state, strict=True)
    return model.eval()


@dataclass
class Match:
    """Our index for each reference row (-1: unmatched), with the IoU and |score difference| of
    each matched pair; ``extra``: how many of ours are matched to no reference row."""

    ours_index: list
    iou: list = field(default_factory=list)
    score_delta: list = field(default_factory=list)
    extra: int = 0

    @property
    def matched(self):
        return sum(i >= 0 for i in self.ours_index)

    @property
    def complete(self):
        """Every reference row matched, one to one, and none of ours left over."""
        return self.matched == len(self.ours_index) and self.extra == 0


def match_detections(ours, ref_boxes, ref_labels, ref_scores):
    """Match reference detections to ours, one to one (greedy in reference order, best IoU first).

    ours: {"boxes" [D, 4], "labels" [D], "scores" [D]} torch tensors (CPU);
    ref_boxes float32 [R, 4] xyxy, ref_labels int [R], ref_scores float32 [R] (numpy).
    """
    import torch
    from torchvision.ops import box_iou

    ref_boxes = torch.from_numpy(ref_boxes)
    iou = box_iou(ref_boxes, ours["boxes"].float())
    same_label = torch.from_numpy(ref_labels)[:, None] == ours["labels"][None, :]
    score_delta = (torch.from_numpy(ref_scores)[:, None] - ours["scores"][None, :].float()).abs()
    ok = (iou >= MIN_IOU) & same_label & (score_delta <= MAX_SCORE_DELTA)
    taken = set()
    match = Match(ours_index=[])
    for r in range(len(ref_boxes)):
        candidates = [j for j in torch.nonzero(ok[r]).flatten().tolist() if j not in taken]
        if not candidates:
            match.ours_index.append(-1)
            continue
        j = max(candidates, key=lambda c: iou[r, c])
        taken.add(j)
        match.ours_index.append(j)
        match.iou.append(float(iou[r, j]))
        match.score_delta.append(float(score_delta[r, j]))
    match.extra = len(ours["boxes"]) - len(taken)
    return match
