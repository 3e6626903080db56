"""What ``evaluate`` reads before it decodes: the outputs folder, the image list, the ground truth
index and the geometry (layout, rows, resize policy) that maps each image's outputs back."""

import logging
from pathlib import Path

from retinamask.core.contract import LAYOUTS, SEED_CANVAS_SIDE, SEED_NUM_CANDIDATES
from retinamask.core.errors import InputError

logger = logging.getLogger(__name__)


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
            f"no output files here, and {len(candidates)} subfolders have some "
            f"({', '.join(d.name for d in candidates)}); "
            "pass one of them",
            results_dir,
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
    from retinamask.formats.outputs import list_output_basenames
    from retinamask.runtime.infer import SIDECAR_NAME, read_run_sidecar

    if images_path is not None:
        return (*read_run_sidecar(images_path), [])
    if info_path is not None:
        from retinamask.data.preprocess import read_info_lines

        records, problems = read_info_lines(info_path, check_files=False)
        entries = []
        for record in records:
            entry = {"basename": record.name, "input_size": record.input_size}
            if record.file_name is not None:  # sizes from the preprocess sidecar (the seed's .info lists S x S)
                entry.update(
                    file_name=record.file_name,
                    width=record.width,
                    height=record.height,
                    resized_width=record.resized_width,
                    resized_height=record.resized_height,
                )
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
        base = SeedResize(geometry["input_size"] or SEED_CANVAS_SIDE)
    try:
        return policy_named(base, resize)
    except ValueError as e:
        raise InputError(f"--resize {resize}: {e}", results_dir) from None


def _resolve_layout_and_size(layout, model_path, sidecar_model, input_size, results_dir, entries, resize=None):
    from retinamask.formats.model_info import DEFAULT_MASK_RESOLUTION, read_model_info
    from retinamask.formats.outputs import find_output_files, probe_output_geometry

    model = None
    if model_path is not None:
        info = read_model_info(
            model_path, layout=None if layout == "auto" else layout, input_size=input_size, resize=resize
        )
        model = {
            "layout": info.layout,
            "rows": info.num_rows,
            "mask_resolution": info.mask_resolution,
            "input_size": info.input_size,
            "max_detections": info.max_detections,
            "nms_threshold": info.nms_threshold,
            "source": str(model_path),
        }
        if sidecar_model:
            # another model's geometry would map every box wrongly and quietly give a wrong mAP
            made_by = _sidecar_geometry(sidecar_model)
            for what, value in made_by.items():
                if value is not None and value != model[what]:
                    raise InputError(
                        f"the model has {what} {model[what]}, but the outputs in {results_dir} came from a model "
                        f"with {what} {value} (their run sidecar); is this the model that made them?",
                        model_path,
                    )
    elif sidecar_model:
        outputs = sidecar_model.get("outputs") or []
        rows = outputs[0]["shape"][0] if outputs else None
        model = {
            "layout": sidecar_model.get("layout"),
            "rows": rows,
            "mask_resolution": sidecar_model.get("mask_resolution", DEFAULT_MASK_RESOLUTION),
            "input_size": sidecar_model.get("input_size"),
            "max_detections": sidecar_model.get("max_detections", 100),
            "nms_threshold": sidecar_model.get("nms_threshold", 0.4),
            "source": "the infer run sidecar",
        }
        if layout != "auto" and model["layout"] != layout:
            raise InputError(
                f"--layout {layout}, but the outputs came from a {model['layout']}-layout model ({model['source']})",
                results_dir,
            )
        if input_size is not None and model["input_size"] not in (None, input_size):
            raise InputError(
                f"--input-size {input_size}, but the outputs came from a model with "
                f"S = {model['input_size']} ({model['source']})",
                results_dir,
            )

    if model is not None and model["layout"] in LAYOUTS and model["rows"]:
        dynamic = (model_path is not None and info.dynamic_hw) or (
            model_path is None and sidecar_model.get("image_sizes_input") is not None
        )
        if dynamic:  # a model that takes any canvas: no S
            geometry = {**model, "input_size": None}
            if model_path is not None:
                geometry["policy"] = info.resize
        else:
            geometry = {**model, "input_size": model["input_size"] or input_size or SEED_CANVAS_SIDE}
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
        raise InputError(
            "could not read the outputs of any listed image to tell their layout; pass --layout and --model",
            results_dir,
        )
    rows, mask_resolution = probe
    if layout == "auto":
        layout = "seed" if rows == SEED_NUM_CANDIDATES else "end2end"
        logger.info("layout %s (from %d rows per output; pass --layout or --model to be explicit)", layout, rows)
    entry_sizes = {e.get("input_size") for e in entries} - {None}
    if input_size is None and len(entry_sizes) == 1:
        input_size = entry_sizes.pop()
    if input_size is None:
        input_size = SEED_CANVAS_SIDE
        logger.info("input size %d assumed (the seed's; pass --input-size or --model otherwise)", input_size)
    return {
        "layout": layout,
        "rows": rows,
        "mask_resolution": mask_resolution,
        "input_size": input_size,
        "max_detections": 100,
        "nms_threshold": 0.4,
        "source": "the output files",
    }


def _sidecar_geometry(sidecar_model):
    """What an infer run sidecar says about the model that made the outputs (None where it says nothing)."""
    outputs = sidecar_model.get("outputs") or []
    return {
        "layout": sidecar_model.get("layout"),
        "input_size": sidecar_model.get("input_size"),
        "rows": outputs[0]["shape"][0] if outputs else None,
    }


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
        return None, (
            f"the annotation file says {width}x{height}, the image list {entry['width']}x{entry['height']} "
            "(another image with the same name?)"
        )
    input_size = geometry["input_size"]
    entry_size = entry.get("input_size")
    if entry.get("resized_width") and entry.get("resized_height") and entry_size in (None, input_size):
        resized_hw = (int(entry["resized_height"]), int(entry["resized_width"]))
    else:
        resized_hw = geometry["policy"].geometry(height, width).resized_hw
    job = (
        str(results_dir),
        basename,
        image_id,
        (height, width),
        resized_hw,
        geometry["layout"],
        geometry["rows"],
        geometry["mask_resolution"],
        geometry["nms_threshold"],
        geometry["max_detections"],
        tuple(category_ids),
        convention,
        input_size,
        geometry["policy"].clip_to_image,
    )
    return job, None
