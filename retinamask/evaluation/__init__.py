"""Host-side postprocessing and COCO evaluation; imports no torch (runs in a runtime-only environment)."""

from retinamask.evaluation.coco_eval import (
    STAT_NAMES,
    evaluate_coco,
    format_stats_text,
    load_ground_truth,
    write_results_json,
    write_stats_json,
    write_stats_text,
)
from retinamask.ops.coco_results import detections_to_coco_results
from retinamask.ops.masks import encode_masks, paste_masks, paste_masks_seed
from retinamask.ops.nms import classwise_nms

__all__ = [
    "STAT_NAMES",
    "classwise_nms",
    "detections_to_coco_results",
    "encode_masks",
    "evaluate_coco",
    "format_stats_text",
    "load_ground_truth",
    "paste_masks",
    "paste_masks_seed",
    "write_results_json",
    "write_stats_json",
    "write_stats_text",
]
