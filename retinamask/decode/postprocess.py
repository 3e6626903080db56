"""Model outputs of one image -> detections in original-image pixels -> COCO results; and the
``retinamask evaluate`` driver over a folder of per-image inference outputs (no torch).

The geometry from the model's canvas back to the image: :func:`boxes_to_original` (the
per-axis scale of ``retinamask.core.geometry.ImageGeometry``); the resized size of each image
comes from the run's records, else from the resize policy (``retinamask.core.geometry``).

Layouts (docs/onnx_contract.md): ``end2end`` outputs are final detections padded
with label -1 / score 0 rows; ``seed`` outputs are 1000 candidates that get the
seed's host-side class-wise NMS (IoU 0.4, +1 areas, keep 100) here.

Conventions: ``original`` (the default) maps outputs to COCO results as the original
RetinaMask does; ``seed`` as the Ascend seed's postprocess does, number for number
(:mod:`retinamask.evaluation.seed_convention`, which owns its own box mapping).
"""

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinamask.core import parallel
from retinamask.core.errors import InputError, RetinaMaskError

logger = logging.getLogger(__name__)

LAYOUTS = ("end2end", "seed")
MASK_PASTES = ("original", "seed")
CONVENTIONS = ("original", "seed")
SEED_NUM_CANDIDATES = 1000
DEFAULT_INPUT_SIZE = 1344


def boxes_to_original(boxes, original_hw, resized_hw, clip=True):
    """Boxes on the model's canvas -> boxes on the original image.

    boxes: float [N,4] x1,y1,x2,y2 in canvas pixels, where the image occupies the
    top-left ``resized_hw`` = (resized_h, resized_w) region. original_hw = (h, w).
    Each axis is divided by its own resize ratio (resized / original; the short side
    was rounded down, so the two differ slightly), computed as the original's
    ``BoxList.resize`` does it: float32 boxes times the float32 of original / resized.
    Then, with ``clip``, clipped to [0, w-1] x [0, h-1] (``clip_to_image``, +1 convention): the
    seed's route clips there (its graph clipped to the canvas); the original does not (its
    graph clipped to the resized image), see ``ResizePolicy.clip_to_image``.
    Returns float32 [N,4].
    """
    from retinamask.ops.boxes import clip_boxes, rescale_boxes

    height, width = (int(v) for v in original_hw)
    boxes = rescale_boxes(boxes, resized_hw, original_hw)
    return clip_boxes(boxes, height, width) if clip else boxes


@dataclass
class Detections:
    """Final detections of one image, in original-image pixels.

    boxes float32 [N,4] (x1,y1,x2,y2, inclusive pixels); scores float32 [N], descending
    for seed (NMS order) and as the model sorted them for end2end; labels int32 [N]
    (1-based contiguous); masks uint8 [N,H,W] (0/1) or None when not pasted;
    mask_probs float32 [N,M,M] (the model's probabilities for each row's class);
    mask_areas int64 [N] pixel counts of ``masks`` (None when not pasted).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    mask_probs: np.ndarray
    mask_areas: np.ndarray | None = None


def decode_outputs(
    outputs,
    layout,
    original_hw,
    resized_hw,
    nms_threshold=0.4,
    max_detections=100,
    mask_threshold=0.5,
    mask_paste="original",
    num_classes=None,
    paste=True,
    clip=True,
):
    """One image's 4 model outputs -> :class:`Detections` in original-image pixels.

    outputs: (boxes [K,4] f32 canvas pixels, labels [K] int, scores [K] f32,
    masks [K,1,M,M] or [K,M,M] f32 probabilities), batch axis removed.
    layout "end2end": rows with label < 1 or score <= 0 are padding and dropped.
    layout "seed": class-wise NMS (``nms_threshold``, keep ``max_detections``) on the
    canvas boxes, as the seed's postprocess does, before mapping back.
    mask_paste: "original" (``paste_masks``, PIL, exact to the original RetinaMask)
    or "seed" (``paste_masks_seed``, cv2, the seed's host code).
    num_classes: when given, labels above it are an error. clip: boxes clipped to the image
    after mapping back (:func:`boxes_to_original`; the policy's ``clip_to_image``).
    Raises InputError (without a path) for malformed or non-finite outputs.
    """
    from retinamask.ops.masks import paste_masks, paste_masks_seed
    from retinamask.ops.nms import classwise_nms

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if mask_paste not in MASK_PASTES:
        raise ValueError(f"mask_paste must be one of {MASK_PASTES}, got {mask_paste!r}")
    boxes, labels, scores, masks = checked_outputs(outputs)

    if layout == "seed":

        if (labels < 1).any():
            raise InputError(f"seed-layout labels must be 1-based, found {int(labels.min())} (end2end outputs?)")
        keep = classwise_nms(boxes, scores, labels, iou_threshold=nms_threshold, max_detections=max_detections)
    else:
        keep = np.flatnonzero((labels >= 1) & (scores > 0))
    if num_classes is not None and keep.size and labels[keep].max() > num_classes:
        raise InputError(f"label {int(labels[keep].max())} but there are only {num_classes} categories")

    height, width = (int(v) for v in original_hw)
    kept_boxes = boxes_to_original(boxes[keep], original_hw, resized_hw, clip=clip)
    kept_probs = masks[keep].astype(np.float32, copy=False)
    pasted = areas = None
    if paste:
        paste_fn = paste_masks if mask_paste == "original" else paste_masks_seed
        pasted, areas = paste_fn(kept_probs, kept_boxes, height, width, threshold=mask_threshold, padding=1,
                                 return_areas=True)
    return Detections(kept_boxes, scores[keep], labels[keep].astype(np.int32), pasted, kept_probs, areas)


def checked_outputs(outputs):
    """One image's 4 outputs, checked: (boxes f32 [K,4], labels int64 [K], scores f32 [K], masks [K,M,M]).

    Raises InputError (without a path) for wrong shapes or NaN/inf values.
    """
    boxes, labels, scores, masks = (np.asarray(o) for o in outputs)
    rows = boxes.shape[0] if boxes.ndim == 2 else -1
    if boxes.shape != (rows, 4) or labels.shape != (rows,) or scores.shape != (rows,) or masks.shape[0] != rows:
        raise InputError(
            f"outputs are not [K,4] / [K] / [K] / [K,1,M,M]: got {list(boxes.shape)}, {list(labels.shape)}, "
            f"{list(scores.shape)}, {list(masks.shape)}"
        )
    if masks.ndim == 4:
        masks = masks[:, 0]
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise InputError(f"masks must be [K,1,M,M], got {list(np.asarray(outputs[3]).shape)}")
    for name, array in (("boxes", boxes), ("scores", scores), ("masks", masks)):
        if not np.isfinite(array).all():
            raise InputError(f"{int((~np.isfinite(array)).sum())} NaN/inf value(s) in {name}")
    return boxes.astype(np.float32, copy=False), labels.astype(np.int64), scores.astype(np.float32, copy=False), masks


def outputs_to_coco_results(
    outputs,
    layout,
    image_id,
    original_hw,
    resized_hw,
    category_ids,
    nms_threshold=0.4,
    max_detections=100,
    mask_threshold=0.5,
    mask_paste="original",
    with_masks=True,
    convention="original",
    input_size=None,
    clip=True,
):
    """One image's 4 model outputs -> list of COCO result dicts (bbox [x,y,w,h] with the
    +1 width convention, score, category_id, and RLE ``segmentation`` when ``with_masks``).

    category_ids: the annotation file's category ids sorted ascending; label L maps to
    ``category_ids[L - 1]``. Other arguments: :func:`decode_outputs`.
    convention "seed": the seed's postprocess instead (:mod:`.seed_convention`: its NMS on
    any layout, one ratio ``input_size / long side``, its paste, width x2 - x1); then
    ``category_ids`` are in the annotation file's order and ``input_size`` is needed.
    """
    return image_coco_results(outputs, layout, image_id, original_hw, resized_hw, category_ids,
                              nms_threshold=nms_threshold, max_detections=max_detections,
                              mask_threshold=mask_threshold, mask_paste=mask_paste, with_masks=with_masks,
                              convention=convention, input_size=input_size, clip=clip)[0]


def image_coco_results(outputs, layout, image_id, original_hw, resized_hw, category_ids, nms_threshold=0.4,
                       max_detections=100, mask_threshold=0.5, mask_paste="original", with_masks=True,
                       convention="original", input_size=None, clip=True):
    """:func:`outputs_to_coco_results` and the results' mask areas: (results, int64 [N] or None)."""
    from retinamask.evaluation.coco_eval import detections_to_coco_results
    from retinamask.ops.masks import encode_masks

    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if convention == "seed":
        from retinamask.evaluation.seed_convention import seed_coco_results

        if input_size is None:
            raise ValueError("the seed convention needs the model's input size S")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        return seed_coco_results(checked_outputs(outputs), image_id, original_hw, input_size, category_ids,
                                 iou_threshold=nms_threshold, keep=max_detections, with_masks=with_masks)
    detections = decode_outputs(
        outputs, layout, original_hw, resized_hw, nms_threshold=nms_threshold, max_detections=max_detections,
        mask_threshold=mask_threshold, mask_paste=mask_paste, num_classes=len(category_ids), paste=with_masks,
        clip=clip,
    )
    categories = np.asarray(category_ids)[detections.labels - 1] if detections.labels.size else []
    rles = encode_masks(detections.masks) if with_masks else None
    results = detections_to_coco_results(image_id, detections.boxes, detections.scores, categories, rles)
    return results, detections.mask_areas


# ---------------------------------------------------------------------------
# the evaluate driver


def default_workers():
    """min(4, CPUs this process may use)."""
    return parallel.default_workers(limit=4)


def evaluate_outputs(
    results_dir,
    ann_file,
    info_path=None,
    images_path=None,
    layout="auto",
    model_path=None,
    input_size=None,
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
    S x S (``input_size``).

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
    its evaluation) or "seed" (the Ascend seed's postprocess, number for number:
    :mod:`.seed_convention`). ``mask_paste`` is its deprecated name.

    report_dir: also write the evaluation report there (:mod:`.report`: per-class and per-size
    AP, precision-recall curves, best and worst images drawn from ``image_dir``, default the
    annotation file's split folder, and an HTML page).

    runner: where the images are postprocessed (None: here, ``workers`` processes): a callable
    ``(jobs, workers, progress)`` yielding each job's outcome in job order, as :func:`_run_jobs`
    (e.g. :class:`retinamask.distributed.ray_evaluate.RayJobRunner`).

    Returns a summary dict with ``stats`` (``evaluate_coco``'s report), ``failed``,
    counts, timings and paths.
    """
    from retinamask.evaluation.coco_eval import evaluate_coco, load_ground_truth, write_results_json, write_stats_json, write_stats_text

    started = time.perf_counter()
    if mask_paste is not None:
        import warnings

        warnings.warn("mask_paste is deprecated: use convention (the same values)", DeprecationWarning, stacklevel=2)
        convention = mask_paste
    if convention not in CONVENTIONS:
        raise InputError(f"--convention must be original or seed, got {convention!r}")
    if layout not in ("auto",) + LAYOUTS:
        raise InputError(f"--layout must be auto, end2end or seed, got {layout!r}")
    results_dir = _resolve_results_dir(results_dir)
    dataset, _ = load_ground_truth(ann_file)
    gt_images = _ground_truth_index(dataset)
    # label L -> category: the original's contiguous ids sorted ascending; the seed's position in the file
    category_ids = ([int(c["id"]) for c in dataset["categories"]] if convention == "seed"
                    else sorted(int(c["id"]) for c in dataset["categories"]))

    failed = []

    def item_failed(file, cause):
        if strict:
            raise InputError(cause, file)
        logger.warning("%s: %s", file, cause)
        failed.append({"file": str(file), "cause": cause})

    entries, sidecar_model, listing_problems = _image_entries(results_dir, info_path, images_path)
    for cause in listing_problems:
        item_failed(info_path, cause)
    if not entries:
        raise InputError("no images to evaluate: the image list is empty, or there are no output files", results_dir)
    geometry = _resolve_geometry(layout, model_path, sidecar_model, input_size, results_dir, entries, resize)
    if convention == "seed" and geometry["input_size"] is None:
        raise InputError("--convention seed maps boxes back with the seed's one ratio S / long side of a square "
                         "S x S canvas; these outputs came from a model that takes any canvas (--resize original "
                         "or buckets): evaluate them with --convention original", results_dir)

    jobs = []
    for entry in entries:
        job, cause = _job_for(entry, gt_images, geometry, results_dir, category_ids, convention)
        if cause is not None:
            item_failed(entry["basename"], cause)
        else:
            jobs.append(job)

    output_path = Path(output_path)
    stem = output_path.with_suffix("") if output_path.suffix else output_path
    results_json = Path(results_json) if results_json else stem.with_name(stem.name + "_coco_results.json")
    stats_json = Path(stats_json) if stats_json else stem.with_name(stem.name + ".json")
    parts = _PartStore(stem.with_name(stem.name + "_parts"), enabled=resume)

    # keys taken before the outputs are read: outputs rewritten meanwhile are redone by a rerun
    keys = [parts.key(job) for job in jobs]
    results_per_job = [parts.load(job, key) for job, key in zip(jobs, keys)]  # (results, mask areas) or None
    todo = [position for position, results in enumerate(results_per_job) if results is None]
    resumed = len(jobs) - len(todo)
    if resumed:
        logger.info("%d of %d images already evaluated in an interrupted run (%s): reused", resumed, len(jobs),
                    parts.folder)

    workers = default_workers() if workers is None else int(workers)
    post_started = time.perf_counter()
    for position, outcome in zip(todo, (runner or _run_jobs)([jobs[i] for i in todo], workers, progress)):
        if outcome[0] == "failed":
            _, path, cause = outcome
            item_failed(path, cause)
            continue
        results_per_job[position] = outcome[1:]
        parts.save(jobs[position], keys[position], *outcome[1:])
    post_seconds = time.perf_counter() - post_started
    done = [r for r in results_per_job if r is not None]
    evaluated = len(done)
    results = [result for job_results, _ in done for result in job_results]
    areas = None
    if "segm" in iou_types and all(job_areas is not None for _, job_areas in done):
        areas = np.concatenate([np.asarray(job_areas, dtype=np.float64).reshape(-1) for _, job_areas in done]
                               + [np.zeros(0)])
    write_results_json(results_json, results)
    if evaluated and not results:
        logger.warning("no detections in any of the %d evaluated images: AP and AR are 0 "
                       "(-1 where the annotations have no object of that size)", evaluated)

    eval_started = time.perf_counter()
    evaluations = None
    if results or evaluated:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            stats, evaluations = evaluate_coco(
                dataset, results, iou_types=iou_types, backend=coco_backend,
                segm_area="box" if convention == "seed" else "mask", segm_areas=areas,
                return_evaluations=True, keep_ious=report_dir is not None,
            )
    else:
        stats = {"backend": None, "num_results": 0, **{t: None for t in iou_types}}
    eval_seconds = time.perf_counter() - eval_started

    listed = {e["basename"] for e in entries}
    without_outputs = sum(1 for image in dataset["images"] if Path(image["file_name"]).stem not in listed)
    summary = {
        "results_dir": str(results_dir),
        "images_resumed": resumed,
        "layout": geometry["layout"],
        "rows": geometry["rows"],
        "input_size": geometry["input_size"],
        "images_listed": len(entries),
        "images_evaluated": evaluated,
        "annotation_images": len(dataset["images"]),
        "annotation_images_without_outputs": without_outputs,
        "num_results": len(results),
        "failed": failed,
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
        from retinamask.evaluation.report import write_report

        report_started = time.perf_counter()
        summary["report"] = str(write_report(report_dir, dataset, results, evaluations, summary,
                                             ann_file=ann_file, image_dir=image_dir))
        summary["timing"]["report_s"] = time.perf_counter() - report_started
        summary["timing"]["total_s"] = time.perf_counter() - started
    if stats.get("bbox") is not None:
        write_stats_text(output_path, stats)
    else:
        from retinamask.core.fileio import atomic_write_text

        atomic_write_text(output_path, "no images could be evaluated\n")
    write_stats_json(stats_json, summary)
    if failed:
        if parts.count():
            logger.info("%s: kept the results of the evaluated images, so that a rerun redoes only the failed ones",
                        parts.folder)
    else:
        parts.remove()
    return summary


class _PartStore:
    """Per-image COCO results of an evaluation in progress: ``{folder}/{basename}.json``, each
    written atomically with the key it was made under (the job's settings, the output files'
    sizes and modification times), and used again only under the same key."""

    def __init__(self, folder, enabled=True):
        self.folder = Path(folder)
        self.enabled = enabled
        if enabled and self.folder.is_dir():
            from retinamask.core.fileio import remove_stale_temp_files

            remove_stale_temp_files(self.folder)

    def _path(self, job):
        return self.folder / f"{job[1]}.json"

    def key(self, job):
        return _part_key(job) if self.enabled else None

    def load(self, job, key):
        """The stored (results, mask areas or None) of ``job``, or None if there are none for ``key``."""
        if key is None:
            return None
        import json

        try:
            stored = json.loads(self._path(job).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("key") != key:
            return None
        results, areas = stored.get("results"), stored.get("areas")
        if not isinstance(results, list) or not (areas is None or (isinstance(areas, list) and len(areas) == len(results))):
            return None
        return results, areas

    def save(self, job, key, results, areas=None):
        if key is None:
            return
        import json

        from retinamask.core.fileio import atomic_write_text
        from retinamask.evaluation.coco_eval import _json_default

        atomic_write_text(self._path(job), json.dumps({"key": key, "results": results, "areas": areas},
                                                      default=_json_default))

    def count(self):
        return len(list(self.folder.glob("*.json"))) if self.enabled and self.folder.is_dir() else 0

    def remove(self):
        if self.enabled and self.folder.is_dir():
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)


def _part_key(job):
    """JSON-comparable identity of one image's evaluation: the job and its output files' (name, size, mtime)."""
    import json

    from retinamask.formats.outputs import find_output_files

    try:
        files = find_output_files(job[0], job[1])
        stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files.paths]
    except (InputError, OSError):
        return None
    # through JSON, so that the key compares equal to one read back (tuples become lists)
    return json.loads(json.dumps({"job": list(job), "files": stats}))


def _resolve_results_dir(results_dir):
    from retinamask.formats.outputs import list_output_basenames

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError("inference results folder not found", results_dir)
    if list_output_basenames(results_dir):
        return results_dir
    candidates = [d for d in sorted(results_dir.iterdir()) if d.is_dir() and list_output_basenames(d)]
    if len(candidates) == 1:
        logger.info("reading the outputs in %s", candidates[0])
        return candidates[0]
    if candidates:
        raise InputError(
            f"no output files here, and {len(candidates)} subfolders have some ({', '.join(d.name for d in candidates)}); "
            "pass one of them", results_dir,
        )
    raise InputError("no inference output files ({basename}_0.bin ... or .npy) found", results_dir)


def _ground_truth_index(dataset):
    """file name and file stem -> (image id, height, width); a stem shared by two files maps to None."""
    index = {}
    for image in dataset["images"]:
        value = (image["id"], int(image["height"]), int(image["width"]))
        name = str(image["file_name"])
        index[("name", Path(name).name)] = value
        stem_key = ("stem", Path(name).stem)
        index[stem_key] = None if stem_key in index else value
    return index


def _image_entries(results_dir, info_path, images_path):
    """(entries, model summary or None, causes of skipped .info lines) from the sidecar, the .info,
    infer's images.json or the files."""
    from retinamask.runtime.infer import SIDECAR_NAME, read_run_sidecar
    from retinamask.formats.outputs import list_output_basenames

    if images_path is not None:
        return (*read_run_sidecar(images_path), [])
    if info_path is not None:
        from retinamask.data.preprocess import read_info_lines

        records, problems = read_info_lines(info_path, check_files=False)
        entries = []
        for record in records:
            entry = {"basename": record.name, "input_size": record.input_size}
            if record.file_name is not None:  # sizes from the preprocess sidecar (the seed's .info lists S x S)
                entry.update(file_name=record.file_name, width=record.width, height=record.height,
                             resized_width=record.resized_width, resized_height=record.resized_height)
            entries.append(entry)
        model = None
        run_sidecar = results_dir / SIDECAR_NAME
        if run_sidecar.is_file():
            model = read_run_sidecar(run_sidecar)[1]
        return entries, model, problems
    run_sidecar = results_dir / SIDECAR_NAME
    if run_sidecar.is_file():
        logger.info("image list: %s", run_sidecar)
        return (*read_run_sidecar(run_sidecar), [])
    logger.info("no image list given: evaluating every output set in %s", results_dir)
    return [{"basename": name} for name in list_output_basenames(results_dir)], None, []


def _resolve_geometry(layout, model_path, sidecar_model, input_size, results_dir, entries, resize=None):
    """Layout, rows K, mask resolution, input size S, resize policy and NMS settings for reading
    the outputs."""
    geometry = _resolve_layout_and_size(layout, model_path, sidecar_model, input_size, results_dir, entries, resize)
    geometry["policy"] = _resolve_policy(geometry, resize, sidecar_model, results_dir)
    return geometry


def _resolve_policy(geometry, resize, sidecar_model, results_dir):
    """The ResizePolicy that gives an image's resized size where the image list does not."""
    from retinamask.core.geometry import ResizePolicy, SeedResize, policy_from_dict, policy_named

    if isinstance(resize, ResizePolicy):
        return resize
    base = geometry.get("policy")
    if base is None and sidecar_model and isinstance(sidecar_model.get("resize"), dict):
        base = policy_from_dict(sidecar_model["resize"])
    if base is None:
        base = SeedResize(geometry["input_size"] or DEFAULT_INPUT_SIZE)
    try:
        return policy_named(base, resize)
    except ValueError as e:
        raise InputError(f"--resize {resize}: {e}", results_dir) from None


def _resolve_layout_and_size(layout, model_path, sidecar_model, input_size, results_dir, entries, resize=None):
    from retinamask.formats.model_info import DEFAULT_MASK_RESOLUTION, read_model_info
    from retinamask.formats.outputs import find_output_files, probe_output_geometry

    model = None
    if model_path is not None:
        info = read_model_info(model_path, layout=None if layout == "auto" else layout, input_size=input_size,
                               resize=resize)
        model = {"layout": info.layout, "rows": info.num_rows, "mask_resolution": info.mask_resolution,
                 "input_size": info.input_size, "max_detections": info.max_detections,
                 "nms_threshold": info.nms_threshold, "source": str(model_path)}
        if sidecar_model:
            # another model's geometry would map every box wrongly and quietly give a wrong mAP
            made_by = _sidecar_geometry(sidecar_model)
            for what, value in made_by.items():
                if value is not None and value != model[what]:
                    raise InputError(
                        f"the model has {what} {model[what]}, but the outputs in {results_dir} came from a model "
                        f"with {what} {value} (their run sidecar); is this the model that made them?", model_path)
    elif sidecar_model:
        outputs = sidecar_model.get("outputs") or []
        rows = outputs[0]["shape"][0] if outputs else None
        model = {"layout": sidecar_model.get("layout"), "rows": rows,
                 "mask_resolution": sidecar_model.get("mask_resolution", DEFAULT_MASK_RESOLUTION),
                 "input_size": sidecar_model.get("input_size"),
                 "max_detections": sidecar_model.get("max_detections", 100),
                 "nms_threshold": sidecar_model.get("nms_threshold", 0.4), "source": "the infer run sidecar"}
        if layout != "auto" and model["layout"] != layout:
            raise InputError(f"--layout {layout}, but the outputs came from a {model['layout']}-layout model "
                             f"({model['source']})", results_dir)
        if input_size is not None and model["input_size"] not in (None, input_size):
            raise InputError(f"--input-size {input_size}, but the outputs came from a model with "
                             f"S = {model['input_size']} ({model['source']})", results_dir)

    if model is not None and model["layout"] in LAYOUTS and model["rows"]:
        dynamic = model_path is not None and info.dynamic_hw or (
            model_path is None and sidecar_model.get("image_sizes_input") is not None)
        if dynamic:  # a model that takes any canvas: no S
            geometry = {**model, "input_size": None}
            if model_path is not None:
                geometry["policy"] = info.resize
        else:
            geometry = {**model, "input_size": model["input_size"] or input_size or DEFAULT_INPUT_SIZE}
        _check_entry_input_sizes(entries, geometry)
        return geometry

    # No model description: probe the first image with output files.
    probe = None
    for entry in entries:
        try:
            probe = probe_output_geometry(find_output_files(results_dir, entry["basename"]))
            break
        except InputError:
            continue
    if probe is None:
        raise InputError("could not read the outputs of any listed image to tell their layout; pass --layout "
                         "and --model", results_dir)
    rows, mask_resolution = probe
    if layout == "auto":
        layout = "seed" if rows == SEED_NUM_CANDIDATES else "end2end"
        logger.info("layout %s (from %d rows per output; pass --layout or --model to be explicit)", layout, rows)
    entry_sizes = {e.get("input_size") for e in entries} - {None}
    if input_size is None and len(entry_sizes) == 1:
        input_size = entry_sizes.pop()
    if input_size is None:
        input_size = DEFAULT_INPUT_SIZE
        logger.info("input size %d assumed (the seed's; pass --input-size or --model otherwise)", input_size)
    return {"layout": layout, "rows": rows, "mask_resolution": mask_resolution, "input_size": input_size,
            "max_detections": 100, "nms_threshold": 0.4, "source": "the output files"}


def _sidecar_geometry(sidecar_model):
    """What an infer run sidecar says about the model that made the outputs (None where it says nothing)."""
    outputs = sidecar_model.get("outputs") or []
    return {"layout": sidecar_model.get("layout"), "input_size": sidecar_model.get("input_size"),
            "rows": outputs[0]["shape"][0] if outputs else None}


def _check_entry_input_sizes(entries, geometry):
    """The image list (a preprocess sidecar) may record the input size its inputs were made for."""
    sizes = sorted({e.get("input_size") for e in entries} - {None})
    if sizes and sizes != [geometry["input_size"]]:
        raise InputError(
            f"the image list says its inputs were made for S = {', '.join(map(str, sizes))}, but "
            f"{geometry['source']} says S = {geometry['input_size']}; boxes would be mapped back wrongly",
            geometry["source"] if geometry["source"] not in ("the output files", "the infer run sidecar") else None,
        )


def _job_for(entry, gt_images, geometry, results_dir, category_ids, convention):
    """(job tuple, None) or (None, cause) for one listed image."""
    basename = entry["basename"]
    file_name = entry.get("file_name")
    found = gt_images.get(("name", Path(file_name).name)) if file_name else None
    if found is None:
        found = gt_images.get(("stem", basename))
    if found is None:
        if ("stem", basename) in gt_images:
            return None, f"several annotation images are named {basename}.*; pass the image list with file names"
        return None, f"no image {file_name or basename + '.*'} in the annotation file"
    image_id, height, width = found
    if entry.get("width") and entry.get("height") and (int(entry["width"]), int(entry["height"])) != (width, height):
        return None, (f"the annotation file says {width}x{height}, the image list {entry['width']}x{entry['height']} "
                      "(another image with the same name?)")
    input_size = geometry["input_size"]
    entry_size = entry.get("input_size")
    if entry.get("resized_width") and entry.get("resized_height") and entry_size in (None, input_size):
        resized_hw = (int(entry["resized_height"]), int(entry["resized_width"]))
    else:
        resized_hw = geometry["policy"].geometry(height, width).resized_hw
    job = (str(results_dir), basename, image_id, (height, width), resized_hw, geometry["layout"], geometry["rows"],
           geometry["mask_resolution"], geometry["nms_threshold"], geometry["max_detections"], tuple(category_ids),
           convention, input_size, geometry["policy"].clip_to_image)
    return job, None


def _run_jobs(jobs, workers, progress):
    """Yield each job's outcome in order, with a progress bar, in a process pool when workers > 1."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    workers = min(workers, len(jobs))
    with logging_redirect_tqdm(), tqdm(
        total=len(jobs), desc="evaluate", unit="img", file=sys.stderr,
        disable=(None if progress is None else not progress),
    ) as bar:
        if workers <= 1:
            for job in jobs:
                yield _evaluate_one(job)
                bar.update()
            return
        from concurrent.futures.process import BrokenProcessPool

        with parallel.worker_pool(workers, initializer=_init_worker) as executor:
            try:
                for outcome in executor.map(_evaluate_one, jobs, chunksize=2):
                    yield outcome
                    bar.update()
            except BrokenProcessPool:
                raise RetinaMaskError(
                    "a postprocessing worker process died (killed for lack of memory?); the images evaluated so "
                    "far are kept and a rerun resumes; --workers 1 runs in this process", jobs[0][0],
                ) from None
            finally:
                executor.shutdown(wait=True, cancel_futures=True)


def _init_worker():
    import cv2

    cv2.setNumThreads(1)


def _evaluate_one(job):
    """Read one image's outputs and turn them into COCO results. Runs in a worker.

    Returns ("ok", results, mask areas) or ("failed", file, cause).
    """
    from retinamask.formats.model_info import output_specs
    from retinamask.formats.outputs import find_output_files, read_image_outputs

    (results_dir, basename, image_id, original_hw, resized_hw, layout, rows, mask_resolution, nms_threshold,
     max_detections, category_ids, convention, input_size, clip) = job
    where = basename
    try:
        files = find_output_files(results_dir, basename)
        where = str(files.paths[0])
        outputs = read_image_outputs(files, output_specs(layout, rows, mask_resolution))
        results, areas = image_coco_results(
            outputs, layout, image_id, original_hw, resized_hw, category_ids, nms_threshold=nms_threshold,
            max_detections=max_detections, convention=convention, input_size=input_size, clip=clip,
        )
    except InputError as e:
        return ("failed", e.path or where, e.cause)
    except MemoryError:
        return ("failed", where, "not enough memory to postprocess these outputs")
    except Exception as e:  # one odd output must not stop the evaluation of thousands
        return ("failed", where, f"cannot postprocess (unexpected {type(e).__name__}: {' '.join(str(e).split())[:200]})")
    return ("ok", results, None if areas is None else areas.tolist())
