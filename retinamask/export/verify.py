"""The exported model against PyTorch: a deterministic sample input, ONNX Runtime's run of the
file, detections matched by label and box IoU, and the verdict per precision."""

import contextlib
import time

import numpy as np
import torch

from retinamask.core.contract import IMAGE_SIZES_INPUT, SEED_NUM_CANDIDATES
from retinamask.core.resize import ResizePolicy, SeedResize
from retinamask.export.graphs import SeedGraph

# Parity tolerances against PyTorch (float32 eager). Detections are matched by label and box IoU.
# float16: the convolutions run in half precision, so scores move by ~1e-3 and a few
# detections near the top-K cut or an NMS decision swap places (see tests/test_export.py).
TOLERANCES = {
    "fp32": {"min_box_iou": 0.99, "max_score_diff": 1e-4, "max_mask_diff": 1e-3, "min_matched_fraction": 1.0},
    "fp16": {"min_box_iou": 0.95, "max_score_diff": 5e-3, "max_mask_diff": 5e-2, "min_matched_fraction": 0.9},
    # int8: a sanity check that quantization kept the detections (accuracy itself is judged by
    # COCO mAP on a validation set; see benchmarks/RESULTS.md).
    "int8": {"min_box_iou": 0.5, "max_score_diff": 0.25, "max_mask_diff": 1.0, "min_matched_fraction": 0.5},
}


def synthetic_image(height=640, width=640, variant=0):
    """A deterministic uint8 [H, W, 3] RGB test picture: gradients, a few rectangles and discs, and
    a noise texture; ``variant`` moves the shapes.

    Square and textured on purpose: flat regions (and the zero padding of a non-square image)
    give many anchors exactly equal scores, and which of those ties a top-k keeps is up to the
    runtime, so a comparison could not tell a tie from an error.
    """
    rng = np.random.default_rng(20261125 + variant)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack((255 * xx / width, 255 * yy / height, 128 + 100 * np.sin((xx + yy) / 37.0)), axis=-1)
    for _ in range(8):
        color = rng.integers(0, 256, size=3)
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(10, height // 3), rng.integers(10, width // 3)
        if rng.random() < 0.5:
            image[max(0, cy - ry) : cy + ry, max(0, cx - rx) : cx + rx] = color
        else:
            image[(yy - cy) ** 2 / ry**2 + (xx - cx) ** 2 / rx**2 <= 1] = color
    image += rng.normal(0.0, 12.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def sample_input(cfg, resize, batch=1):
    """``synthetic_image`` variants for tracing and verifying an export.

    ``resize``: a ResizePolicy, or the seed canvas side S. Returns float32 [B, 3, S, S] (the
    square pictures through the seed transform) for the seed policy; otherwise (float32
    [B, 3, H, W] pictures of exactly :func:`example_canvas`'s size, int64 image_sizes [B, 2])."""
    from retinamask.data.transforms import normalize_bgr, policy_preprocess

    policy = resize if isinstance(resize, ResizePolicy) else SeedResize(resize)
    if isinstance(policy, SeedResize):
        tensors = [
            policy_preprocess(synthetic_image(variant=i), policy, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)[0]
            for i in range(batch)
        ]
        return torch.from_numpy(np.stack(tensors))
    height, width = example_canvas(policy)
    tensors = [
        normalize_bgr(synthetic_image(height, width, variant=i), cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
        for i in range(batch)
    ]
    return torch.from_numpy(np.stack(tensors)), torch.tensor([(height, width)] * batch, dtype=torch.int64)


def example_canvas(policy):
    """(H, W) of the image a dynamic-H/W graph is traced and verified on: the canvas the policy gives
    a 640 x 480 image, at least 288 x 352 and never square. Filled by the image (no padding, whose
    flat zeros give tied scores), with every pyramid level at least 3 cells and H != W, so that the
    exporter derives no size that could be mistaken for a constant (P7 = 1 on a small canvas made
    ONNX Runtime reuse a buffer of the wrong shape)."""
    h, w = policy.geometry(480, 640).canvas_hw
    h, w = max(h, 288), max(w, 352)
    return (h, w + 32) if h == w else (h, w)


@contextlib.contextmanager
def eager_limits(model, max_detections):
    """The eager model set to keep (and mask) the top ``max_detections`` like the end2end graph:
    NUM_MASKS_TEST = K, and at least K detections per image."""
    postprocessor = model.rpn.postprocessor
    saved = model.num_masks_test, postprocessor.detections_per_image
    model.num_masks_test = max_detections
    postprocessor.detections_per_image = max(max_detections, saved[1])
    try:
        yield model
    finally:
        model.num_masks_test, postprocessor.detections_per_image = saved


def eager_detections(model, images, max_detections, image_sizes=None):
    """The eager model on ``images`` [B, 3, H, W] with ``image_sizes`` (None: the canvas, i.e.
    clipping to it) and NUM_MASKS_TEST = K. Returns per image a dict of numpy
    boxes/labels/scores/masks [D, M, M]."""
    if image_sizes is None:
        image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
    image_sizes = [tuple(int(v) for v in hw) for hw in image_sizes]
    with torch.no_grad(), eager_limits(model, max_detections):
        results = model(images, image_sizes)
    return [
        {
            "boxes": r["boxes"].numpy(),
            "labels": r["labels"].numpy(),
            "scores": r["scores"].numpy(),
            "masks": r["mask_probs"].numpy(),
        }
        for r in results
    ]


def output_detections(outputs, layout):
    """ONNX outputs (4 arrays with a batch axis) -> per image a dict of numpy boxes/labels/scores/masks
    [D, M, M]; end2end padding rows (label -1) are dropped."""
    boxes, labels, scores, masks = outputs
    results = []
    for i in range(boxes.shape[0]):
        keep = labels[i] >= 1 if layout == "end2end" else np.ones(labels.shape[1], dtype=bool)
        results.append(
            {
                "boxes": boxes[i][keep],
                "labels": labels[i][keep],
                "scores": scores[i][keep],
                "masks": masks[i][keep][:, 0],
            }
        )
    return results


def box_iou_matrix(a, b, plus_one=False):
    """IoU of xyxy boxes a [N, 4] vs b [M, 4] -> [N, M] float64. Plain areas, or with ``plus_one``
    the original's (``boxlist_iou``, TO_REMOVE = 1: inclusive pixels, so that boxes clipped to
    zero width at the image border still compare by how well they overlap)."""
    a = np.asarray(a, dtype=np.float64)[:, None]
    b = np.asarray(b, dtype=np.float64)[None]
    one = 1.0 if plus_one else 0.0
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one, 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one, 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + one) * (a[..., 3] - a[..., 1] + one)
    area_b = (b[..., 2] - b[..., 0] + one) * (b[..., 3] - b[..., 1] + one)
    union = area_a + area_b - inter
    same = (a == b).all(-1)  # degenerate identical boxes (zero area) count as a perfect match
    return np.where(same, 1.0, inter / np.where(union > 0, union, 1.0))


def compare_detections(reference, test, min_box_iou=0.99, cut=None, cut_tolerance=1e-4):
    """Match ``test`` detections to ``reference`` ones (dicts of numpy boxes/labels/scores/masks).

    Greedy in reference score order: the unmatched test detection of the same label with the
    highest box IoU >= ``min_box_iou`` (the original's IoU, +1 areas). ``cut``: the number of rows the producer
    keeps; where
    the reference reached it, unmatched detections scoring at most the last kept score
    + ``cut_tolerance`` are attributed to the top-K cut (ties / near-ties) and counted apart.
    Returns counts and, over matched pairs, max |d score|, min box IoU, max |d box| (px),
    max |d mask prob| and min mask IoU (at 0.5).
    """
    ref_n, test_n = len(reference["scores"]), len(test["scores"])
    iou = (
        box_iou_matrix(reference["boxes"], test["boxes"], plus_one=True)
        if ref_n and test_n
        else np.zeros((ref_n, test_n))
    )
    iou = np.where(reference["labels"][:, None] == test["labels"][None], iou, -1.0)
    used = np.zeros(test_n, dtype=bool)
    pairs = []
    for r in np.argsort(-reference["scores"], kind="stable"):
        candidates = np.where(used, -1.0, iou[r])
        if test_n and candidates.max() >= min_box_iou:
            t = int(candidates.argmax())
            used[t] = True
            pairs.append((int(r), t))
    matched_ref = np.zeros(ref_n, dtype=bool)
    for r, _ in pairs:
        matched_ref[r] = True
    at_cut = 0
    if cut is not None and ref_n >= cut:
        last_kept = np.sort(reference["scores"])[::-1][cut - 1]
        at_cut = int(
            (reference["scores"][~matched_ref] <= last_kept + cut_tolerance).sum()
            + (test["scores"][~used] <= last_kept + cut_tolerance).sum()
        )
    stats = {
        "reference": ref_n,
        "exported": test_n,
        "matched": len(pairs),
        "unmatched": int((~matched_ref).sum() + (~used).sum()),
        "unmatched_at_cut": at_cut,
        "max_score_diff": 0.0,
        "min_box_iou": 1.0,
        "max_box_diff": 0.0,
        "max_mask_diff": 0.0,
        "min_mask_iou": 1.0,
    }
    if pairs:
        r, t = (np.array(v) for v in zip(*pairs))
        stats["max_score_diff"] = float(np.abs(reference["scores"][r] - test["scores"][t]).max())
        stats["min_box_iou"] = float(iou[r, t].min())
        stats["max_box_diff"] = float(np.abs(reference["boxes"][r] - test["boxes"][t]).max())
        ref_masks, test_masks = reference["masks"][r], test["masks"][t]
        stats["max_mask_diff"] = float(np.abs(ref_masks - test_masks).max())
        ref_bin, test_bin = ref_masks > 0.5, test_masks > 0.5
        inter = (ref_bin & test_bin).sum((1, 2))
        union = (ref_bin | test_bin).sum((1, 2))
        stats["min_mask_iou"] = float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).min())
    return stats


def merge_stats(per_image):
    """Sum the counts and take the worst of the differences over images."""
    total = {}
    for stats in per_image:
        for key, value in stats.items():
            if key.startswith(("max_", "min_")):
                pick = max if key.startswith("max_") else min
                total[key] = pick(total.get(key, value), value)
            else:
                total[key] = total.get(key, 0) + value
    return total


def judge(stats, precision):
    """True when ``stats`` (from compare_detections/merge_stats) are within TOLERANCES[precision]."""
    tol = TOLERANCES[precision]
    explained = stats["matched"] + stats["unmatched_at_cut"]
    fraction = explained / max(1, max(stats["reference"], stats["exported"]))
    if precision == "fp32":
        fraction = 1.0 if stats["unmatched"] == stats["unmatched_at_cut"] else 0.0
    return bool(
        fraction >= tol["min_matched_fraction"]
        and stats["min_box_iou"] >= tol["min_box_iou"]
        and stats["max_score_diff"] <= tol["max_score_diff"]
        and stats["max_mask_diff"] <= tol["max_mask_diff"]
    )


def run_onnxruntime(path, images, image_sizes=None):
    """The model at ``path`` on ``images`` (numpy [B, 3, H, W]; with ``image_sizes`` [B, 2] for
    dynamic H/W models) with ONNX Runtime on CPU -> 4 arrays."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.float32)}
    if image_sizes is not None:
        feed[IMAGE_SIZES_INPUT] = np.asarray(image_sizes, dtype=np.int64)
    return session.run(None, feed)


def verify_export(model, graph, cfg, path, layout, resize, max_detections, batch=1, precision="fp32"):
    """One ONNX Runtime run of the exported file on the sample input, compared with PyTorch:
    end2end against the eager model (image_sizes: the canvas for the seed policy, else the
    images' true sizes; NUM_MASKS_TEST = K), seed against the float32 SeedGraph run eagerly.
    ``resize``: the ResizePolicy (or the seed canvas side S)."""
    policy = resize if isinstance(resize, ResizePolicy) else SeedResize(resize)
    images, image_sizes = sample_input(cfg, policy, batch), None
    if not isinstance(policy, SeedResize):
        images, image_sizes = images
    canvas_side = getattr(policy, "size", None)  # the seed's square canvas S
    start = time.perf_counter()
    outputs = run_onnxruntime(path, images.numpy(), None if image_sizes is None else image_sizes.numpy())
    ort_seconds = time.perf_counter() - start
    if layout == "end2end":
        reference = eager_detections(model, images, max_detections, image_sizes)
        where = (
            f"({canvas_side}, {canvas_side})"
            if image_sizes is None
            else "the images' sizes " + ", ".join(f"{h}x{w}" for h, w in image_sizes.tolist())
        )
        reference_kind = f"eager model, image_sizes {where}, NUM_MASKS_TEST {max_detections}"
        cut = max_detections
    else:
        seed_graph = graph if precision == "fp32" else SeedGraph(model, canvas_side)
        with torch.no_grad():
            reference = output_detections([t.numpy() for t in seed_graph(images)], layout)
        reference_kind = "SeedGraph in PyTorch (float32)"
        cut = SEED_NUM_CANDIDATES
    tolerances = TOLERANCES[precision]
    stats = merge_stats(
        [
            compare_detections(r, t, tolerances["min_box_iou"], cut, tolerances["max_score_diff"])
            for r, t in zip(reference, output_detections(outputs, layout))
        ]
    )
    return {
        "compared_with": reference_kind,
        "images": batch,
        "onnxruntime_seconds": round(ort_seconds, 3),
        "output_shapes": [list(o.shape) for o in outputs],
        **stats,
        "tolerances": tolerances,
        "passed": judge(stats, precision),
    }
