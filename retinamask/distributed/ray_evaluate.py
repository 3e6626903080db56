"""``retinamask evaluate --ray``: the per-image postprocessing (read outputs, NMS, mask paste, RLE)
as Ray tasks; the COCO evaluation stays on the driver.

The driver runs :func:`~retinamask.apps.evaluate.evaluate_outputs` as a local run does
(image list, ground truth, the resumable per-image parts, the COCO evaluation, the reports);
only its postprocessing loop is replaced by :class:`RayJobRunner`, which runs the local run's
per-image function (:func:`~retinamask.apps.evaluate_jobs.evaluate_one`) in Ray Data tasks and
hands the outcomes back in job order, so that the results, the failures and their order are the local run's. The outputs
folder must be at the same path on every node.
"""

import dataclasses
import logging
import os
import pickle

from retinamask.core.errors import RetinaMaskError

logger = logging.getLogger(__name__)

JOBS_PER_CPU = 8  # blocks per cluster CPU: small enough to balance, large enough to amortize a task


def evaluate_outputs_on_ray(results_dir, ann_file, address=None, **kwargs):
    """:func:`~retinamask.apps.evaluate.evaluate_outputs` with the postprocessing on a Ray
    cluster (``address``: see :func:`.cluster.resolve_address`). Other arguments and the returned
    summary: ``evaluate_outputs``'s (``workers`` is not used); the summary has a ``ray`` entry."""
    from retinamask.apps.evaluate import evaluate_outputs

    runner = RayJobRunner(address)
    summary = evaluate_outputs(results_dir, ann_file, runner=runner, **kwargs)
    summary["ray"] = runner.report
    return summary


class RayJobRunner:
    """``evaluate_outputs``'s ``runner`` on Ray: ``runner(jobs, workers, progress)`` yields outcomes in job order."""

    def __init__(self, address=None):
        from retinamask.distributed.cluster import import_ray

        import_ray()  # without Ray: say how to install it before anything is read
        self.address = address
        self.report = {}

    def __call__(self, jobs, workers, progress):
        from retinamask.core.jobs import progress_bar
        from retinamask.distributed.cluster import alive_node_resources, as_user_error, connected

        if not jobs:
            return
        with connected(self.address) as ray, progress_bar("evaluate", len(jobs), progress) as bar:
            nodes = alive_node_resources(ray)
            cpus = int(sum(n.get("CPU", 0) for n in nodes))
            self.report = {"nodes": len(nodes), "cluster_cpus": cpus, "duplicates_ignored": 0}
            # results_dir absolute: workers do not run in the driver's folder
            rows = [
                {
                    "position": i,
                    "job": pickle.dumps(dataclasses.replace(job, results_dir=os.path.abspath(job.results_dir))),
                }
                for i, job in enumerate(jobs)
            ]
            ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), max(1, cpus * JOBS_PER_CPU)))
            ds = ds.map_batches(_evaluate_rows, batch_size=None, num_cpus=1)
            outcomes, next_position = {}, 0
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    for position, outcome in zip(batch["position"], batch["outcome"]):
                        position = int(position)
                        if position < next_position or position in outcomes:  # a retried task's second answer
                            self.report["duplicates_ignored"] += 1
                            continue
                        outcomes[position] = outcome
                    while next_position in outcomes:  # in job order, as soon as the order allows
                        yield pickle.loads(outcomes.pop(next_position))
                        next_position += 1
                        bar.update()
            except RetinaMaskError:
                raise
            except Exception as e:
                raise as_user_error(e) from None
        if next_position != len(jobs):
            raise RetinaMaskError(
                f"the Ray run returned no outcome for {len(jobs) - next_position} image(s); "
                "rerun to complete them (finished images are kept)"
            )


_cv2_single_threaded = False


def _evaluate_rows(batch):
    """Ray task: ``evaluate_one`` (the local run's per-image function) for each row's job."""
    global _cv2_single_threaded
    import numpy as np

    from retinamask.apps.evaluate_jobs import evaluate_one, init_worker

    if not _cv2_single_threaded:  # as the local run's worker processes (a task holds one CPU)
        init_worker()
        _cv2_single_threaded = True
    outcomes = np.empty(len(batch["job"]), dtype=object)
    outcomes[:] = [pickle.dumps(evaluate_one(pickle.loads(job))) for job in batch["job"]]
    return {"position": batch["position"], "outcome": outcomes}
