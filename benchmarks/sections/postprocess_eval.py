"""Suite section "Post-processing + COCO evaluation": synthetic ground truth and detections
(benchmarks.synthetic) -> post-processing (mask paste + RLE; and the fused paste+RLE route,
checked to give the same strings) in worker processes -> COCO evaluation with pycocotools and
faster-coco-eval (their stats must be identical)."""

import multiprocessing
import time
import warnings

import numpy as np

from benchmarks.synthetic import synthetic_jobs, synthetic_outputs
from benchmarks.tables import number, table_head

EVALUATORS = ("pycocotools", "faster-coco-eval")


def _postprocess_chunk(job):
    """Worker: synthesise and post-process a chunk of images. Returns (results, seconds in
    ``outputs_to_coco_results``, seconds in the fused paste+RLE route, images where the two
    routes' RLE strings differ)."""
    from retinamask.decode.coco_results import outputs_to_coco_results
    from retinamask.decode.outputs import decode_outputs
    from retinamask.ops.masks import paste_and_encode_masks

    images, annotations_by_image, category_ids, seed = job
    rng = np.random.default_rng(seed)
    results, seconds, fused_seconds, mismatches = [], 0.0, 0.0, 0
    for image in images:
        outputs, image_hw, resized_hw = synthetic_outputs(
            image, annotations_by_image.get(image["id"], []), category_ids, rng
        )
        start = time.perf_counter()
        image_results = outputs_to_coco_results(outputs, "end2end", image["id"], image_hw, resized_hw, category_ids)
        seconds += time.perf_counter() - start
        start = time.perf_counter()
        detections = decode_outputs(
            outputs, "end2end", image_hw, resized_hw, num_classes=len(category_ids), paste=False
        )
        rles = paste_and_encode_masks(detections.mask_probs, detections.boxes, *image_hw)
        fused_seconds += time.perf_counter() - start
        mismatches += rles != [r["segmentation"] for r in image_results]
        results += image_results
    return results, seconds, fused_seconds, mismatches


def postprocess_chunks(jobs, workers):
    """:func:`_postprocess_chunk` over ``jobs`` in ``workers`` processes (in this one for 1):
    (results, post-processing seconds, fused-route seconds, mismatched images), summed."""
    if workers > 1:
        context = multiprocessing.get_context(
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        with context.Pool(workers) as pool:
            outcomes = list(pool.imap(_postprocess_chunk, jobs))
    else:
        outcomes = [_postprocess_chunk(job) for job in jobs]
    results, post_seconds, fused_seconds, mismatches = [], 0.0, 0.0, 0
    for chunk_results, seconds, fused, differing in outcomes:
        results += chunk_results
        post_seconds += seconds
        fused_seconds += fused
        mismatches += differing
    return results, post_seconds, fused_seconds, mismatches


def evaluate_with_each(dataset, results):
    """evaluator -> {"seconds", "stats"} (or {"error"} where it is not installed), and the largest
    difference between the two evaluators' stats (None unless both ran)."""
    from retinamask.evaluation.coco_eval import evaluate_coco

    evaluations = {}
    for backend in EVALUATORS:
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stats = evaluate_coco(dataset, results, backend=backend)
        except ImportError as e:
            evaluations[backend] = {"error": str(e)}
            continue
        evaluations[backend] = {"seconds": time.perf_counter() - start, "stats": stats}
    differences = None
    if all("stats" in e for e in evaluations.values()):
        a, b = (evaluations[k]["stats"] for k in EVALUATORS)
        differences = max(abs(a[t][s] - b[t][s]) for t in ("bbox", "segm") for s in a[t])
    return evaluations, differences


def postprocess_and_evaluate(num_images, workers, chunk=50):
    """Synthetic ground truth and detections for ``num_images`` images -> post-processing
    (``outputs_to_coco_results``: paste + RLE) in ``workers`` processes -> COCO evaluation with
    each backend, stats compared."""
    dataset, jobs = synthetic_jobs(num_images, chunk)
    start = time.perf_counter()
    results, post_seconds, fused_seconds, mismatches = postprocess_chunks(jobs, workers)
    wall = time.perf_counter() - start
    evaluations, differences = evaluate_with_each(dataset, results)
    return {
        "images": num_images,
        "ground_truth": len(dataset["annotations"]),
        "detections": len(results),
        "workers": workers,
        "postprocess_wall_s": wall,
        "postprocess_ms_per_image": 1000 * post_seconds / num_images,
        "fused_ms_per_image": 1000 * fused_seconds / num_images,
        "fused_rle_mismatched_images": mismatches,
        "evaluation": evaluations,
        "max_stat_difference": differences,
    }


def markdown(post):
    """The section's lines."""
    lines = [
        "",
        f"## Post-processing + COCO evaluation, {post['images']} synthetic images "
        f"({post['ground_truth']} objects, {post['detections']} detections)",
        "",
        f"Post-processing (paste + RLE, `outputs_to_coco_results`): {post['postprocess_ms_per_image']:.1f} ms "
        f"per image; the fused `paste_and_encode_masks` route: {post['fused_ms_per_image']:.1f} ms per image "
        f"(RLE strings differ on {post['fused_rle_mismatched_images']} images). Wall time of both plus the "
        f"synthesis: {post['postprocess_wall_s']:.1f} s with {post['workers']} worker(s).",
        "",
        *table_head("evaluator", "bbox+segm s:", "bbox AP:", "segm AP:"),
    ]
    for backend, result in post["evaluation"].items():
        if "error" in result:
            lines.append(f"| {backend} | unavailable: {result['error']} | - | - |")
        else:
            lines.append(
                f"| {backend} | {result['seconds']:.2f} | {result['stats']['bbox']['AP']:.4f} | "
                f"{result['stats']['segm']['AP']:.4f} |"
            )
    return lines + ["", f"Largest difference over the 24 stats: {number(post['max_stat_difference'], 6)}.", ""]
