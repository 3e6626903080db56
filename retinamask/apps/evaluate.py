"""``retinamask evaluate``: a folder of per-image inference outputs -> COCO results JSON + bbox/segm
stats (no torch). The dataset loop; the per-image conversion is :mod:`retinamask.decode`, the metric
:mod:`retinamask.evaluation`.
"""

import logging
import time
from pathlib import Path

import numpy as np

from retinamask.apps.evaluate_inputs import (
    ground_truth_index,
    image_entries,
    job_for,
    resolve_geometry,
    resolve_results_dir,
)
from retinamask.apps.evaluate_jobs import run_jobs
from retinamask.apps.evaluate_store import PartStore
from retinamask.core import jobs
from retinamask.core.contract import CONVENTIONS, LAYOUTS
from retinamask.core.errors import InputError
from retinamask.formats.run_sidecar import CANVAS_SIDE_KEY

logger = logging.getLogger(__name__)

WORKER_LIMIT = 4  # default --workers: min(4, CPUs this process may use)


def evaluate_outputs(
    results_dir,
    ann_file,
    info_path=None,
    images_path=None,
    layout="auto",
    model_path=None,
    canvas_side=None,
    output_path="evaluation_results.txt",
    results_json=None,
    stats_json=None,
    workers=None,
    coco_backend="auto",
    mask_paste=None,
    iou_types=("bbox", "segm"),
    progress=None,
    strict=False,
    resume=True,
    convention="original",
    report_dir=None,
    image_dir=None,
    runner=None,
    resize=None,
):
    """Per-image inference outputs -> COCO results JSON + bbox/segm stats (text and JSON).

    results_dir: folder of ``{basename}_{i}.bin|.npy`` (either naming); when it has none
    but exactly one subfolder has them (``dumpOutput_device0``, an ais_bench time-stamped
    folder), that one is used. The image list comes from ``images_path`` (the
    ``images.json`` infer writes, or a preprocess sidecar), else ``info_path`` (.info),
    else ``{results_dir}/images.json``, else the output files present.
    layout: "auto" (the run sidecar's or ``model_path``'s metadata, else from the rows:
    1000 -> seed, otherwise end2end), "end2end" or "seed".
    Original sizes and image ids come from the annotation file (by file name, or by
    basename = file name without extension). Each image's resized size (the valid region
    of its canvas) comes from the image list, else from the resize policy: ``resize`` (a
    name or ResizePolicy), else the model's metadata or the run sidecar's, else the seed's
    S x S (``canvas_side``, ``--input-size``: S for outputs whose model does not say it).

    Bad items (missing, truncated or non-finite outputs, unknown images, bad .info
    lines) are logged one line each and listed under ``failed``; the rest is evaluated.
    ``strict``: raise the first bad item's InputError instead. No detections at all is
    not an error: AP 0, with a warning.

    Resume (``resume``): each image's COCO results are kept in ``{output stem}_parts/``
    as they are made (atomic files, keyed by the image's settings and its output
    files' sizes and times), so that a rerun after an interruption redoes only what was
    not finished. The folder is removed once every image was evaluated; it stays when
    some failed, so that a rerun after fixing them redoes only those.

    convention: "original" (default: the original RetinaMask's mapping to COCO results and
    its evaluation), "seed" (the Ascend seed's postprocess, number for number:
    :mod:`.seed_convention`) or "subpixel" (the original's, masks pasted sub-pixel). ``mask_paste`` is
    its deprecated name (original or seed).

    report_dir: also write the evaluation report there (:mod:`.report`: per-class and per-size
    AP, precision-recall curves, best and worst images drawn from ``image_dir``, default the
    annotation file's split folder, and an HTML page).

    runner: where the images are postprocessed (None: here, ``workers`` processes): a callable
    ``(jobs, workers, progress)`` yielding each job's outcome in job order, as
    :func:`~.evaluate_jobs.run_jobs` (e.g. :class:`retinamask.distributed.ray_evaluate.RayJobRunner`).

    Returns a summary dict with ``stats`` (``evaluate_coco``'s report), ``failed``,
    counts, timings and paths.
    """
    from retinamask.evaluation.coco_eval import load_ground_truth, write_results_json

    started = time.perf_counter()
    convention = _checked_convention(convention, mask_paste, layout)
    results_dir = resolve_results_dir(results_dir)
    dataset, _ = load_ground_truth(ann_file)
    failures = jobs.Failures(strict, logger)
    entries, geometry, evaluate_jobs = _plan_jobs(
        results_dir, dataset, info_path, images_path, layout, model_path, canvas_side, resize, convention, failures
    )

    output_path, results_json, stats_json, parts_dir = _output_paths(output_path, results_json, stats_json)
    parts = PartStore(parts_dir, enabled=resume)

    workers = jobs.default_workers(WORKER_LIMIT) if workers is None else int(workers)
    done, resumed, post_seconds = _postprocess(evaluate_jobs, parts, runner or run_jobs, workers, progress, failures)
    evaluated = len(done)
    results = [result for job_results, _ in done for result in job_results]
    write_results_json(results_json, results)

    eval_started = time.perf_counter()
    stats, evaluations = _score(dataset, results, done, iou_types, coco_backend, convention, report_dir)
    eval_seconds = time.perf_counter() - eval_started

    summary = {
        "results_dir": str(results_dir),
        "images_resumed": resumed,
        "layout": geometry.layout,
        "rows": geometry.rows,
        CANVAS_SIDE_KEY: geometry.canvas_side,
        **_image_counts(dataset, entries, evaluated),
        "num_results": len(results),
        "failed": failures.items,
        "convention": convention,
        "workers": workers,
        "timing": {
            "postprocess_s": post_seconds,
            "postprocess_ms_per_image": 1000.0 * post_seconds / max(evaluated - resumed, 1),
            "coco_eval_s": eval_seconds,
            "total_s": time.perf_counter() - started,
        },
        "stats": stats,
        "output_path": str(output_path),
        "results_json": str(results_json),
        "stats_json": str(stats_json),
    }
    if report_dir is not None and evaluations:
        _report(summary, report_dir, dataset, results, evaluations, ann_file, image_dir, started)
    _write_stats(output_path, stats_json, stats, summary)
    _finish_parts(parts, failures)
    return summary


def _checked_convention(convention, mask_paste, layout):
    """The convention to use (``mask_paste``, deprecated, wins when given); InputError for an unknown
    convention or layout."""
    if mask_paste is not None:
        import warnings

        # stacklevel 3: the warning points at evaluate_outputs' caller
        warnings.warn("mask_paste is deprecated: use convention (the same values)", DeprecationWarning, stacklevel=3)
        convention = mask_paste
    if convention not in CONVENTIONS:
        raise InputError(f"--convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    if layout not in ("auto",) + LAYOUTS:
        raise InputError(f"--layout must be auto, end2end or seed, got {layout!r}")
    return convention


def _report(summary, report_dir, dataset, results, evaluations, ann_file, image_dir, started):
    """Write the evaluation report into ``report_dir``; record its path and time in ``summary`` (and the
    total time, counted from ``started``)."""
    from retinamask.evaluation.report import write_report

    report_started = time.perf_counter()
    summary["report"] = str(
        write_report(report_dir, dataset, results, evaluations, summary, ann_file=ann_file, image_dir=image_dir)
    )
    summary["timing"]["report_s"] = time.perf_counter() - report_started
    summary["timing"]["total_s"] = time.perf_counter() - started


def _output_paths(output_path, results_json, stats_json):
    """(stats text, COCO results JSON, summary JSON, resume folder) paths: the last three default
    to ``{output stem}_coco_results.json``, ``{output stem}.json`` and ``{output stem}_parts``."""
    output_path = Path(output_path)
    stem = output_path.with_suffix("") if output_path.suffix else output_path
    results_json = Path(results_json) if results_json else stem.with_name(stem.name + "_coco_results.json")
    stats_json = Path(stats_json) if stats_json else stem.with_name(stem.name + ".json")
    return output_path, results_json, stats_json, stem.with_name(stem.name + "_parts")


def _image_counts(dataset, entries, evaluated):
    """The summary's image counts: listed, evaluated, in the annotations, and those without outputs."""
    listed = {e["basename"] for e in entries}
    without_outputs = sum(1 for image in dataset["images"] if Path(image["file_name"]).stem not in listed)
    return {
        "images_listed": len(entries),
        "images_evaluated": evaluated,
        "annotation_images": len(dataset["images"]),
        "annotation_images_without_outputs": without_outputs,
    }


def _plan_jobs(
    results_dir, dataset, info_path, images_path, layout, model_path, canvas_side, resize, convention, failures
):
    """(image list entries, :class:`~.evaluate_inputs.OutputGeometry`, one
    :class:`~.evaluate_jobs.EvaluateJob` per usable entry); unusable entries go to ``failures``."""
    gt_images = ground_truth_index(dataset)
    # label L -> category: the original's contiguous ids sorted ascending; the seed's position in the file
    category_ids = (
        [int(c["id"]) for c in dataset["categories"]]
        if convention == "seed"
        else sorted(int(c["id"]) for c in dataset["categories"])
    )
    entries, sidecar_model, listing_problems = image_entries(results_dir, info_path, images_path)
    for cause in listing_problems:
        failures.add(info_path, cause)
    if not entries:
        raise InputError("no images to evaluate: the image list is empty, or there are no output files", results_dir)
    geometry = resolve_geometry(layout, model_path, sidecar_model, canvas_side, results_dir, entries, resize)
    if convention == "seed" and geometry.canvas_side is None:
        raise InputError(
            "--convention seed maps boxes back with the seed's one ratio S / long side of a square "
            "S x S canvas; these outputs came from a model that takes any canvas (--resize original "
            "or buckets): evaluate them with --convention original",
            results_dir,
        )
    evaluate_jobs = []
    for entry in entries:
        job, cause = job_for(entry, gt_images, geometry, results_dir, category_ids, convention)
        if cause is not None:
            failures.add(entry["basename"], cause)
        else:
            evaluate_jobs.append(job)
    return entries, geometry, evaluate_jobs


def _postprocess(evaluate_jobs, parts, runner, workers, progress, failures):
    """Each job's (COCO results, mask areas or None), from the resume store or by ``runner``, kept
    in the store as made. Returns (those of the jobs done, in job order; how many were resumed;
    seconds spent postprocessing the others)."""
    # keys taken before the outputs are read: outputs rewritten meanwhile are redone by a rerun
    keys = [parts.key(job) for job in evaluate_jobs]
    results_per_job = [parts.load(job, key) for job, key in zip(evaluate_jobs, keys)]  # or None
    todo = [position for position, results in enumerate(results_per_job) if results is None]
    resumed = len(evaluate_jobs) - len(todo)
    if resumed:
        logger.info(
            "%d of %d images already evaluated in an interrupted run (%s): reused",
            resumed,
            len(evaluate_jobs),
            parts.folder,
        )
    started = time.perf_counter()
    for position, outcome in zip(todo, runner([evaluate_jobs[i] for i in todo], workers, progress)):
        if outcome[0] == "failed":
            _, path, cause = outcome
            failures.add(path, cause)
            continue
        results_per_job[position] = outcome[1:]
        parts.save(evaluate_jobs[position], keys[position], *outcome[1:])
    return [r for r in results_per_job if r is not None], resumed, time.perf_counter() - started


def _score(dataset, results, done, iou_types, coco_backend, convention, report_dir):
    """(COCO stats, per-image evaluations or None) of ``results``; ``done``: each evaluated image's
    (results, mask areas or None). No detections at all is AP 0, with a warning."""
    from retinamask.evaluation.coco_eval import evaluate_coco

    evaluated = len(done)
    if evaluated and not results:
        logger.warning(
            "no detections in any of the %d evaluated images: AP and AR are 0 "
            "(-1 where the annotations have no object of that size)",
            evaluated,
        )
    if not (results or evaluated):
        return {"backend": None, "num_results": 0, **dict.fromkeys(iou_types)}, None
    areas = None
    if "segm" in iou_types and all(job_areas is not None for _, job_areas in done):
        areas = np.concatenate(
            [np.asarray(job_areas, dtype=np.float64).reshape(-1) for _, job_areas in done] + [np.zeros(0)]
        )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return evaluate_coco(
            dataset,
            results,
            iou_types=iou_types,
            backend=coco_backend,
            segm_area="box" if convention == "seed" else "mask",
            segm_areas=areas,
            return_evaluations=True,
            keep_ious=report_dir is not None,
        )


def _write_stats(output_path, stats_json, stats, summary):
    """The stats text (``output_path``) and the summary JSON (``stats_json``)."""
    from retinamask.evaluation.coco_eval import write_stats_json, write_stats_text

    if stats.get("bbox") is not None:
        write_stats_text(output_path, stats)
    else:
        from retinamask.core.fileio import atomic_write_text

        atomic_write_text(output_path, "no images could be evaluated\n")
    write_stats_json(stats_json, summary)


def _finish_parts(parts, failures):
    """Remove the resume store once every image was evaluated; keep it when some failed."""
    if failures:
        if parts.count():
            logger.info(
                "%s: kept the results of the evaluated images, so that a rerun redoes only the failed ones",
                parts.folder,
            )
    else:
        parts.remove()
