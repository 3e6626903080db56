"""``evaluate``'s per-image job: one image's outputs -> its COCO results, run in this process or in
worker processes (:func:`run_jobs`) or as Ray tasks (:mod:`retinamask.distributed.ray_evaluate`),
outcomes in job order."""

import logging
from dataclasses import dataclass

from retinamask.core import jobs
from retinamask.core.errors import InputError, RetinaMaskError
from retinamask.decode.coco_results import image_coco_results

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateJob:
    """Everything :func:`evaluate_one` needs for one image (picklable; its fields, through JSON, key
    the image's resumable part)."""

    results_dir: str  # the folder of the image's output files
    basename: str  # the output files' common prefix
    image_id: int  # in the annotation file
    image_hw: tuple  # (height, width) of the original image
    resized_hw: tuple  # (height, width) of the resized image: the valid region of its canvas
    layout: str  # "end2end" or "seed"
    rows: int  # rows K of every output
    mask_resolution: int
    nms_threshold: float
    max_detections: int
    category_ids: tuple  # label L -> category id
    convention: str  # one of core.contract.CONVENTIONS
    canvas_side: int | None  # the seed's S (None: a model that takes any canvas)
    clip: bool  # clip boxes to the image (the resize policy's rule)


def run_jobs(evaluate_jobs, workers, progress):
    """Yield each job's outcome (see :func:`evaluate_one`) in job order, with the "evaluate"
    progress bar, in a process pool when ``workers`` > 1."""
    with jobs.progress_bar("evaluate", len(evaluate_jobs), progress) as bar:
        try:
            for _, outcome in jobs.map_ordered(evaluate_one, evaluate_jobs, workers, initializer=init_worker):
                yield outcome
                bar.update()
        except jobs.WorkerDied:
            raise RetinaMaskError(
                "a postprocessing worker process died (killed for lack of memory?); the images evaluated so "
                "far are kept and a rerun resumes; --workers 1 runs in this process",
                evaluate_jobs[0].results_dir,
            ) from None


def init_worker():
    """Set up a process (or Ray task) that runs :func:`evaluate_one`: OpenCV single-threaded, as
    each worker holds one CPU."""
    import cv2

    cv2.setNumThreads(1)


def evaluate_one(job):
    """Read one image's outputs and turn them into COCO results. Runs in a worker.

    Returns ("ok", results, mask areas) or ("failed", file, cause).
    """
    from retinamask.formats.model_info import output_specs
    from retinamask.formats.outputs import find_output_files, read_image_outputs

    where = job.basename
    try:
        files = find_output_files(job.results_dir, job.basename)
        where = str(files.paths[0])
        outputs = read_image_outputs(files, output_specs(job.layout, job.rows, job.mask_resolution))
        results, areas = image_coco_results(
            outputs,
            job.layout,
            job.image_id,
            job.image_hw,
            job.resized_hw,
            job.category_ids,
            nms_threshold=job.nms_threshold,
            max_detections=job.max_detections,
            convention=job.convention,
            canvas_side=job.canvas_side,
            clip=job.clip,
        )
    except InputError as e:
        return ("failed", e.path or where, e.cause)
    except MemoryError:
        return ("failed", where, "not enough memory to postprocess these outputs")
    except Exception as e:  # one odd output must not stop the evaluation of thousands
        return (
            "failed",
            where,
            f"cannot postprocess (unexpected {type(e).__name__}: {' '.join(str(e).split())[:200]})",
        )
    return ("ok", results, None if areas is None else areas.tolist())
