"""The run sidecar of ``retinamask infer``: ``images.json`` in the output folder.

It holds the run's settings (model file and digest, layout, output format: what makes earlier
outputs in the folder reusable), the model's interface and, per image, ``basename, source,
file_name, width, height, resized_width, resized_height, scale, canvas_width, canvas_height,
outputs`` and S (:data:`CANVAS_SIDE_KEY`), plus the failed items. ``finished`` is False while the run goes on.
``evaluate`` reads it (or a preprocess sidecar, ``<info>.json``) as its image list.
"""

import hashlib
import json
import logging
from pathlib import Path

from retinamask.core.contract import CANVAS_SIDE_KEY
from retinamask.core.errors import InputError
from retinamask.core.fileio import atomic_write_json
from retinamask.formats.outputs import list_output_basenames

logger = logging.getLogger(__name__)

SIDECAR_NAME = "images.json"
SIDECAR_FORMAT = "retinamask.infer/1"


def run_settings(info, outfmt, legacy_names):
    """What makes earlier outputs in the folder reusable: the same model (by content: a retrained
    model of the same architecture has the same size) and file format. ``info``: the model's
    :class:`~retinamask.formats.model_info.ModelInfo`."""
    model_path = Path(info.path)
    try:
        model_bytes = model_path.stat().st_size
        with open(model_path, "rb") as f:
            model_sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        model_bytes = model_sha256 = None
    return {
        "model_name": model_path.name,
        "model_bytes": model_bytes,
        "model_sha256": model_sha256,
        "layout": info.layout,
        CANVAS_SIDE_KEY: info.canvas_side,
        **({} if info.canvas_side else {"resize": info.resize.to_dict()}),
        "outputs": [[o.name, o.dtype.name, list(o.shape)] for o in info.outputs],
        "outfmt": outfmt,
        "legacy_names": bool(legacy_names),
    }


def earlier_records(sidecar_path, settings, out_dir):
    """Records of an earlier run in this folder by basename, or None when its outputs must be
    redone: that run used another model or format, or there is no sidecar to say which."""
    if not sidecar_path.exists():
        if list_output_basenames(out_dir):
            logger.info(
                "%s: output files without a run sidecar (%s): which model made them is unknown; every image is redone",
                out_dir,
                SIDECAR_NAME,
            )
        return None
    try:
        earlier = json.loads(sidecar_path.read_text(encoding="utf-8"))
        if earlier.get("settings") != settings:
            logger.info("%s: the earlier run used another model or output format; every image is redone", sidecar_path)
            return None
        return {r["basename"]: r for r in earlier["images"]}
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("%s: unreadable earlier run sidecar; every image is redone", sidecar_path)
        return None


def write_run_sidecar(path, settings, info, input_path, records, failed, finished=True):
    """``finished``: False while the run goes on, so that a reader can tell the sidecar of a killed run
    (it lists only the images done before that run started)."""
    atomic_write_json(
        path,
        {
            "format": SIDECAR_FORMAT,
            "finished": finished,
            "settings": settings,
            "model": info.summary(),
            "input": str(input_path),
            "images": records,
            "failed": [{"file": f["file"], "cause": f["cause"]} for f in failed],
        },
    )


def read_run_sidecar(path):
    """Load an infer run sidecar (``images.json``) or a preprocess sidecar (``*.info.json``).

    Returns (entries, model summary or None): entries are dicts with at least
    ``basename``, and, where known, ``file_name, width, height, resized_width,
    resized_height`` and S (:data:`CANVAS_SIDE_KEY`). Raises InputError naming the file if unusable.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("image list (sidecar) not found", path) from None
    except (OSError, ValueError) as e:
        raise InputError(f"not a readable JSON sidecar ({e})", path) from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError("not an infer or preprocess sidecar: no 'images' list", path)
    if data.get("finished") is False:
        logger.warning(
            "%s: the infer run that wrote it has not finished (killed, or still running): it lists only "
            "the %d images done before that run started; rerun infer with the same --output_dirname to "
            "complete the outputs",
            path,
            len(data["images"]),
        )
    entries = []
    for position, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise InputError(f"images[{position}] is not an object", path)
        entry = dict(entry)
        if "basename" not in entry:
            if "bin_name" not in entry:
                raise InputError(f"images[{position}] has neither 'basename' nor 'bin_name'", path)
            entry["basename"] = Path(entry["bin_name"]).stem
        entry.setdefault(CANVAS_SIDE_KEY, data.get(CANVAS_SIDE_KEY))
        entries.append(entry)
    return entries, data.get("model")
