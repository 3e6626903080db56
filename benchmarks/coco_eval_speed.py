"""COCO evaluation speed, results -> 24 stats: pycocotools vs faster-coco-eval vs ours (``direct``).

Synthetic ground truth (COCO-sized images, 1-12 ellipse objects each, polygon masks) and 100
detections per image made by the real post-processing (``image_coco_results``: mask paste +
RLE, which also gives each mask's area), then each evaluator on the same results in the same
run; the stats must agree (asserted) and the times are printed side by side.

    flock -x /work/.cpu.lock .venv/bin/python -m benchmarks.coco_eval_speed --images 5000

``direct`` is ``evaluate_coco(backend="direct")``: faster-coco-eval's C++ matching and
accumulation fed our own IoUs, with the mask areas known from the paste (no RLE decoded for an
area, each mask string decoded once, only where the image has ground truth of its category).
"""

import argparse
import json
import multiprocessing
import os
import pickle
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.machine import cpu_model
from benchmarks.synthetic import synthetic_jobs, synthetic_outputs


def _chunk(job):
    from retinamask.decode.coco_results import image_coco_results

    images, annotations_by_image, category_ids, seed = job
    rng = np.random.default_rng(seed)
    results, areas = [], []
    for image in images:
        outputs, image_hw, resized_hw = synthetic_outputs(
            image, annotations_by_image.get(image["id"], []), category_ids, rng
        )
        image_results, image_areas = image_coco_results(
            outputs, "end2end", image["id"], image_hw, resized_hw, category_ids
        )
        results += image_results
        areas += image_areas.tolist()
    return results, areas


def make_results(num_images, workers, chunk=50):
    """(ground truth dict, results, mask areas float64 [N]) for ``num_images`` synthetic images."""
    dataset, jobs = synthetic_jobs(num_images, chunk)
    if workers > 1:
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            outcomes = pool.map(_chunk, jobs)
    else:
        outcomes = [_chunk(job) for job in jobs]
    results = [r for chunk_results, _ in outcomes for r in chunk_results]
    areas = np.array([a for _, chunk_areas in outcomes for a in chunk_areas], dtype=np.float64)
    return dataset, results, areas


def run(num_images, workers, cache=None, repeats=1):
    from retinamask.evaluation.coco_eval import STAT_NAMES, evaluate_coco, format_stats_text
    from retinamask.evaluation.coco_fast import _thread_count

    start = time.perf_counter()
    if cache and Path(cache).is_file():
        dataset, results, areas = pickle.loads(Path(cache).read_bytes())
        if len(dataset["images"]) != num_images:
            raise SystemExit(f"{cache} holds {len(dataset['images'])} images, not {num_images}")
    else:
        dataset, results, areas = make_results(num_images, workers)
        if cache:
            Path(cache).write_bytes(pickle.dumps((dataset, results, areas)))
    made = time.perf_counter() - start

    routes = [
        ("pycocotools", dict(backend="pycocotools")),
        ("faster-coco-eval (its COCO API)", dict(backend="faster-coco-eval")),
        ("direct, 1 thread", dict(backend="direct", segm_areas=areas, threads=1)),
        (f"direct ({_thread_count()} threads)", dict(backend="direct", segm_areas=areas)),
    ]
    rows = []
    for name, kwargs in routes:
        best = None
        for _ in range(repeats):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                began = time.perf_counter()
                report = evaluate_coco(dataset, results, **kwargs)
                seconds = time.perf_counter() - began
            best = seconds if best is None else min(best, seconds)
        rows.append({"route": name, "seconds": best, "stats": report})

    reference = rows[0]["stats"]
    for row in rows:
        row["max_stat_difference"] = max(
            abs(row["stats"][t][k] - reference[t][k]) for t in ("bbox", "segm") for k in STAT_NAMES
        )
        row["same_text"] = format_stats_text(row["stats"]) == format_stats_text(reference)
        row["speedup"] = rows[0]["seconds"] / row["seconds"]
        assert row["max_stat_difference"] <= 1e-12 and row["same_text"], (row["route"], row["max_stat_difference"])
    return {
        "images": num_images,
        "ground_truth": len(dataset["annotations"]),
        "detections": len(results),
        "synthesis_s": made,
        "rows": rows,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
    }


def format_markdown(outcome):
    lines = [
        f"{outcome['images']} synthetic images, {outcome['ground_truth']} objects, {outcome['detections']} "
        f"detections (masks pasted by `image_coco_results`); results -> 24 stats:",
        "",
        "| evaluator | s | x pycocotools | bbox AP | segm AP | largest stat difference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in outcome["rows"]:
        stats = row["stats"]
        lines.append(
            f"| {row['route']} | {row['seconds']:.2f} | {row['speedup']:.2f} | {stats['bbox']['AP']:.4f} | "
            f"{stats['segm']['AP']:.4f} | {row['max_stat_difference']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2, help="processes making the synthetic results")
    parser.add_argument("--repeats", type=int, default=1, help="time each evaluator this many times, keep the best")
    parser.add_argument("--cache", default=None, help="pickle of the synthetic results (made once, reused)")
    parser.add_argument("--json", default=None, help="also write the outcome here")
    args = parser.parse_args(argv)
    outcome = run(args.images, args.workers, args.cache, args.repeats)
    print(format_markdown(outcome), end="")
    if args.json:
        for row in outcome["rows"]:
            row["stats"] = dict(row["stats"].items())
        Path(args.json).write_text(json.dumps(outcome, indent=1))


if __name__ == "__main__":
    main()
