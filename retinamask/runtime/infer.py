"""Run an exported model over a dataset and write ais_bench-style per-image outputs.

Inputs (``input_path``):

* a folder of images: decoded and preprocessed through the resize policy (the model's,
  or ``resize``; ``retinamask.core.geometry``) in worker processes, in order, overlapped with
  inference; no .bin files are needed;
* a folder of ``.bin`` files (float32 [1,3,S,S], as ``retinamask preprocess`` or
  the seed's script writes them), or one ``.bin`` (square models);
* an ``.info`` list (``index bin_path width height``), with its sidecar when present
  (needed for non-square canvases: it gives each .bin's canvas and valid region).

Images are batched by canvas: a batch holds images of one canvas shape (always so for the
seed policy's single S x S canvas); a canvas's partial batch runs when the input ends, or
earlier when :data:`MAX_OPEN_CANVASES` canvases already wait for images.

Outputs in ``{output}/{output_dirname}/``:

* ``{basename}_{i}.bin`` / ``.npy`` per image and output (see ``outputs.py``),
  written atomically; an image whose 4 complete outputs exist is skipped (resume);
* ``images.json``, the run sidecar (:data:`SIDECAR_NAME`): the run's settings (model
  file and digest, layout, output format), the model's interface and, per image,
  ``basename, source, file_name, width, height, resized_width, resized_height, scale,
  input_size, canvas_width, canvas_height, outputs`` (original sizes are absent for bare
  .bin input), plus the failed items. It is written before the first output, so that a rerun after a crash
  or ``kill -9`` knows which model made the outputs it finds; outputs in a folder
  without a sidecar, or with a sidecar of other settings, are redone;

and ``{output}/{output_dirname}_summary.json`` like ais_bench's (see :func:`timing_stats`).
"""

import collections
import contextlib
import itertools
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from retinamask.core import parallel
from retinamask.core.contract import IMAGE_EXTENSIONS
from retinamask.core.errors import InputError, RetinaMaskError
from retinamask.core.fileio import atomic_write_json, remove_stale_temp_files
from retinamask.formats.outputs import OUTFMTS, output_file_name, outputs_complete, write_image_outputs

logger = logging.getLogger(__name__)

SIDECAR_NAME = "images.json"
# Partial batches waiting for more images of their canvas (original policy: up to ~36 canvases);
# a new canvas beyond this many runs the oldest first.
MAX_OPEN_CANVASES = 4
SIDECAR_FORMAT = "retinamask.infer/1"


@dataclass
class InputItem:
    """One image to run: ``basename`` names its outputs; ``record`` becomes its sidecar entry."""

    basename: str
    source: Path  # the image or .bin file
    kind: str  # "image" or "bin"
    record: dict = field(default_factory=dict)


def default_workers():
    """Preprocessing processes for image input: min(2, CPUs); inference is the slow part."""
    return parallel.default_workers(limit=2)


def default_output_dirname():
    """ais_bench's default result folder name: the start time, e.g. 2026_11_25-14_03_59."""
    return datetime.now().strftime("%Y_%m_%d-%H_%M_%S")


def run_inference(
    model_path,
    input_path,
    output_dir=".",
    output_dirname=None,
    batch_size=1,
    outfmt="BIN",
    backend="auto",
    device="cpu",
    precision="fp32",
    legacy_names=False,
    workers=None,
    strict=False,
    threads=None,
    cache_dir=None,
    layout=None,
    input_size=None,
    progress=None,
    session=None,
    executor=None,
    resize=None,
):
    """Infer every item of ``input_path`` (see the module docstring) and write its outputs.

    batch_size: images per model call (a fixed-batch model uses its own batch).
    workers: image-preprocessing processes (0: in this process; None: :func:`default_workers`).
    strict: raise the first bad item's InputError (outputs so far and the sidecar stay)
    instead of listing it and going on. layout / input_size: for models whose metadata
    lacks them. resize: the resize policy (name or ResizePolicy; None: the model's metadata).
    session: an existing :class:`~.backends.Session` for this model.
    progress: tqdm bar on/off (None: on a terminal).
    executor: where the items are loaded, inferred and written (None: here, by a local
    session and ``workers`` processes): an object with ``name, backend, device, precision``
    and ``run(todo, info, batch_size, out_dir, outfmt, legacy_names)`` that yields
    :func:`infer_local`'s events (e.g. :class:`retinamask.distributed.ray_infer.RayExecutor`).

    Returns the summary dict also written to ``{output_dir}/{output_dirname}_summary.json``:
    ``count`` (images inferred now), ``skipped`` (complete outputs kept), ``failed``
    (list of {"file", "cause"}), ``NPU_compute_time`` (per-batch ms stats),
    ``throughput`` (1000 * batchsize / mean compute ms), ``e2e`` wall time and images/s.
    """
    from retinamask.formats.model_info import read_model_info
    from retinamask.runtime.backends import create_session

    outfmt = str(outfmt).upper()
    if outfmt not in OUTFMTS:
        raise InputError(f"--outfmt must be one of {OUTFMTS}, got {outfmt!r}")
    if int(batch_size) < 1:
        raise InputError(f"--batchsize must be >= 1, got {batch_size}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise InputError(f"--workers must be >= 0, got {workers}")

    info = read_model_info(model_path, layout=layout, input_size=input_size, resize=resize)
    batch_size = int(batch_size)
    if info.batch_size is not None and batch_size != info.batch_size:
        logger.warning(
            "the model has a fixed batch of %d: running batches of %d, not %d",
            info.batch_size,
            info.batch_size,
            batch_size,
        )
        batch_size = info.batch_size

    items, failed = collect_items(input_path, info.input_size, info.resize)
    if not items and not failed:
        raise InputError("no images, .bin files or .info lines found", input_path)
    if strict and failed:
        raise InputError(failed[0]["cause"], failed[0]["file"])

    output_dirname = output_dirname or default_output_dirname()
    out_dir = Path(output_dir) / output_dirname
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder: {e.strerror or e}", out_dir) from None
    remove_stale_temp_files(out_dir)
    sidecar_path = out_dir / SIDECAR_NAME
    settings = _run_settings(info, outfmt, legacy_names)
    earlier = _earlier_records(sidecar_path, settings, out_dir)

    if executor is None and session is None:
        session = create_session(
            model_path, backend, device, precision, threads=threads, cache_dir=cache_dir, model_info=info
        )

    specs = info.outputs
    todo, records = [], {}
    for item in items:
        if earlier is not None and outputs_complete(out_dir, item.basename, specs, outfmt, legacy_names):
            records[item.basename] = earlier.get(item.basename) or _record_without_pixels(
                item, info, outfmt, legacy_names
            )
        else:
            todo.append(item)
    skipped = len(records)
    if skipped:
        logger.info("%d of %d images already have complete outputs in %s: skipped", skipped, len(items), out_dir)
    # before the first output: a run killed from here on leaves a sidecar naming its settings
    _write_sidecar(
        sidecar_path,
        settings,
        info,
        input_path,
        [records[item.basename] for item in items if item.basename in records],
        failed,
        finished=False,
    )

    compute_ms, inferred = [], 0
    ran_by = session if executor is None else executor
    started = time.perf_counter()
    try:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        with (
            logging_redirect_tqdm(),
            tqdm(
                total=len(todo),
                desc="infer",
                unit="img",
                file=sys.stderr,
                disable=(None if progress is None else not progress),
            ) as bar,
        ):
            if executor is None:
                events = infer_local(todo, info, session, batch_size, workers, out_dir, outfmt, legacy_names)
            else:
                events = executor.run(todo, info, batch_size, out_dir, outfmt, legacy_names)
            with contextlib.closing(events):
                for event, done, value in events:
                    if event == "failed":
                        if strict:
                            raise InputError(value, done.source)
                        logger.warning("%s: %s", done.source, value)
                        failed.append({"file": str(done.source), "cause": value})
                        bar.update()
                        continue
                    for item in done:
                        item.record["outputs"] = [
                            output_file_name(item.basename, i, outfmt, legacy_names) for i in range(4)
                        ]
                        records[item.basename] = item.record
                    if value is not None:
                        compute_ms.append(value)
                    inferred += len(done)
                    bar.update(len(done))
    finally:
        # Also after an error or Ctrl-C: the sidecar lists what is complete, for evaluate and resume.
        ordered = [records[item.basename] for item in items if item.basename in records]
        _write_sidecar(sidecar_path, settings, info, input_path, ordered, failed)
    wall_s = time.perf_counter() - started

    summary = {
        "count": inferred,
        "skipped": skipped,
        "total": len(items) + sum(1 for f in failed if f.get("listing")),
        "failed": [{"file": f["file"], "cause": f["cause"]} for f in failed],
        "batchsize": batch_size,
        "session": ran_by.name,
        "backend": ran_by.backend,
        "device": ran_by.device,
        "precision": ran_by.precision,
        "model": str(model_path),
        "layout": info.layout,
        "input_size": info.input_size,
        "resize": info.resize.to_dict(),
        "outfmt": outfmt,
        "legacy_names": bool(legacy_names),
        "output_dir": str(out_dir),
        "sidecar": str(sidecar_path),
        **timing_stats(compute_ms, batch_size),
        "e2e": {
            "wall_time_s": wall_s,
            "images_per_s": inferred / wall_s if wall_s > 0 and inferred else 0.0,
        },
    }
    summary_path = Path(output_dir) / f"{output_dirname}_summary.json"
    atomic_write_json(summary_path, summary)
    summary["summary_path"] = str(summary_path)
    return summary


def timing_stats(compute_ms, batch_size):
    """ais_bench's summary fields from per-batch compute times (ms).

    Returns {"NPU_compute_time": {min, max, mean, median, "percentile(99%)"}, "throughput":
    1000 * batch_size / mean} (the key keeps ais_bench's name so its readers work; here it is
    the runtime's time for one batch). Empty input gives zeros.
    """
    times = np.asarray(compute_ms, dtype=np.float64)
    if times.size == 0:
        stats = dict.fromkeys(("min", "max", "mean", "median", "percentile(99%)"), 0.0)
        return {"NPU_compute_time": stats, "throughput": 0.0}
    stats = {
        "min": float(times.min()),
        "max": float(times.max()),
        "mean": float(times.mean()),
        "median": float(np.median(times)),
        "percentile(99%)": float(np.percentile(times, 99)),
    }
    return {"NPU_compute_time": stats, "throughput": 1000.0 * batch_size / stats["mean"]}


def format_summary(summary):
    """Console lines for a run summary (ais_bench-like)."""
    t = summary["NPU_compute_time"]
    lines = [
        f"[INFO] {summary['session']}  batchsize {summary['batchsize']}  layout {summary['layout']}  "
        + (f"S {summary['input_size']}" if summary.get("input_size") else f"resize {summary['resize']['policy']}"),
        f"[INFO] compute_time (ms): min = {t['min']:.2f}, max = {t['max']:.2f}, mean = {t['mean']:.2f}, "
        f"median = {t['median']:.2f}, percentile(99%) = {t['percentile(99%)']:.2f}",
        f"[INFO] throughput 1000*batchsize({summary['batchsize']})/NPU_compute_time.mean({t['mean']:.2f}): "
        f"{summary['throughput']:.3f}",
        f"[INFO] end to end: {summary['count']} images in {summary['e2e']['wall_time_s']:.2f} s "
        f"({summary['e2e']['images_per_s']:.3f} images/s); {summary['skipped']} skipped (complete outputs), "
        f"{len(summary['failed'])} failed",
        f"[INFO] outputs: {summary['output_dir']}  summary: {summary.get('summary_path', '')}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# inputs


def collect_items(input_path, input_size, policy=None):
    """The items of a folder (images or .bin files), an .info list, or one file.

    ``input_size``: S of a square model (None: a dynamic-H/W model, whose .bin inputs need an
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
            return _items_from_info(path, input_size, policy)
        if suffix == ".bin":
            _check_bin_size(path, input_size)
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
        _check_bin_size(bins[0], input_size)
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


def _items_from_info(info_path, input_size, policy=None):
    from retinamask.data.preprocess import read_info_lines

    records, problems = read_info_lines(info_path, check_files=False)
    failed = []
    for cause in problems:
        logger.warning("%s: %s", info_path, cause)
        failed.append({"file": str(info_path), "cause": cause, "listing": True})
    items = []
    for record in records:
        canvas = record.canvas_hw
        if input_size is not None and canvas is not None and canvas != (input_size, input_size):
            raise InputError(
                f"the .info's sidecar says its .bin files are {canvas[0]}x{canvas[1]} inputs, "
                f"the model takes {input_size}x{input_size}",
                info_path,
            )
        if input_size is None and canvas is None:
            raise InputError(
                "a model that takes any canvas needs each .bin's canvas and valid region: pass the "
                ".info of `retinamask preprocess` with its sidecar (<info>.json) beside it",
                info_path,
            )
        if input_size is None and policy is not None and record.resize not in (None, policy.to_dict()):
            logger.warning(
                "%s: its .bin files were made with the %s policy, the run asks for %s: the .bin "
                "canvases are used as they are",
                info_path,
                record.resize.get("policy"),
                policy.name,
            )
        entry = {"basename": record.name, "source": str(record.bin_path), "file_name": record.file_name}
        if record.file_name is not None:  # a sidecar gave the original geometry
            entry.update(
                width=record.width,
                height=record.height,
                resized_width=record.resized_width,
                resized_height=record.resized_height,
                scale=record.scale,
                input_size=record.input_size,
            )
            if canvas is not None:
                entry.update(canvas_height=canvas[0], canvas_width=canvas[1])
        items.append(InputItem(record.name, Path(record.bin_path), "bin", entry))
    return items, failed


def _check_bin_size(bin_path, input_size):
    """Refuse a .bin folder made for another input size (checked on its first file)."""
    from retinamask.data.preprocess import bin_nbytes

    if input_size is None:
        raise InputError(
            "a model that takes any canvas needs each .bin's canvas and valid region: pass the .info "
            "of `retinamask preprocess` (with its sidecar) instead of bare .bin files",
            bin_path,
        )
    size = bin_path.stat().st_size
    if size == bin_nbytes(input_size):
        return
    side = round((size / 12) ** 0.5)
    if side > 0 and bin_nbytes(side) == size:
        raise InputError(
            f"holds a float32 [1, 3, {side}, {side}] input, the model takes [B, 3, {input_size}, {input_size}] "
            "(preprocess with --input_size matching the model)",
            bin_path,
        )


def _load_inputs(items, info, workers):
    """Yield (item, tensor [3,S,S] or None, extra record fields, cause or None) in item order.
    A tensor may be a view of shared memory that is valid only until the next item is
    requested: copy it before that.

    Images are decoded and preprocessed by a process pool, .bin files read by a
    thread pool; at most ``window`` items are in flight (Pool.imap would read ahead
    without bound, and each input is 3*S*S*4 bytes = 21.7 MB at S = 1344). Worker
    processes hand tensors back through shared memory, one slot per item in flight:
    pickling them through the pool's pipe took longer than preprocessing itself.
    """
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    policy = info.resize
    jobs = [load_job(item, info) for item in items]
    if not jobs:
        return
    if workers == 0:
        for item, job in zip(items, jobs):
            yield (item, *load_item(job))
        return
    window = 2 * workers + 2
    slots = None
    if any(item.kind == "image" for item in items):
        context = parallel.worker_context()
        window = min(window, len(jobs))
        shape = (window, 3) + tuple(policy.max_canvas_hw)  # each slot holds any canvas, flat from its start
        # RawArray falls back from /dev/shm to a temp folder when /dev/shm is too small (containers)
        shared = context.RawArray("B", int(np.prod(shape)) * 4)
        slots = np.frombuffer(shared, dtype=np.float32).reshape(shape)
        jobs = [job[:-1] + (index % window,) for index, job in enumerate(jobs)]
        pool = parallel.worker_pool(min(workers, len(jobs)), initializer=_init_loader, initargs=(shared, shape))
    else:
        pool = ThreadPoolExecutor(1)
    item = items[0]
    try:
        # both waiting for a result and submitting the next job raise BrokenProcessPool
        for item, job, future in zip(items, jobs, _ordered_bounded(pool, load_item, jobs, window)):
            tensor, extra, cause = future.result()
            if tensor is None and cause is None:  # a view, valid until the next item is requested
                canvas = (3, extra["canvas_height"], extra["canvas_width"])
                tensor = slots[job[-1]].reshape(-1)[: int(np.prod(canvas))].reshape(canvas)
            yield item, tensor, extra, cause
    except BrokenProcessPool:
        raise InputError(
            "a preprocessing worker process died (killed for lack of memory, or crashed in an image decoder) "
            "while this image or one near it was loaded; finished outputs are kept and a rerun resumes; "
            "--workers 0 pinpoints the image",
            item.source,
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ordered_bounded(pool, function, jobs, window):
    """Futures of function(job) in job order, with at most ``window`` jobs submitted and not yet consumed."""
    jobs = iter(jobs)
    pending = collections.deque(pool.submit(function, job) for job in itertools.islice(jobs, window))
    while pending:
        yield pending.popleft()
        # submitted only after the consumer is done with the result (and its shared-memory slot)
        for job in itertools.islice(jobs, 1):
            pending.append(pool.submit(function, job))


def load_job(item, info):
    """The picklable job for :func:`load_item` that loads ``item`` for the model ``info`` describes."""
    return (
        str(item.source),
        item.kind,
        _bin_canvas(item, info),
        info.resize,
        tuple(info.pixel_mean),
        tuple(info.pixel_std),
        None,
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
    return (info.input_size, info.input_size)


def load_item(job):
    """One input -> (float32 [3,H,W] or None, extra record fields, cause or None). Runs in a worker.

    With a shared-memory ``slot`` (image workers), the tensor is written flat from the slot's
    start and None returned (``extra`` gives its canvas). Any failure is this item's cause: one odd
    file must not stop a run over thousands.
    """
    from retinamask.data.preprocess import read_bin

    path, kind, bin_canvas, policy, mean, std, slot = job
    try:
        if kind == "bin":
            return read_bin(path, bin_canvas)[0], {}, None
        from retinamask.data.transforms import policy_preprocess
        from retinamask.formats.images import load_image_rgb

        image = load_image_rgb(path)
        tensor, geometry = policy_preprocess(image, policy, mean, std)
        del image
        extra = geometry.to_record()
        extra["input_size"] = getattr(policy, "size", None)
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


def _record_without_pixels(item, info, outfmt, legacy_names):
    """Sidecar entry of a skipped item when no earlier sidecar has it (the image header gives the size):
    the entry inferring it would have made, e.g. after a run was killed before its final sidecar."""
    record = dict(item.record)
    if item.kind == "image" and "width" not in record:
        from PIL import Image

        try:
            with Image.open(item.source) as img:
                width, height = img.size
            record.update(info.resize.geometry(height, width).to_record(), input_size=info.input_size)
        except Exception:  # the outputs exist; the geometry is only informative here
            pass
    record["outputs"] = [output_file_name(item.basename, i, outfmt, legacy_names) for i in range(4)]
    return record


# ---------------------------------------------------------------------------
# inference and outputs


def infer_local(todo, info, session, batch_size, workers, out_dir, outfmt, legacy_names):
    """Load, infer and write ``todo`` here: images preprocessed by ``workers`` processes, the model
    run by ``session`` in batches of ``batch_size`` images of one canvas. Yields the events
    :func:`run_inference` consumes (any executor yields the same):

    * ``("failed", item, cause)``: the item could not be loaded; nothing was written for it;
    * ``("done", items, compute_ms)``: the outputs of ``items`` (one model call) are written and
      each ``item.record`` has its image geometry (compute_ms None: that call's time came already).

    Images wait for a full batch of their canvas; at most MAX_OPEN_CANVASES partial batches are
    open at once (the oldest runs when another canvas comes), which bounds memory under the
    ``original`` policy, where nearly every aspect ratio has its own canvas.
    """
    batches = {}  # canvas (H, W) -> (batch buffer filled in place, items in it), oldest first

    def run_batch(canvas):
        batch, pending = batches.pop(canvas)
        rows = len(pending)
        return pending, infer_batch(session, batch[:rows], pending, out_dir, info.outputs, outfmt, legacy_names)

    with contextlib.closing(_load_inputs(todo, info, workers)) as loaded:
        for item, tensor, extra, cause in loaded:
            if cause is not None:
                yield "failed", item, cause
                continue
            item.record.update(extra)
            canvas = tuple(tensor.shape[-2:])
            if canvas not in batches:
                if len(batches) == MAX_OPEN_CANVASES:
                    yield "done", *run_batch(next(iter(batches)))
                batches[canvas] = (np.empty((batch_size, 3) + canvas, np.float32), [])
            batch, pending = batches[canvas]
            batch[len(pending)] = tensor  # copy now: the tensor may be a shared slot about to be reused
            pending.append(item)
            if len(pending) == batch_size:
                yield "done", *run_batch(canvas)
    while batches:
        yield "done", *run_batch(next(iter(batches)))


def infer_batch(session, batch, items, out_dir, specs, outfmt, legacy_names):
    """Run one batch (float32 [len(items), 3, H, W], one canvas) and write each image's outputs
    atomically. Dynamic-H/W models also get each image's valid region (``image_sizes``). Returns
    the compute time in ms."""
    image_sizes = None
    if session.dynamic_hw:
        image_sizes = np.array([_valid_region(item, batch.shape[-2:]) for item in items], np.int64)
    start = time.perf_counter()
    try:
        outputs = session.run(batch, image_sizes) if image_sizes is not None else session.run(batch)
    except Exception as e:  # the runtime's own error types (onnxruntime, OpenVINO)
        first = items[0].source if len(items) == 1 else f"{items[0].source} ... {items[-1].source}"
        raise RetinaMaskError(f"{session.name} failed on the batch of {first}: {' '.join(str(e).split())[:300]}") from e
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    _check_output_shapes(outputs, specs, len(items), session)
    for row, item in enumerate(items):
        write_image_outputs(out_dir, item.basename, [out[row] for out in outputs], specs, outfmt, legacy_names)
    return elapsed_ms


def _valid_region(item, canvas_hw):
    """(h, w) of the resized image in its canvas (the whole canvas when the record lacks it)."""
    record = item.record
    if record.get("resized_height") and record.get("resized_width"):
        return (int(record["resized_height"]), int(record["resized_width"]))
    return tuple(int(v) for v in canvas_hw)


def _check_output_shapes(outputs, specs, rows, session):
    if len(outputs) != len(specs):
        raise RetinaMaskError(f"{session.name}: the model returned {len(outputs)} outputs, the contract has 4")
    for out, spec in zip(outputs, specs):
        if tuple(out.shape) != (rows, *spec.shape):
            raise RetinaMaskError(
                f"{session.name}: output {spec.index} ({spec.name}) came back {list(out.shape)}, "
                f"the model's contract says [{rows}, {', '.join(map(str, spec.shape))}]"
            )


# ---------------------------------------------------------------------------
# run sidecar


def _run_settings(info, outfmt, legacy_names):
    """What makes earlier outputs in the folder reusable: the same model (by content: a retrained
    model of the same architecture has the same size) and file format."""
    import hashlib

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
        "input_size": info.input_size,
        **({} if info.input_size else {"resize": info.resize.to_dict()}),
        "outputs": [[o.name, o.dtype.name, list(o.shape)] for o in info.outputs],
        "outfmt": outfmt,
        "legacy_names": bool(legacy_names),
    }


def _earlier_records(sidecar_path, settings, out_dir):
    """Records of an earlier run in this folder by basename, or None when its outputs must be
    redone: that run used another model or format, or there is no sidecar to say which."""
    if not sidecar_path.exists():
        from retinamask.formats.outputs import list_output_basenames

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


def _write_sidecar(path, settings, info, input_path, records, failed, finished=True):
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
    resized_height, input_size``. Raises InputError naming the file if unusable.
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
        entry.setdefault("input_size", data.get("input_size"))
        entries.append(entry)
    return entries, data.get("model")
