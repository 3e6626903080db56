"""Run an exported model over a dataset and write ais_bench-style per-image outputs.

Inputs (``input_path``):

* a folder of images: decoded and preprocessed through the resize policy (the model's,
  or ``resize``; ``retinamask.core.geometry``) in worker processes, in order, overlapped with
  inference; no .bin files are needed;
* a folder of ``.bin`` files (float32 [1,3,S,S], as ``retinamask preprocess`` or
  the seed's script writes them), or one ``.bin`` (square models);
* an ``.info`` list (``index bin_path width height``), with its sidecar when present
  (needed for non-square canvases: it gives each .bin's canvas and valid region).

Images are batched by canvas (:mod:`.infer_batches`); loading is :mod:`.infer_inputs`.

Outputs in ``{output}/{output_dirname}/``:

* ``{basename}_{i}.bin`` / ``.npy`` per image and output (see ``outputs.py``),
  written atomically; an image whose 4 complete outputs exist is skipped (resume);
* ``images.json``, the run sidecar (:mod:`retinamask.formats.run_sidecar`): the run's settings (model
  file and digest, layout, output format), the model's interface and, per image,
  ``basename, source, file_name, width, height, resized_width, resized_height, scale,
  canvas_width, canvas_height, outputs`` and S (original sizes are absent for bare
  .bin input), plus the failed items. It is written before the first output, so that a rerun after a crash
  or ``kill -9`` knows which model made the outputs it finds; outputs in a folder
  without a sidecar, or with a sidecar of other settings, are redone;

and ``{output}/{output_dirname}_summary.json`` like ais_bench's (see :func:`timing_stats`).
"""

import contextlib
import logging
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from retinamask.core import jobs
from retinamask.core.errors import InputError
from retinamask.core.fileio import atomic_write_json, remove_stale_temp_files
from retinamask.formats.outputs import OUTFMTS, output_file_name, outputs_complete
from retinamask.formats.run_sidecar import (
    CANVAS_SIDE_KEY,
    SIDECAR_NAME,
    earlier_records,
    run_settings,
    write_run_sidecar,
)
from retinamask.runtime.infer_batches import infer_local
from retinamask.runtime.infer_inputs import collect_items, record_without_pixels

logger = logging.getLogger(__name__)

WORKER_LIMIT = 2  # default --workers (image-preprocessing processes): min(2, CPUs); inference is the slow part


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
    canvas_side=None,
    progress=None,
    session=None,
    executor=None,
    resize=None,
    sessions=None,
    performance_hint="LATENCY",
):
    """Infer every item of ``input_path`` (see the module docstring) and write its outputs.

    batch_size: images per model call (a fixed-batch model uses its own batch).
    workers: image-preprocessing processes (0: in this process; None:
    ``jobs.default_workers(WORKER_LIMIT)``).
    strict: raise the first bad item's InputError (outputs so far and the sidecar stay)
    instead of listing it and going on. layout / canvas_side (S of a square model,
    ``--input-size``): for models whose metadata lacks them. resize: the resize policy (name or
    ResizePolicy; None: the model's metadata).
    session: an existing :class:`~.backends.Session` for this model (or a list of them: as many
    batches run at once). sessions: how many sessions to create and run at once, each with
    ``threads`` intra-op threads (None: the cores divided among them), None: the rule of
    :func:`~.auto_backend.dataset_sessions`. performance_hint: OpenVINO's LATENCY or
    THROUGHPUT for each session.
    progress: tqdm bar on/off (None: on a terminal).
    executor: where the items are loaded, inferred and written (None: here, by a local
    session and ``workers`` processes): an object with ``name, backend, device, precision``
    and ``run(todo, info, batch_size, out_dir, outfmt, legacy_names)`` that yields
    :func:`~.infer_batches.infer_local`'s events (e.g.
    :class:`retinamask.distributed.ray_infer.RayExecutor`).

    Returns the summary dict also written to ``{output_dir}/{output_dirname}_summary.json``:
    ``count`` (images inferred now), ``skipped`` (complete outputs kept), ``failed``
    (list of {"file", "cause"}), ``NPU_compute_time`` (per-batch ms stats),
    ``throughput`` (1000 * batchsize / mean compute ms), ``e2e`` wall time and images/s.
    """
    from retinamask.formats.model_info import read_model_info

    outfmt, batch_size, workers = _checked_settings(outfmt, batch_size, workers)
    info = read_model_info(model_path, layout=layout, canvas_side=canvas_side, resize=resize)
    batch_size = _model_batch_size(info, batch_size)

    items, failures = _list_items(input_path, info, strict)

    output_dirname = output_dirname or default_output_dirname()
    out_dir = _output_folder(Path(output_dir) / output_dirname)
    sidecar_path = out_dir / SIDECAR_NAME
    settings = run_settings(info, outfmt, legacy_names)
    earlier = earlier_records(sidecar_path, settings, out_dir)

    if executor is None and session is None:
        session = _create_sessions(
            model_path, backend, device, precision, (threads, sessions, performance_hint), cache_dir, info
        )
    run_sessions = list(session) if isinstance(session, list | tuple) else [session]
    todo, records = _split_done(items, earlier, out_dir, info, outfmt, legacy_names)
    skipped = len(records)

    def write_sidecar(finished):
        ordered = [records[item.basename] for item in items if item.basename in records]
        write_run_sidecar(sidecar_path, settings, info, input_path, ordered, failures.items, finished=finished)

    # before the first output: a run killed from here on leaves a sidecar naming its settings
    write_sidecar(finished=False)
    started = time.perf_counter()
    try:
        if executor is None:
            events = infer_local(todo, info, run_sessions, batch_size, workers, out_dir, outfmt, legacy_names)
        else:
            events = executor.run(todo, info, batch_size, out_dir, outfmt, legacy_names)
        compute_ms, inferred = _consume_events(events, len(todo), records, failures, outfmt, legacy_names, progress)
    finally:
        # Also after an error or Ctrl-C: the sidecar lists what is complete, for evaluate and resume.
        write_sidecar(finished=True)
    wall_s = time.perf_counter() - started

    ran_by = executor or _SessionsDescription(run_sessions)
    summary = {
        "count": inferred,
        "skipped": skipped,
        "total": len(items) + sum(1 for f in failures.items if f.get("listing")),
        "failed": [{"file": f["file"], "cause": f["cause"]} for f in failures.items],
        **_run_description(ran_by, batch_size, model_path, info, outfmt, legacy_names),
        "output_dir": str(out_dir),
        "sidecar": str(sidecar_path),
        **timing_stats(compute_ms, batch_size),
        "e2e": {
            "wall_time_s": wall_s,
            "images_per_s": inferred / wall_s if wall_s > 0 and inferred else 0.0,
        },
    }
    return _write_summary(summary, Path(output_dir) / f"{output_dirname}_summary.json")


def _list_items(input_path, info, strict):
    """(items to infer, :class:`~retinamask.core.jobs.Failures` holding the listing's bad items).
    InputError when nothing is listed, or for the first bad item under ``strict``."""
    items, listing_failed = collect_items(input_path, info.canvas_side, info.resize)
    if not items and not listing_failed:
        raise InputError("no images, .bin files or .info lines found", input_path)
    if strict and listing_failed:
        raise InputError(listing_failed[0]["cause"], listing_failed[0]["file"])
    failures = jobs.Failures(strict, logger)
    failures.items.extend(listing_failed)  # logged as they were listed
    return items, failures


def _write_summary(summary, summary_path):
    """Write ``summary`` to ``summary_path`` (JSON), then add that path to it; return it."""
    atomic_write_json(summary_path, summary)
    summary["summary_path"] = str(summary_path)
    return summary


def _create_sessions(model_path, backend, device, precision, parallelism, cache_dir, info):
    """The session(s) of a local run: one, or a list of ``count`` that run that many batches at once
    (as ``serve --sessions`` does, each with its share of the cores). parallelism: (threads,
    sessions, performance hint) as asked for."""
    from retinamask.runtime.auto_backend import dataset_sessions
    from retinamask.runtime.backends import create_sessions

    threads, sessions, hint = parallelism
    count, threads, note = dataset_sessions(device, sessions, threads)
    created = create_sessions(
        model_path,
        count,
        backend,
        device,
        precision,
        threads=threads,
        cache_dir=cache_dir,
        performance_hint=hint,
        model_info=info,
    )
    if note is not None:
        logger.info("infer: %s", note)
    return created


class _SessionsDescription:
    """What the summary says of a local run's sessions (a list): ``name`` gets " x N" for N sessions."""

    def __init__(self, sessions):
        first = sessions[0]
        self.name = first.name if len(sessions) == 1 else f"{first.name} x{len(sessions)}"
        self.backend, self.device, self.precision = first.backend, first.device, first.precision


def _run_description(ran_by, batch_size, model_path, info, outfmt, legacy_names):
    """The summary's fields that say how the run ran: batch, session, model, layout, resize, format."""
    return {
        "batchsize": batch_size,
        "session": ran_by.name,
        "backend": ran_by.backend,
        "device": ran_by.device,
        "precision": ran_by.precision,
        "model": str(model_path),
        "layout": info.layout,
        CANVAS_SIDE_KEY: info.canvas_side,
        "resize": info.resize.to_dict(),
        "outfmt": outfmt,
        "legacy_names": bool(legacy_names),
    }


def _checked_settings(outfmt, batch_size, workers):
    """(OUTFMT, batch size, workers) checked, or InputError naming the flag."""
    outfmt = str(outfmt).upper()
    if outfmt not in OUTFMTS:
        raise InputError(f"--outfmt must be one of {OUTFMTS}, got {outfmt!r}")
    if int(batch_size) < 1:
        raise InputError(f"--batchsize must be >= 1, got {batch_size}")
    workers = jobs.default_workers(WORKER_LIMIT) if workers is None else int(workers)
    if workers < 0:
        raise InputError(f"--workers must be >= 0, got {workers}")
    return outfmt, int(batch_size), workers


def _model_batch_size(info, batch_size):
    """The batch the run uses: ``batch_size``, or the model's own when it has a fixed batch."""
    if info.batch_size is not None and batch_size != info.batch_size:
        logger.warning(
            "the model has a fixed batch of %d: running batches of %d, not %d",
            info.batch_size,
            info.batch_size,
            batch_size,
        )
        return info.batch_size
    return batch_size


def _output_folder(out_dir):
    """Create ``out_dir`` (InputError when it cannot be) and remove temp files of a killed run."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder: {e.strerror or e}", out_dir) from None
    remove_stale_temp_files(out_dir)
    return out_dir


def _split_done(items, earlier, out_dir, info, outfmt, legacy_names):
    """(items to infer, {basename: sidecar record} of the items whose complete outputs are kept).
    ``earlier``: the earlier run's records by basename, None when its outputs must be redone."""
    todo, records = [], {}
    for item in items:
        if earlier is not None and outputs_complete(out_dir, item.basename, info.outputs, outfmt, legacy_names):
            records[item.basename] = earlier.get(item.basename) or record_without_pixels(
                item, info, outfmt, legacy_names
            )
        else:
            todo.append(item)
    if records:
        logger.info("%d of %d images already have complete outputs in %s: skipped", len(records), len(items), out_dir)
    return todo, records


def _consume_events(events, total, records, failures, outfmt, legacy_names, progress):
    """Follow an executor's events with the "infer" progress bar: a failed item goes to
    ``failures``, a done item's record (with its output names) to ``records``. Returns
    (compute ms per model call, images inferred)."""
    compute_ms, inferred = [], 0
    with jobs.progress_bar("infer", total, progress) as bar, contextlib.closing(events):
        for event, done, value in events:
            if event == "failed":
                failures.add(done.source, value)
                bar.update()
                continue
            for item in done:
                item.record["outputs"] = [output_file_name(item.basename, i, outfmt, legacy_names) for i in range(4)]
                records[item.basename] = item.record
            if value is not None:
                compute_ms.append(value)
            inferred += len(done)
            bar.update(len(done))
    return compute_ms, inferred


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
        + (
            f"S {summary[CANVAS_SIDE_KEY]}" if summary.get(CANVAS_SIDE_KEY) else f"resize {summary['resize']['policy']}"
        ),
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
