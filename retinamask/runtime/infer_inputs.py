"""The inputs of ``retinamask infer``: collecting the items of a folder, an .info list or one file,
and loading each one (an image decoded and preprocessed through the resize policy, or a .bin read)
into its float32 [3, H, W] canvas, in worker processes, in item order."""

import contextlib
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinamask.core import jobs
from retinamask.core.contract import IMAGE_EXTENSIONS
from retinamask.core.errors import InputError
from retinamask.core.resize import ResizePolicy, SeedResize, policy_named
from retinamask.formats.bins import bin_nbytes, check_inputs_policy, inputs_policy, read_bin, read_info_lines
from retinamask.formats.outputs import output_file_name
from retinamask.formats.run_sidecar import CANVAS_SIDE_KEY

logger = logging.getLogger(__name__)


@dataclass
class InputItem:
    """One image to run: ``basename`` names its outputs; ``record`` becomes its sidecar entry."""

    basename: str
    source: Path  # the image or .bin file
    kind: str  # "image" or "bin"
    record: dict = field(default_factory=dict)


def collect_items(input_path, canvas_side, policy=None):
    """The items of a folder (images or .bin files), an .info list, or one file.

    ``canvas_side``: S of a square model (None: a dynamic-H/W model, whose .bin inputs need an
    .info sidecar giving their canvases); ``policy``: the run's resize policy.

    Returns (items in order, failed list of {"file", "cause", "listing": True}) where
    failed are items refused before loading (two images with the same basename, bad
    .info lines).
    Raises InputError when the input cannot be used at all, e.g. .bin files or an
    .info sidecar made for another input size than the model's.
    """
    path = Path(input_path)
    if not path.exists():
        raise InputError("input not found", path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".info":
            return _items_from_info(path, canvas_side, policy)
        if suffix == ".bin":
            _check_bin_size(path, canvas_side, policy)
            return [InputItem(path.stem, path, "bin", {"basename": path.stem, "source": str(path)})], []
        if suffix in IMAGE_EXTENSIONS:
            return _items_from_images([path])
        raise InputError("expected a folder, an .info list, a .bin or an image file", path)
    try:
        entries = sorted(p for p in path.iterdir() if p.is_file())
    except OSError as e:
        raise InputError(f"cannot list the folder: {e.strerror or e}", path) from None
    bins = [p for p in entries if p.suffix.lower() == ".bin"]
    images = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
    if bins and images:
        raise InputError(
            f"the folder holds both .bin files ({len(bins)}) and images ({len(images)}); "
            "pass an .info list or a folder with one kind",
            path,
        )
    if bins:
        _check_bin_size(bins[0], canvas_side, policy)
        return [InputItem(p.stem, p, "bin", {"basename": p.stem, "source": str(p)}) for p in bins], []
    return _items_from_images(images)


def _items_from_images(images):
    items, failed, owner = [], [], {}
    for image in images:
        key = image.stem.casefold()
        if key in owner:
            cause = f"same basename as {owner[key].name}: its outputs would overwrite that image's; rename one"
            logger.warning("%s: %s", image, cause)
            failed.append({"file": str(image), "cause": cause, "listing": True})
            continue
        owner[key] = image
        items.append(
            InputItem(
                image.stem, image, "image", {"basename": image.stem, "source": str(image), "file_name": image.name}
            )
        )
    return items, failed


def _items_from_info(info_path, canvas_side, policy=None):
    records, problems = read_info_lines(info_path, check_files=False)
    failed = []
    for cause in problems:
        logger.warning("%s: %s", info_path, cause)
        failed.append({"file": str(info_path), "cause": cause, "listing": True})
    _check_policies(records, canvas_side, policy, info_path)
    items = []
    for record in records:
        canvas = record.canvas_hw
        if canvas_side is not None and canvas is not None and canvas != (canvas_side, canvas_side):
            raise InputError(
                f"the .info's sidecar says its .bin files are {canvas[0]}x{canvas[1]} inputs, "
                f"the model takes {canvas_side}x{canvas_side}",
                info_path,
            )
        if canvas_side is None and canvas is None:
            raise InputError(
                "a model that takes any canvas needs each .bin's canvas and valid region: pass the "
                ".info of `retinamask preprocess` with its sidecar (<info>.json) beside it",
                info_path,
            )
        entry = {"basename": record.name, "source": str(record.bin_path), "file_name": record.file_name}
        if record.file_name is not None:  # a sidecar gave the original geometry
            entry.update(record.original_geometry(), scale=record.scale, **{CANVAS_SIDE_KEY: record.canvas_side})
            if canvas is not None:
                entry.update(canvas_height=canvas[0], canvas_width=canvas[1])
        items.append(InputItem(record.name, Path(record.bin_path), "bin", entry))
    return items, failed


def _check_policies(records, canvas_side, policy, info_path):
    """Before anything runs: the resize policy the .info's sidecar says its .bin files were made
    with against the model's (``policy``; a square model of side ``canvas_side`` runs the seed's).
    InputError (one line naming both, and the ways out) when they do not match; one log line when
    they differ but run as they are."""
    model = policy if policy is not None else (SeedResize(canvas_side) if canvas_side else None)
    runs_seed = None
    if canvas_side is None and model is not None and not isinstance(model, SeedResize):
        runs_seed = policy_named(model, "seed")  # what --resize seed would run on this dynamic-H/W model
    said = set()
    for made_with in dict.fromkeys(inputs_policy(r.canvas_side, r.resize) for r in records):
        try:
            note = check_inputs_policy(made_with, model, runs_seed)
        except InputError as e:
            raise InputError(e.cause, info_path) from None
        if note is not None and note not in said:
            said.add(note)
            getattr(logger, note[0])("%s: %s", info_path, note[1])
        if canvas_side is None and isinstance(made_with, SeedResize) and made_with == model:
            logger.info(
                "%s: running the seed's %dx%d .bin canvases on this model that takes any canvas, each image's "
                "valid region as image_sizes, boxes mapped back with the .bin geometry (the seed's resize)",
                info_path,
                made_with.size,
                made_with.size,
            )


def _check_bin_size(bin_path, canvas_side, policy=None):
    """Refuse a .bin folder made for another input size (checked on its first file); a model that
    takes any canvas refuses bare .bin files (the seed's S x S inputs, when their size says so)."""
    size = bin_path.stat().st_size
    side = round((size / 12) ** 0.5)
    square = side > 0 and bin_nbytes(side) == size
    if canvas_side is None:
        if square and policy is not None:
            try:
                check_inputs_policy(SeedResize(side), policy)
            except InputError as e:
                raise InputError(e.cause, bin_path) from None
        raise InputError(
            "a model that takes any canvas needs each .bin's canvas and valid region: pass the .info "
            "of `retinamask preprocess` (with its sidecar) instead of bare .bin files",
            bin_path,
        )
    if size == bin_nbytes(canvas_side):
        return
    if square:
        raise InputError(
            f"holds a float32 [1, 3, {side}, {side}] input, the model takes [B, 3, {canvas_side}, {canvas_side}] "
            "(preprocess with --input_size matching the model)",
            bin_path,
        )


def load_inputs(items, info, workers):
    """Yield (item, tensor [3,H,W] or None, extra record fields, cause or None) in item order.
    A tensor may be a view of shared memory that is valid only until the next item is
    requested: copy it before that.

    Images are decoded and preprocessed by a process pool, .bin files read by a
    thread pool (``workers`` 0: everything in this process); at most ``window`` items are in
    flight (Pool.imap would read ahead without bound, and each input is 3*S*S*4 bytes = 21.7 MB
    at S = 1344). Worker processes hand tensors back through shared memory, one slot per item in
    flight: pickling them through the pool's pipe took longer than preprocessing itself.
    """
    load_jobs = [load_job(item, info) for item in items]
    if not load_jobs:
        return
    if workers == 0:
        for item, job in zip(items, load_jobs):
            yield (item, *load_item(job))
        return
    window = 2 * workers + 2
    slots = None
    if any(item.kind == "image" for item in items):
        window = min(window, len(load_jobs))
        shared, slots = _shared_slots(window, info.resize.max_canvas_hw)
        load_jobs = [dataclasses.replace(job, slot=index % window) for index, job in enumerate(load_jobs)]
        pool = jobs.worker_pool(min(workers, len(load_jobs)), initializer=_init_loader, initargs=(shared, slots.shape))
    else:
        pool = ThreadPoolExecutor(1)
    try:
        with contextlib.closing(jobs.ordered_bounded(pool, load_item, load_jobs, window)) as loaded:
            for item, (job, (tensor, extra, cause)) in zip(items, loaded):
                if tensor is None and cause is None:  # a view, valid until the next item is requested
                    canvas = (3, extra["canvas_height"], extra["canvas_width"])
                    tensor = slots[job.slot].reshape(-1)[: int(np.prod(canvas))].reshape(canvas)
                yield item, tensor, extra, cause
    except jobs.WorkerDied as died:
        raise InputError(
            "a preprocessing worker process died (killed for lack of memory, or crashed in an image decoder) "
            "while this image or one near it was loaded; finished outputs are kept and a rerun resumes; "
            "--workers 0 pinpoints the image",
            died.job.path,
        ) from None


def _shared_slots(window, max_canvas_hw):
    """(shared memory, float32 [window, 3, Hmax, Wmax] view of it): one slot per item in flight,
    each holding any canvas flat from its start."""
    shape = (window, 3) + tuple(max_canvas_hw)
    # RawArray falls back from /dev/shm to a temp folder when /dev/shm is too small (containers)
    shared = jobs.worker_context().RawArray("B", int(np.prod(shape)) * 4)
    return shared, np.frombuffer(shared, dtype=np.float32).reshape(shape)


@dataclass(frozen=True)
class LoadJob:
    """What :func:`load_item` needs to load one item (picklable: it runs in a worker or a Ray task)."""

    path: str
    kind: str  # "image" or "bin"
    bin_canvas_hw: tuple | None  # a .bin's canvas (H, W); None for an image (the policy decides)
    policy: ResizePolicy
    mean: tuple
    std: tuple
    slot: int | None = None  # the shared-memory slot an image worker writes its tensor into


def load_job(item, info):
    """The picklable job for :func:`load_item` that loads ``item`` for the model ``info`` describes."""
    return LoadJob(
        str(item.source), item.kind, _bin_canvas(item, info), info.resize, tuple(info.pixel_mean), tuple(info.pixel_std)
    )


_loader_slots = None  # in a worker process: the shared [window, 3, Hmax, Wmax] float32 slots


def _init_loader(shared, shape):
    global _loader_slots
    _loader_slots = np.frombuffer(shared, dtype=np.float32).reshape(shape)


def _bin_canvas(item, info):
    """The canvas (H, W) of a .bin item (from its .info sidecar, else the square model's S x S)."""
    if item.kind != "bin":
        return None
    if "canvas_height" in item.record:
        return (int(item.record["canvas_height"]), int(item.record["canvas_width"]))
    return (info.canvas_side, info.canvas_side)


def load_item(job):
    """One input -> (float32 [3,H,W] or None, extra record fields, cause or None). Runs in a worker.

    With a shared-memory ``slot`` (image workers), the tensor is written flat from the slot's
    start and None returned (``extra`` gives its canvas). Any failure is this item's cause: one odd
    file must not stop a run over thousands.
    """
    path, policy, slot = job.path, job.policy, job.slot
    try:
        if job.kind == "bin":
            return read_bin(path, job.bin_canvas_hw)[0], {}, None
        from retinamask.data.transforms import policy_preprocess
        from retinamask.formats.images import load_image_rgb

        image = load_image_rgb(path)
        tensor, geometry = policy_preprocess(image, policy, job.mean, job.std)
        del image
        extra = geometry.to_record()
        extra[CANVAS_SIDE_KEY] = getattr(policy, "size", None)
        if slot is not None and _loader_slots is not None and tensor.size <= _loader_slots[slot].size:
            _loader_slots[slot].reshape(-1)[: tensor.size] = tensor.reshape(-1)
            return None, extra, None  # (a canvas larger than the slots goes back through the pipe)
        return tensor, extra, None
    except InputError as e:
        return None, {}, e.cause
    except MemoryError:
        return None, {}, "not enough memory to load this input"
    except Exception as e:
        return None, {}, f"cannot load this input (unexpected {type(e).__name__}: {' '.join(str(e).split())[:200]})"


def record_without_pixels(item, info, outfmt, legacy_names):
    """Sidecar entry of a skipped item when no earlier sidecar has it (the image header gives the size):
    the entry inferring it would have made, e.g. after a run was killed before its final sidecar."""
    record = dict(item.record)
    if item.kind == "image" and "width" not in record:
        from PIL import Image

        try:
            with Image.open(item.source) as img:
                width, height = img.size
            record.update(info.resize.geometry(height, width).to_record(), **{CANVAS_SIDE_KEY: info.canvas_side})
        except Exception:  # the outputs exist; the geometry is only informative here
            pass
    record["outputs"] = [output_file_name(item.basename, i, outfmt, legacy_names) for i in range(4)]
    return record
