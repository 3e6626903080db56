"""Images -> seed-compatible input files: one raw float32 ``.bin`` per image, a
``.info`` list and a JSON sidecar (read back by :mod:`retinamask.formats.bins`).

The resize policy (``retinamask.core.geometry``; ``resize``) decides each image's canvas: the
seed's S x S square (default, described below), or the ``original`` / ``buckets``
canvases, whose .bin files are float32 [1, 3, H, W] with H, W per image: the sidecar's
``canvas_width`` / ``canvas_height`` say which (the .info line format is the same).

Outputs of :func:`preprocess_images` (``S`` = the seed policy's canvas side, 1344 by default):

``{bin_dir}/{stem}.bin``
    The seed's byte layout: raw little-endian float32, NCHW [1, 3, S, S]
    (S*S*3*4 bytes), BGR minus PIXEL_MEAN, std 1, the image resized so its long
    side is S (see ``transforms.seed_resize_geometry``) and zero-padded
    bottom/right. ``stem`` is the image file name without its last extension
    (``a.b.jpg`` -> ``a.b.bin``).
``{info}``
    One line per image that succeeded, sorted by image file name:
    ``index bin_path width height``; index from 0; ``bin_path`` is ``bin_dir``
    (as given) joined with the .bin name; width/height are the ORIGINAL image size
    (the seed wrote the input size there). Paths may contain spaces: the first
    field is the index and the last two are the size, everything between is the path.
``{info}.json`` (the sidecar)
    Settings (S, mean, std, tensor layout, folders) and, per image,
    ``index, file_name, bin_name, width, height, resized_width, resized_height,
    scale``, S, ``mean, std`` (S under the key ``CANVAS_SIDE_KEY``; ``scale`` = S / max(width, height): divide
    boxes by it), plus the failed images and their causes.

Every file is written atomically, so a ``.bin`` that exists with the right byte
size is complete: a rerun skips it (unless its image is newer, or the sidecar
of an earlier run says other settings were used).
"""

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from retinamask.core import jobs
from retinamask.core.errors import InputError, OutputError
from retinamask.core.fileio import atomic_open, atomic_write_json, atomic_write_text, remove_stale_temp_files
from retinamask.core.resize import ResizePolicy, SeedResize
from retinamask.data.transforms import PIXEL_MEAN, PIXEL_STD, policy_preprocess
from retinamask.formats.bins import BIN_DTYPE, CANVAS_SIDE_KEY, bin_nbytes, sidecar_path_for, sidecar_policy
from retinamask.formats.images import IMAGE_EXTENSIONS, list_images, load_image_rgb

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "retinamask.preprocess/1"
WORKER_LIMIT = 4  # default --workers: min(4, CPUs this process may use)
# the seed policy's rule as its sidecar words it (S named by its key)
SEED_RESIZE_RULE = (
    f"PIL bilinear; long side = {CANVAS_SIDE_KEY}, short side = floor(short * {CANVAS_SIDE_KEY} / long); "
    f"zero padding bottom/right after normalisation; scale = {CANVAS_SIDE_KEY} / long side"
)


@dataclass(frozen=True)
class PreprocessTask:
    """One image to write as a .bin (picklable: it runs in a worker process)."""

    image_path: str
    bin_path: str
    policy: ResizePolicy
    mean: tuple
    std: tuple
    allow_resume: bool  # an existing complete .bin may be kept (the earlier run's settings match)


def preprocess_images(
    image_dir,
    bin_dir,
    info_path,
    workers=None,
    strict=False,
    mean=PIXEL_MEAN,
    std=PIXEL_STD,
    progress=None,
    resize=None,
):
    """Preprocess every image in ``image_dir`` (see the module docstring for outputs).

    ``resize``: a :class:`~retinamask.core.resize.ResizePolicy` (None: the seed policy, canvas
    1344 x 1344).

    ``workers``: processes (None: ``jobs.default_workers(WORKER_LIMIT)``; 1: in this process).
    ``strict``: stop at the first bad image by raising its InputError (bins already
    written stay, the .info is not written); otherwise bad images are logged one
    line each, skipped and listed in the summary. ``progress``: tqdm bar (None:
    only on a terminal).

    Returns a summary dict: ``total`` (images found), ``written`` (new .bin files),
    ``resumed`` (existing complete .bin files kept), ``failed`` (list of
    ``{"file", "cause"}``), ``info_path``, ``sidecar_path``, ``bin_dir``,
    S (under ``CANVAS_SIDE_KEY``; None for a policy other than the seed's), ``records`` (the
    sidecar's per-image entries).
    Raises InputError for problems that stop everything: no images, bad settings,
    unwritable outputs.
    """
    policy = SeedResize() if resize is None else resize
    canvas_side = policy.size if isinstance(policy, SeedResize) else None
    workers = jobs.default_workers(WORKER_LIMIT) if workers is None else _positive_int(workers, "workers")
    mean = tuple(float(m) for m in mean)
    std = tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise InputError(f"mean and std need 3 values each and std no zero, got mean={mean} std={std}")
    bin_dir_as_given = str(bin_dir)
    bin_dir, info_path = Path(bin_dir), Path(info_path)
    sidecar_path = sidecar_path_for(info_path)

    images = list_images(image_dir)
    if not images:
        raise InputError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) found", image_dir)
    try:
        bin_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder: {e.strerror or e}", bin_dir) from None
    remove_stale_temp_files(bin_dir)  # 21.7 MB each at S = 1344 when a run was killed mid-write

    allow_resume = _earlier_settings_match(sidecar_path, canvas_side, mean, std, policy)
    failures = jobs.Failures(strict, logger)
    tasks = []
    for image_path, problem in _plan_bin_names(images):
        if problem is not None:
            failures.add(image_path, problem)
            continue
        bin_path = bin_dir / (image_path.stem + ".bin")
        tasks.append(PreprocessTask(str(image_path), str(bin_path), policy, mean, std, allow_resume))
    records, written, resumed = _run_tasks(tasks, workers, progress, failures)

    for index, record in enumerate(records):
        record["index"] = index
    failed = sorted(failures.items, key=lambda f: Path(f["file"]).name)
    _warn_about_unlisted_bins(bin_dir, {r["bin_name"] for r in records})

    sidecar = _sidecar(canvas_side, policy, mean, std, image_dir, bin_dir, records, failed)
    info_lines = [
        f"{r['index']} {os.path.join(bin_dir_as_given, r['bin_name'])} {r['width']} {r['height']}\n" for r in records
    ]
    atomic_write_json(sidecar_path, sidecar)
    atomic_write_text(info_path, "".join(info_lines))

    return {
        "total": len(images),
        "written": written,
        "resumed": resumed,
        "failed": failed,
        "info_path": str(info_path),
        "sidecar_path": str(sidecar_path),
        "bin_dir": str(bin_dir),
        CANVAS_SIDE_KEY: canvas_side,
        "records": records,
    }


def _run_tasks(tasks, workers, progress, failures):
    """Run ``tasks`` (in worker processes when ``workers`` > 1) with a progress bar: returns
    (sidecar records of the images done, in task order; .bin files written; .bin files kept).
    A bad image goes to ``failures``; an unwritable output raises OutputError."""
    records, written, resumed = [], 0, 0
    with jobs.progress_bar("preprocess", len(tasks), progress) as bar:
        try:
            for _, outcome in jobs.map_ordered(_process_one, tasks, workers):
                status = outcome[0]
                if status == "output_error":
                    raise OutputError(outcome[2], outcome[1])
                if status == "failed":
                    _, image_path, cause = outcome
                    failures.add(image_path, cause)
                else:
                    _, record, was_resumed = outcome
                    resumed += was_resumed
                    written += not was_resumed
                    records.append(record)
                bar.update()
        except jobs.WorkerDied as died:
            raise InputError(
                "a worker process died (killed for lack of memory, or crashed in an image decoder) "
                "while this image or one near it was being processed; finished .bin files are kept "
                "and a rerun resumes; --workers 1 pinpoints the image",
                died.job.image_path,
            ) from None
    return records, written, resumed


def _sidecar(canvas_side, policy, mean, std, image_dir, bin_dir, records, failed):
    """The sidecar JSON document (``canvas_side`` None: a policy other than the seed's)."""
    sidecar = {
        "format": SIDECAR_FORMAT,
        CANVAS_SIDE_KEY: canvas_side,
        "mean": list(mean),
        "std": list(std),
        "tensor": {
            "shape": [1, 3, canvas_side, canvas_side] if canvas_side else [1, 3, "canvas_height", "canvas_width"],
            "dtype": "float32",
            "byte_order": "little",
            "layout": "NCHW",
            "channel_order": "BGR",
        },
        "resize": SEED_RESIZE_RULE,
        "image_dir": str(Path(image_dir).resolve()),
        "bin_dir": str(bin_dir.resolve()),
        "images": records,
        "failed": [{"file_name": Path(f["file"]).name, "cause": f["cause"]} for f in failed],
    }
    if canvas_side is None:  # the seed policy's sidecar stays as it always was
        sidecar["resize"] = policy.to_dict()
        sidecar["resize_rule"] = (
            f"{policy.describe()}; PIL bilinear; zero padding bottom/right to each image's "
            "canvas_height x canvas_width after normalisation; boxes map back per axis: "
            "x * width / resized_width, y * height / resized_height"
        )
    return sidecar


def _positive_int(value, name):
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number != value or number <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return number


def _plan_bin_names(images):
    """Yield (image_path, problem or None) in order. Two images whose .bin names
    differ only by letter case would overwrite each other on case-insensitive file
    systems, so only the first one of such a group gets its name."""
    owner_by_key = {}
    for image_path in images:
        name = image_path.stem + ".bin"
        if "\n" in name or "\r" in name:
            yield image_path, "file name contains a line break, which the .info format cannot hold"
            continue
        key = name.casefold()
        if key in owner_by_key:
            yield (
                image_path,
                (
                    f"its output {name} would be the same file as that of {owner_by_key[key].name} "
                    "(same name without extension); rename one of them"
                ),
            )
            continue
        owner_by_key[key] = image_path
        yield image_path, None


def _earlier_settings_match(sidecar_path, canvas_side, mean, std, policy=None):
    """True when existing .bin files may be kept: there is no earlier sidecar, or it
    records the same canvas side S (resize policy), mean and std."""
    if not sidecar_path.exists():
        return True
    try:
        earlier = json.loads(sidecar_path.read_text(encoding="utf-8"))
        same = (
            earlier[CANVAS_SIDE_KEY] == canvas_side
            and (policy is None or sidecar_policy(earlier) in (None, policy.to_dict()))
            and tuple(earlier["mean"]) == mean
            and tuple(earlier["std"]) == std
        )
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("%s: unreadable earlier sidecar; every image is redone", sidecar_path)
        return False
    if not same:
        logger.info("%s: earlier run used other settings; every image is redone", sidecar_path)
    return same


def _process_one(task):
    """One image -> its .bin. Runs in a worker process.

    Returns ("ok", record, resumed), ("failed", image_path, cause) for a bad image,
    or ("output_error", path, cause) when the output cannot be written (fatal).
    """
    policy, mean, std = task.policy, task.mean, task.std
    image_path, bin_path = Path(task.image_path), Path(task.bin_path)
    try:
        geometry = None
        if task.allow_resume and bin_path.exists():
            geometry = policy.geometry(*_stored_size(image_path))
        if geometry is not None and _complete_bin_exists(bin_path, image_path, geometry.canvas_hw):
            resumed = True
        else:
            image = load_image_rgb(image_path)
            tensor, geometry = policy_preprocess(image, policy, mean, std)
            del image
            try:
                with atomic_open(bin_path, "wb") as f:
                    tensor.astype(BIN_DTYPE, copy=False).tofile(f)
            except OutputError as e:
                return ("output_error", str(bin_path), e.cause)
            resumed = False
    except InputError as e:
        return ("failed", str(image_path), e.cause)
    except MemoryError:
        return ("failed", str(image_path), "not enough memory to preprocess this image")
    except Exception as e:  # one odd file must not stop a run over thousands
        return (
            "failed",
            str(image_path),
            f"cannot preprocess (unexpected {type(e).__name__}: {' '.join(str(e).split())[:200]})",
        )
    (height, width), resized_hw = geometry.image_hw, geometry.resized_hw
    record = {
        "index": None,
        "file_name": image_path.name,
        "bin_name": bin_path.name,
        "width": int(width),
        "height": int(height),
        "resized_width": int(resized_hw[1]),
        "resized_height": int(resized_hw[0]),
        # the seed's ratio, bit-exact with seed_resize_geometry's
        "scale": policy.size / max(height, width) if isinstance(policy, SeedResize) else geometry.seed_scale,
        CANVAS_SIDE_KEY: policy.size if isinstance(policy, SeedResize) else None,
        "mean": list(mean),
        "std": list(std),
    }
    if not isinstance(policy, SeedResize):  # the seed's sidecar stays as it was
        record.update(canvas_width=int(geometry.canvas_hw[1]), canvas_height=int(geometry.canvas_hw[0]))
    return ("ok", record, resumed)


def _complete_bin_exists(bin_path, image_path, canvas_hw):
    try:
        bin_stat = bin_path.stat()
        image_mtime = image_path.stat().st_mtime_ns
    except OSError:
        return False
    return bin_stat.st_size == bin_nbytes(canvas_hw) and bin_stat.st_mtime_ns >= image_mtime


def _stored_size(image_path):
    """(height, width) from the image header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(image_path) as img:
            width, height = img.size
    except Exception as e:
        raise InputError(f"cannot read the image header ({type(e).__name__}: {e})", image_path) from None
    return height, width


def _warn_about_unlisted_bins(bin_dir, listed_names):
    try:
        unlisted = sorted(p.name for p in bin_dir.glob("*.bin") if p.name not in listed_names)
    except OSError:
        return
    if unlisted:
        logger.warning(
            "%s: %d .bin file(s) not from this run's images (e.g. %s); they are not in the .info, "
            "but tools that read the whole folder will see them",
            bin_dir,
            len(unlisted),
            unlisted[0],
        )
