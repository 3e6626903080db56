"""Run a predictor over images and write overlays + detection JSON (torch-free loop)."""

import logging
from pathlib import Path

from ..data.image_io import list_images, load_image_rgb
from ..errors import EXIT_ITEMS_FAILED, EXIT_OK, InputError
from ..fileio import atomic_write_json
from ..visualization import write_overlay

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


def predict_images(predict, images, output_dir, score_threshold=0.3, strict=False, progress=True):
    """``predict(rgb uint8 [H, W, 3]) -> Prediction`` over ``images``; writes, per image,
    ``{stem}.png`` (overlay) and ``{stem}.json`` (all detections, masks as RLE) into ``output_dir``.

    Bad images are reported (file + cause) and skipped; returns a summary dict with the failures.
    """
    from tqdm import tqdm

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    failures, written = [], []
    for path in tqdm(images, desc="predict", unit="img", disable=not progress):
        try:
            rgb = load_image_rgb(path)
        except InputError as e:
            if strict:
                raise
            log.error("%s", e)
            failures.append({"file": str(path), "cause": e.cause})
            continue
        prediction = predict(rgb)
        record = {"image": str(path), **prediction.to_json()}
        atomic_write_json(output_dir / f"{path.stem}.json", record)
        write_overlay(output_dir / f"{path.stem}.png", rgb, prediction, score_threshold)
        written.append(str(path))
        shown = sum(1 for s in prediction.scores if s >= score_threshold)
        log.debug("%s: %d detections (%d >= %.2f)", path, len(prediction), shown, score_threshold)
    return {"written": written, "failed": failures, "output_dir": str(output_dir),
            "exit_code": EXIT_ITEMS_FAILED if failures else EXIT_OK}
