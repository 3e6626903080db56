"""What ``evaluate`` reads before it decodes: the outputs folder, the image list, the ground truth
index and the geometry (layout, rows, resize policy) that maps each image's outputs back."""

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from retinamask.apps.evaluate_jobs import EvaluateJob
from retinamask.core.contract import (
    DEFAULT_MASK_RESOLUTION,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_NMS_THRESHOLD,
    LAYOUTS,
    SEED_CANVAS_SIDE,
    SEED_NUM_CANDIDATES,
)
from retinamask.core.errors import InputError
from retinamask.core.resize import ResizePolicy
from retinamask.formats.bins import check_inputs_policy, read_info_lines
from retinamask.formats.run_sidecar import CANVAS_SIDE_KEY, SIDECAR_NAME, read_run_sidecar

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputGeometry:
    """How to read the outputs back and map them to the images: the model that made them."""

    layout: str  # "end2end" or "seed"
    rows: int  # rows K of every output
    mask_resolution: int
    canvas_side: int | None  # the seed's S (None: a model that takes any canvas)
    max_detections: int
    nms_threshold: float
    source: str  # what said so: the model file, "the infer run sidecar" or "the output files"
    policy: ResizePolicy | None = None  # an image's resized size where the image list does not give it


def resolve_results_dir(results_dir):
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
            f"no output files here, and {len(candidates)} subfolders have some "
            f"({', '.join(d.name for d in candidates)}); "
            "pass one of them",
            results_dir,
        )
    raise InputError("no inference output files ({basename}_0.bin ... or .npy) found", results_dir)


def ground_truth_index(dataset):
    """file name and file stem -> (image id, height, width); a stem shared by two files maps to None."""
    index = {}
    for image in dataset["images"]:
        value = (image["id"], int(image["height"]), int(image["width"]))
        name = str(image["file_name"])
        index[("name", Path(name).name)] = value
        stem_key = ("stem", Path(name).stem)
        index[stem_key] = None if stem_key in index else value
    return index


def image_entries(results_dir, info_path, images_path):
    """(entries, model summary or None, causes of skipped .info lines) from the sidecar, the .info,
    infer's images.json or the files."""
    from retinamask.formats.outputs import list_output_basenames

    if images_path is not None:
        return (*read_run_sidecar(images_path), [])
    if info_path is not None:
        records, problems = read_info_lines(info_path, check_files=False)
        # sizes from the preprocess sidecar only (the seed's .info lists S x S)
        entries = [{"basename": r.name, CANVAS_SIDE_KEY: r.canvas_side, **r.original_geometry()} for r in records]
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


def resolve_geometry(layout, model_path, sidecar_model, canvas_side, results_dir, entries, resize=None):
    """The :class:`OutputGeometry` for reading the outputs: from the model file (``model_path``), else
    the infer run sidecar's model (``sidecar_model``), else the output files themselves; its resize
    policy from ``resize`` (a name or ResizePolicy), else the model's, else the seed's S x S.
    ``canvas_side``: S as asked for (``--input-size``), None: the model's or the outputs'."""
    geometry = _layout_and_size(layout, model_path, sidecar_model, canvas_side, results_dir, entries, resize)
    geometry = dataclasses.replace(geometry, policy=_resolve_policy(geometry, resize, sidecar_model, results_dir))
    _check_entry_policies(entries, geometry)
    return geometry


def _resolve_policy(geometry, resize, sidecar_model, results_dir):
    """The ResizePolicy that gives an image's resized size where the image list does not."""
    from retinamask.core.resize import SeedResize, policy_from_dict, policy_named

    if isinstance(resize, ResizePolicy):
        return resize
    base = geometry.policy
    if base is None and sidecar_model and isinstance(sidecar_model.get("resize"), dict):
        base = policy_from_dict(sidecar_model["resize"])
    if base is None:
        base = SeedResize(geometry.canvas_side or SEED_CANVAS_SIDE)
    try:
        return policy_named(base, resize)
    except ValueError as e:
        raise InputError(f"--resize {resize}: {e}", results_dir) from None


def _layout_and_size(layout, model_path, sidecar_model, canvas_side, results_dir, entries, resize=None):
    """The geometry without its policy (set only for a model file that takes any canvas)."""
    model = None
    if model_path is not None:
        model, info = _model_file_geometry(model_path, layout, canvas_side, resize, sidecar_model, results_dir)
        dynamic = info.dynamic_hw
    elif sidecar_model:
        model = _run_sidecar_geometry(sidecar_model, layout, canvas_side, results_dir)
        dynamic = sidecar_model.get("image_sizes_input") is not None

    if model is not None and model.layout in LAYOUTS and model.rows:
        if dynamic:  # a model that takes any canvas: no S
            geometry = dataclasses.replace(
                model, canvas_side=None, policy=info.resize if model_path is not None else None
            )
        else:
            geometry = dataclasses.replace(model, canvas_side=model.canvas_side or canvas_side or SEED_CANVAS_SIDE)
        return geometry
    return _probed_geometry(layout, canvas_side, results_dir, entries)


def _model_file_geometry(model_path, layout, canvas_side, resize, sidecar_model, results_dir):
    """(geometry, ModelInfo) of the model file, checked against the run sidecar's model when there is one."""
    from retinamask.formats.model_info import read_model_info

    info = read_model_info(
        model_path, layout=None if layout == "auto" else layout, canvas_side=canvas_side, resize=resize
    )
    model = OutputGeometry(
        layout=info.layout,
        rows=info.num_rows,
        mask_resolution=info.mask_resolution,
        canvas_side=info.canvas_side,
        max_detections=info.max_detections,
        nms_threshold=info.nms_threshold,
        source=str(model_path),
    )
    if sidecar_model:
        # another model's geometry would map every box wrongly and quietly give a wrong mAP
        for what, (field_name, value) in _sidecar_geometry(sidecar_model).items():
            if value is not None and value != getattr(model, field_name):
                raise InputError(
                    f"the model has {what} {getattr(model, field_name)}, but the outputs in {results_dir} came from a "
                    f"model with {what} {value} (their run sidecar); is this the model that made them?",
                    model_path,
                )
    return model, info


def _run_sidecar_geometry(sidecar_model, layout, canvas_side, results_dir):
    """The geometry the infer run sidecar's model gives, checked against ``--layout`` and ``--input-size``."""
    outputs = sidecar_model.get("outputs") or []
    model = OutputGeometry(
        layout=sidecar_model.get("layout"),
        rows=outputs[0]["shape"][0] if outputs else None,
        mask_resolution=sidecar_model.get("mask_resolution", DEFAULT_MASK_RESOLUTION),
        canvas_side=sidecar_model.get(CANVAS_SIDE_KEY),
        max_detections=sidecar_model.get("max_detections", DEFAULT_MAX_DETECTIONS),
        nms_threshold=sidecar_model.get("nms_threshold", DEFAULT_NMS_THRESHOLD),
        source="the infer run sidecar",
    )
    if layout != "auto" and model.layout != layout:
        raise InputError(
            f"--layout {layout}, but the outputs came from a {model.layout}-layout model ({model.source})",
            results_dir,
        )
    if canvas_side is not None and model.canvas_side not in (None, canvas_side):
        raise InputError(
            f"--input-size {canvas_side}, but the outputs came from a model with "
            f"S = {model.canvas_side} ({model.source})",
            results_dir,
        )
    return model


def _probed_geometry(layout, canvas_side, results_dir, entries):
    """No model description: the geometry read from the first image with output files."""
    from retinamask.formats.outputs import find_output_files, probe_output_geometry

    probe = None
    for entry in entries:
        try:
            probe = probe_output_geometry(find_output_files(results_dir, entry["basename"]))
            break
        except InputError:
            continue
    if probe is None:
        raise InputError(
            "could not read the outputs of any listed image to tell their layout; pass --layout and --model",
            results_dir,
        )
    rows, mask_resolution = probe
    if layout == "auto":
        layout = "seed" if rows == SEED_NUM_CANDIDATES else "end2end"
        logger.info("layout %s (from %d rows per output; pass --layout or --model to be explicit)", layout, rows)
    entry_sides = {e.get(CANVAS_SIDE_KEY) for e in entries} - {None}
    if canvas_side is None and len(entry_sides) == 1:
        canvas_side = entry_sides.pop()
    if canvas_side is None:
        canvas_side = SEED_CANVAS_SIDE
        logger.info("input size %d assumed (the seed's; pass --input-size or --model otherwise)", canvas_side)
    return OutputGeometry(
        layout=layout,
        rows=rows,
        mask_resolution=mask_resolution,
        canvas_side=canvas_side,
        max_detections=DEFAULT_MAX_DETECTIONS,
        nms_threshold=DEFAULT_NMS_THRESHOLD,
        source="the output files",
    )


def _sidecar_geometry(sidecar_model):
    """What an infer run sidecar says about the model that made the outputs: {its key: (the
    :class:`OutputGeometry` field, the value, None where it says nothing)}."""
    outputs = sidecar_model.get("outputs") or []
    return {
        "layout": ("layout", sidecar_model.get("layout")),
        CANVAS_SIDE_KEY: ("canvas_side", sidecar_model.get(CANVAS_SIDE_KEY)),
        "rows": ("rows", outputs[0]["shape"][0] if outputs else None),
    }


def _check_entry_policies(entries, geometry):
    """Before any output is decoded: the image list (a preprocess sidecar, or infer's list) may
    record the seed's canvas side S its inputs were made for; the model's resize policy must be
    that one (``infer`` refuses such pairs up front with the same line)."""
    from retinamask.core.resize import SeedResize, policy_named

    runs_seed = None
    if geometry.canvas_side is None and not isinstance(geometry.policy, SeedResize):
        runs_seed = policy_named(geometry.policy, "seed")  # what --resize seed would run on a dynamic-H/W model
    for side in sorted({e.get(CANVAS_SIDE_KEY) for e in entries} - {None}):
        try:
            check_inputs_policy(SeedResize(int(side)), geometry.policy, runs_seed)
        except InputError as e:
            where = geometry.source if geometry.source not in ("the output files", "the infer run sidecar") else None
            raise InputError(e.cause, where) from None


def job_for(entry, gt_images, geometry, results_dir, category_ids, convention):
    """(:class:`~.evaluate_jobs.EvaluateJob`, None) or (None, cause) for one listed image."""
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
        return None, (
            f"the annotation file says {width}x{height}, the image list {entry['width']}x{entry['height']} "
            "(another image with the same name?)"
        )
    canvas_side = geometry.canvas_side
    entry_side = entry.get(CANVAS_SIDE_KEY)
    if entry.get("resized_width") and entry.get("resized_height") and entry_side in (None, canvas_side):
        resized_hw = (int(entry["resized_height"]), int(entry["resized_width"]))
    else:
        resized_hw = geometry.policy.geometry(height, width).resized_hw
    job = EvaluateJob(
        results_dir=str(results_dir),
        basename=basename,
        image_id=image_id,
        image_hw=(height, width),
        resized_hw=resized_hw,
        layout=geometry.layout,
        rows=geometry.rows,
        mask_resolution=geometry.mask_resolution,
        nms_threshold=geometry.nms_threshold,
        max_detections=geometry.max_detections,
        category_ids=tuple(category_ids),
        convention=convention,
        canvas_side=canvas_side,
        clip=geometry.policy.clip_to_image,
    )
    return job, None
