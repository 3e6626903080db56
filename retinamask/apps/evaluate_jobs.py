"""Running ``evaluate``'s per-image jobs: in this process or in worker processes, in job order."""

import logging
import sys

from retinamask.core import parallel
from retinamask.core.errors import InputError, RetinaMaskError
from retinamask.decode.coco_results import image_coco_results

logger = logging.getLogger(__name__)


def _run_jobs(jobs, workers, progress):
    """Yield each job's outcome in order, with a progress bar, in a process pool when workers > 1."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    workers = min(workers, len(jobs))
    with (
        logging_redirect_tqdm(),
        tqdm(
            total=len(jobs),
            desc="evaluate",
            unit="img",
            file=sys.stderr,
            disable=(None if progress is None else not progress),
        ) as bar,
    ):
        if workers <= 1:
            for job in jobs:
                yield _evaluate_one(job)
                bar.update()
            return
        from concurrent.futures.process import BrokenProcessPool

        with parallel.worker_pool(workers, initializer=_init_worker) as executor:
            try:
                for outcome in executor.map(_evaluate_one, jobs, chunksize=2):
                    yield outcome
                    bar.update()
            except BrokenProcessPool:
                raise RetinaMaskError(
                    "a postprocessing worker process died (killed for lack of memory?); the images evaluated so "
                    "far are kept and a rerun resumes; --workers 1 runs in this process",
                    jobs[0][0],
                ) from None
            finally:
                executor.shutdown(wait=True, cancel_futures=True)


def _init_worker():
    import cv2

    cv2.setNumThreads(1)


def _evaluate_one(job):
    """Read one image's outputs and turn them into COCO results. Runs in a worker.

    Returns ("ok", results, mask areas) or ("failed", file, cause).
    """
    from retinamask.formats.model_info import output_specs
    from retinamask.formats.outputs import find_output_files, read_image_outputs

    (
        results_dir,
        basename,
        image_id,
        original_hw,
        resized_hw,
        layout,
        rows,
        mask_resolution,
        nms_threshold,
        max_detections,
        category_ids,
        convention,
        input_size,
        clip,
    ) = job
    where = basename
    try:
        files = find_output_files(results_dir, basename)
        where = str(files.paths[0])
        outputs = read_image_outputs(files, output_specs(layout, rows, mask_resolution))
        results, areas = image_coco_results(
            outputs,
            layout,
            image_id,
            original_hw,
            resized_hw,
            category_ids,
            nms_threshold=nms_threshold,
            max_detections=max_detections,
            convention=convention,
            input_size=input_size,
            clip=clip,
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
