"""``retinamask infer --ray``: the same inference, run on a Ray cluster with Ray Data.

The driver does what a local run does before and after inference (listing, resume,
the run sidecar, the summary: :func:`~retinamask.runtime.infer.run_inference`); this module
replaces only the part in between, :func:`~retinamask.runtime.infer_batches.infer_local`:

* a dataset of the items still to do (one picklable load job per row, paths made absolute);
* decoding and preprocessing as Ray tasks (``load_item``, the local run's function);
* the model in a pool of actors, one session each, whose intra-op threads are the CPUs the
  actor holds (and one GPU each with ``device`` cuda/tensorrt); each actor writes its images'
  outputs with the local run's writer (``infer_batch``: atomic files, deterministic names) and
  returns one small status row per image to the driver.

Faults: Ray retries the tasks and restarts the actors of a node that dies; an image done twice
is written twice to the same names with the same bytes, atomically, and the driver counts each
image once. A bad image is a status row (reported like the local run), never a failed job.
The driver's sidecar is written before the first output, so a killed driver leaves a folder
that any rerun (local or Ray) completes.

Every node must see the model, the inputs and the output folder at the same paths (a shared
file system); an actor checks that it sees the output folder before it starts.
"""

import dataclasses
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np

from retinamask.core.errors import InputError, RetinaMaskError

logger = logging.getLogger(__name__)

_MAX_BLOCKS = 10_000  # input rows are split into at most this many blocks (one row each below it)


def run_inference_on_ray(
    model_path,
    input_path,
    address=None,
    actors=None,
    threads=None,
    preprocess_cpus=None,
    backend="auto",
    device="cpu",
    precision="fp32",
    cache_dir=None,
    **kwargs,
):
    """:func:`~retinamask.runtime.infer.run_inference` on a Ray cluster (see the module docstring).

    address: "auto", "ray://host:10001", "host:port"; None: RAY_ADDRESS, else a new local Ray
    instance (see :func:`.cluster.resolve_address`). actors: model actors (default: one per
    ``threads`` CPUs of each node, or one per GPU). threads: CPUs each actor holds and its
    intra-op threads (default 1). preprocess_cpus: CPUs one decode task holds (default 0.25 with
    CPU actors, which hold ``threads - preprocess_cpus`` so that a node full of actors still
    decodes; 1 with GPU actors). backend "auto" is resolved by each actor for its node's CPU (the
    summary's ``ray.sessions`` lists what ran). Other arguments and the returned summary: ``run_inference``'s
    (``workers`` is not used); the summary has a ``ray`` entry (address, nodes, actors, ...).
    """
    from retinamask.runtime.infer import run_inference

    executor = RayExecutor(
        model_path,
        address=address,
        actors=actors,
        threads=threads,
        preprocess_cpus=preprocess_cpus,
        backend=backend,
        device=device,
        precision=precision,
        cache_dir=cache_dir,
    )
    summary = run_inference(
        model_path,
        input_path,
        backend=backend,
        device=device,
        precision=precision,
        cache_dir=cache_dir,
        executor=executor,
        **kwargs,
    )
    summary["ray"] = executor.report
    return summary


class RayExecutor:
    """Runs ``run_inference``'s items on Ray (the ``executor`` it takes); ``report`` describes the last run."""

    def __init__(
        self,
        model_path,
        address=None,
        actors=None,
        threads=None,
        preprocess_cpus=None,
        backend="auto",
        device="cpu",
        precision="fp32",
        cache_dir=None,
    ):
        from retinamask.distributed.cluster import import_ray
        from retinamask.runtime.auto_backend import FASTEST
        from retinamask.runtime.backends import normalize_precision

        import_ray()  # without Ray: say how to install it before anything is written
        self.model_path = os.path.abspath(model_path)
        self.address = address
        self.actors = None if actors is None else int(actors)
        self.threads = 1 if threads is None else int(threads)
        if self.actors is not None and self.actors < 1:
            raise InputError(f"--ray-actors must be >= 1, got {actors}")
        if self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {threads}")
        self.gpus = 0 if device == "cpu" else 1
        self.preprocess_cpus = float(preprocess_cpus if preprocess_cpus is not None else (1.0 if self.gpus else 0.25))
        if self.gpus == 0 and not 0 < self.preprocess_cpus < self.threads:
            raise InputError(f"preprocess CPUs must be in (0, threads = {self.threads}), got {self.preprocess_cpus}")
        self.backend, self.device = backend, device
        # "fastest" is each node's: its actors decide by their CPU (create_session)
        self.precision = FASTEST if str(precision).lower() == FASTEST else normalize_precision(precision)
        self.cache_dir = None if cache_dir is None else os.path.abspath(cache_dir)
        self.name = f"ray:{backend}-{device}-{self.precision}"
        self.report = {}

    def run(self, todo, info, batch_size, out_dir, outfmt, legacy_names):
        """Yield ``infer_local``'s events for ``todo``: "done" in the order images finish, "failed" in
        item order (so the sidecar lists failures as a local run does)."""
        from retinamask.core.fileio import remove_stale_temp_files
        from retinamask.distributed.cluster import (
            alive_node_resources,
            as_user_error,
            connected,
            import_ray,
            resolve_address,
        )
        from retinamask.runtime.infer_inputs import load_job

        if not todo:
            return
        already_connected = import_ray().is_initialized()
        with connected(self.address) as ray:
            nodes = alive_node_resources(ray)
            actors = self.actors or self._default_actors(nodes)
            self.name = f"ray:{self.backend}-{self.device}-{self.precision} x{actors}"
            self.report = {
                "address": "this driver's connection" if already_connected else resolve_address(self.address),
                "nodes": len(nodes),
                "cluster_cpus": sum(n.get("CPU", 0) for n in nodes),
                "cluster_gpus": sum(n.get("GPU", 0) for n in nodes),
                "actors": actors,
                "threads_per_actor": self.threads,
                "gpus_per_actor": self.gpus,
                "preprocess_cpus": self.preprocess_cpus,
                "duplicates_ignored": 0,
                "sessions": set(),
            }
            if not self.gpus and self.report["cluster_gpus"]:
                logger.info(
                    "the cluster has %g GPUs: --device cuda runs the model actors on them", self.report["cluster_gpus"]
                )
            logger.info(
                "Ray: %d model actors (%d thread(s), %s GPU each), decode tasks of %g CPU",
                actors,
                self.threads,
                self.gpus,
                self.preprocess_cpus,
            )
            ds = _build_dataset(ray, todo, info, load_job, self, actors, batch_size, out_dir, outfmt, legacy_names)
            try:
                yield from _events(ds, todo, self.report)
            except RetinaMaskError:
                raise
            except Exception as e:
                raise as_user_error(e) from None
            finally:
                self._describe_sessions(actors)
            # every actor is done: what a worker killed mid-write left (on any node) is garbage now
            remove_stale_temp_files(out_dir, other_hosts=True)

    def _describe_sessions(self, actors):
        """name / backend from what the actors ran (``--backend auto`` picks per node: maybe more than one)."""
        pairs = sorted(tuple(s.split("\t", 1)) for s in self.report["sessions"])
        self.report["sessions"] = [name for _, name in pairs]
        if pairs:
            self.backend = "+".join(dict.fromkeys(backend for backend, _ in pairs))
            self.name = f"ray:{'+'.join(name for _, name in pairs)} x{actors}"

    def _default_actors(self, nodes):
        if self.gpus:
            count = int(sum(n.get("GPU", 0) for n in nodes))
            what = "GPUs"
        else:
            count = sum(int(n.get("CPU", 0) // self.threads) for n in nodes)
            what = f"nodes with {self.threads} CPU(s) for a model actor (--threads)"
        if count < 1:
            raise InputError(f"the Ray cluster has no {what}")
        return count


def _build_dataset(ray, todo, info, load_job, executor, actors, batch_size, out_dir, outfmt, legacy_names):
    """items -> load tasks -> model actors: a dataset of status rows (position, cause, extra, ms)."""
    from ray.data import ActorPoolStrategy

    rows = []
    for position, item in enumerate(todo):
        absolute = dataclasses.replace(item, source=Path(os.path.abspath(item.source)))
        rows.append(
            {
                "position": position,
                "basename": item.basename,
                "source": str(absolute.source),
                "record": json.dumps(item.record),
                "job": pickle.dumps(load_job(absolute, info)),
            }
        )
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), _MAX_BLOCKS))
    ds = ds.map_batches(_load_rows, batch_size=None, num_cpus=executor.preprocess_cpus)
    model_info = dataclasses.replace(info, path=Path(executor.model_path))
    actor_cpus = executor.threads if executor.gpus else executor.threads - executor.preprocess_cpus
    return ds.map_batches(
        _ModelActor,
        batch_size=batch_size,
        # all actors started at once; the run goes on with fewer while a dead node's actor waits for room
        compute=ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
        num_cpus=actor_cpus,
        num_gpus=executor.gpus or None,
        fn_constructor_kwargs={
            "model_info": model_info,
            "backend": executor.backend,
            "device": executor.device,
            "precision": executor.precision,
            "threads": executor.threads,
            "cache_dir": executor.cache_dir,
            "out_dir": os.path.abspath(out_dir),
            "outfmt": outfmt,
            "legacy_names": legacy_names,
        },
    )


def _load_rows(batch):
    """Ray task: decode and preprocess each row's item (``load_item``, as the local run's workers)."""
    from retinamask.runtime.infer_inputs import load_item

    tensors, extras, causes = [], [], []
    for job, record in zip(batch["job"], batch["record"]):
        tensor, extra, cause = load_item(pickle.loads(job))
        # a failed item still needs a tensor in its row: an empty one, never sent to the model
        tensors.append(np.zeros((3, 0, 0), np.float32) if tensor is None else tensor)
        # the item's record (a .bin's geometry from its sidecar) with what loading added (an image's)
        extras.append(json.dumps({**json.loads(record), **extra}))
        causes.append(cause or "")
    return {
        "position": batch["position"],
        "basename": batch["basename"],
        "source": batch["source"],
        "tensor": _column(tensors),
        "extra": np.array(extras, dtype=object),
        "cause": np.array(causes, dtype=object),
    }


def _column(arrays):
    """Tensors as one [N, ...] array when they share a shape, else an object array (ragged)."""
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


class _ModelActor:
    """Ray actor: one inference session; writes the outputs of the rows it gets and returns their status."""

    def __init__(self, model_info, backend, device, precision, threads, cache_dir, out_dir, outfmt, legacy_names):
        import socket

        from retinamask.formats.run_sidecar import SIDECAR_NAME
        from retinamask.runtime.backends import create_session

        if not Path(model_info.path).is_file():
            raise InputError(
                f"the model is not visible on node {socket.gethostname()}: on a cluster it must be "
                "at a path every node mounts",
                model_info.path,
            )
        if not (Path(out_dir) / SIDECAR_NAME).is_file():  # the driver wrote it before starting the actors
            raise InputError(
                f"the output folder is not visible on node {socket.gethostname()} (no {SIDECAR_NAME} "
                "there): on a cluster it must be a path every node mounts",
                out_dir,
            )
        if backend == "auto":  # for this node's CPU
            from retinamask.runtime.auto_backend import choose_backend, choose_precision

            precision = choose_precision(precision, device).precision
            backend = choose_backend(precision, device, quantized=model_info.quantized).backend
        # OpenVINO pins a session's threads to the first cores of the process's CPU mask: actors that share
        # a node would share those cores (two 1-thread actors measured no faster than one). Unpinned, the
        # OS spreads them; an actor with the whole node keeps the pinning (measured faster there).
        from retinamask.core.jobs import usable_cpus

        options = {"ENABLE_CPU_PINNING": False} if backend == "openvino" and threads < usable_cpus() else None
        self.session = create_session(
            model_info.path,
            backend,
            device,
            precision,
            threads=threads,
            cache_dir=cache_dir,
            model_info=model_info,
            runtime_options=options,
        )
        self.specs = model_info.outputs
        self.out_dir, self.outfmt, self.legacy_names = Path(out_dir), outfmt, legacy_names

    def __call__(self, batch):
        from retinamask.runtime.infer_batches import infer_batch
        from retinamask.runtime.infer_inputs import InputItem

        rows = len(batch["position"])
        ms = np.full(rows, -1.0)
        call = np.full(rows, -1, dtype=np.int64)  # the position of the first image of each row's model call
        ok = [i for i in range(rows) if not batch["cause"][i]]
        by_shape = {}
        for i in ok:  # one model call per canvas shape
            by_shape.setdefault(tuple(batch["tensor"][i].shape), []).append(i)
        for indices in by_shape.values():
            # the record carries each image's valid region, which a dynamic-H/W model takes as image_sizes
            items = [
                InputItem(batch["basename"][i], Path(batch["source"][i]), "image", json.loads(batch["extra"][i]))
                for i in indices
            ]
            tensors = np.stack([batch["tensor"][i] for i in indices])
            ms[indices] = infer_batch(
                self.session, tensors, items, self.out_dir, self.specs, self.outfmt, self.legacy_names
            )
            call[indices] = batch["position"][indices[0]]
        return {
            "position": batch["position"],
            "cause": batch["cause"],
            "extra": batch["extra"],
            "ms": ms,
            "call": call,
            "session": np.full(rows, f"{self.session.backend}\t{self.session.name}", dtype=object),
        }


def _events(ds, todo, report):
    """Status rows -> ``infer_local``-style events, one "done" per model call; each image counted
    once (an image whose task was retried after a node died may come back twice)."""
    resolved = np.zeros(len(todo), dtype=bool)
    failures, timed_calls = {}, set()
    next_position = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        calls = {}
        report["sessions"].update(set(batch["session"]))
        for position, cause, extra, ms, call in zip(
            batch["position"], batch["cause"], batch["extra"], batch["ms"], batch["call"]
        ):
            position = int(position)
            if resolved[position]:
                report["duplicates_ignored"] += 1
                continue
            resolved[position] = True
            if cause:
                failures[position] = cause
                continue
            item = todo[position]
            item.record.update(json.loads(extra))
            calls.setdefault(int(call), ([], float(ms)))[0].append(item)
        for call, (items, ms) in calls.items():
            yield "done", items, (None if call in timed_calls else ms)  # a call split over two blocks: timed once
            timed_calls.add(call)
        while next_position < len(todo) and resolved[next_position]:
            if next_position in failures:
                yield "failed", todo[next_position], failures.pop(next_position)
            next_position += 1
    missing = int((~resolved).sum())
    if missing:  # Ray Data finished without them: never expected, but never silent
        raise RetinaMaskError(f"the Ray run returned no status for {missing} image(s); rerun to complete them")
