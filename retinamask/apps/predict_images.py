"""Run a predictor over images and write overlays + detection JSON (torch-free loop)."""

import logging
from pathlib import Path

from retinamask.core.errors import EXIT_ITEMS_FAILED, EXIT_OK, InputError, RetinaMaskError
from retinamask.core.fileio import atomic_write_json
from retinamask.formats.images import list_images, load_image_rgb
from retinamask.ops.coco_results import detections_to_json
from retinamask.ops.draw import write_overlay

log = logging.getLogger(__name__)


def collect_images(inputs):
    """Image paths from files and folders (folders expanded, sorted); duplicates removed."""
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths.extend(list_images(item))
        elif item.exists():
            paths.append(item)
        else:
            raise InputError("no such file or folder", path=item)
    return list(dict.fromkeys(paths))


def predict_images(predict, images, output_dir, score_threshold=0.3, strict=False, progress=None):
    """``predict(rgb uint8 [H, W, 3]) -> Detections`` over ``images``; writes, per image,
    ``{stem}.png`` (overlay) and ``{stem}.json`` (all detections, masks as RLE) into ``output_dir``.

    Bad images (and images whose stem another image of the run already took, which would
    overwrite its outputs) are reported (file + cause) and skipped; ``strict`` raises the first.
    progress: a tqdm bar (None: only on a terminal). Returns a summary dict with the failures.
    """
    import sys

    from tqdm import tqdm

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    failures, written, stems = [], [], {}
    show = sys.stderr.isatty() if progress is None else progress
    for path in tqdm(images, desc="predict", unit="img", disable=not show):
        try:
            if path.stem in stems:
                raise InputError(
                    f"same name as {stems[path.stem]}: its outputs {path.stem}.png/.json would be "
                    "overwritten (rename one, or run them separately)",
                    path=path,
                )
            stems[path.stem] = path
            rgb = load_image_rgb(path)
            prediction = predict(rgb)
        except RetinaMaskError as e:
            if strict:
                raise
            log.error("%s", e)
            failures.append({"file": str(path), "cause": e.cause})
            continue
        record = {"image": str(path), **detections_to_json(prediction)}
        atomic_write_json(output_dir / f"{path.stem}.json", record)
        write_overlay(output_dir / f"{path.stem}.png", rgb, prediction, score_threshold)
        written.append(str(path))
    return {
        "written": written,
        "failed": failures,
        "output_dir": str(output_dir),
        "exit_code": EXIT_ITEMS_FAILED if failures else EXIT_OK,
    }
