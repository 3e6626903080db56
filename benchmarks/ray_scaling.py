"""``infer`` on Ray vs the local pool, and Ray's scaling over worker nodes, on this machine.

    .venv/bin/python -m benchmarks.ray_scaling [--images N] [--model M.onnx] [--threads T] [--json OUT]

Runs, over the same folder of synthetic 640x480 JPEGs and the same model:

1. the local pool: ``run_inference`` (one session of T threads, one preprocessing process);
2. Ray on this machine (a local instance, ``--ray``): one model actor of T threads, the same
   threads as 1.; and T actors of one thread;
3. a Ray cluster on this machine (``ray.cluster_utils.Cluster``, head with 0 CPUs) with one, then
   two 1-CPU worker nodes (one 1-thread actor per node).

Model: R-50-FPN RetinaMask (random weights with ~100 detections per image, as
``python -m benchmarks.suite``) exported end2end fp32 at 512 x 512: about 1.5-2.5 s per image on one
thread here, so the per-image work, not Ray's per-image overhead (tens of ms of CPU: a task, an
object transfer, a status row), is what is measured. ``--model`` takes another export (with the
shipped 448 x 448 model, ~0.1 s per image, that overhead is a visible share on 2 cores).

Per run: wall time from the call to its return (Ray: actors and model loading included; the
local instance's own start-up, timed once, is not) and the steady rate, images/s between the 5th and the last
image written (from the output files' times: start-up excluded, as a long run sees it). Every
Ray run's output folder is compared with the local run's, byte for byte. Nothing here asserts
a speed: the numbers are the result; run it alone (``flock -x``) for the record.
"""

import argparse
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.cpu_load import LoadMonitor
from benchmarks.machine import environment, load_average
from benchmarks.r50 import CONFIG, MAX_DETECTIONS, build_benchmark_model, write_jpegs

logger = logging.getLogger("ray_scaling")
WARMUP_IMAGES = 5  # images written before the steady rate's clock starts


def steady_rate(out_dir, warmup=WARMUP_IMAGES):
    """images/s between the ``warmup``-th and the last image whose outputs were written (mtime of each
    image's last output file)."""
    times = sorted(p.stat().st_mtime_ns for p in Path(out_dir).glob("*_3.bin"))
    if len(times) <= warmup:
        return None
    return (len(times) - warmup) / ((times[-1] - times[warmup - 1]) / 1e9)


def same_bytes(a, b):
    files_a = {p.name: p for p in Path(a).iterdir() if p.is_file()}
    files_b = {p.name: p for p in Path(b).iterdir() if p.is_file()}
    return files_a.keys() == files_b.keys() and all(files_a[n].read_bytes() == files_b[n].read_bytes() for n in files_a)


def timed(monitor, label, function, out_dir, reference=None, **details):
    started = time.perf_counter()
    with monitor.timed(label):
        summary = function()
    wall = time.perf_counter() - started
    row = {
        "run": label,
        "images": summary["count"],
        "failed": len(summary["failed"]),
        "wall_s": wall,
        "images_per_s_wall": summary["count"] / wall,
        "images_per_s_steady": steady_rate(out_dir),
        "same_bytes_as_local": None if reference is None else same_bytes(reference, out_dir),
        **details,
    }
    logger.info(
        "%s: %d images in %.1f s (%.2f images/s; steady %.2f)",
        label,
        row["images"],
        wall,
        row["images_per_s_wall"],
        row["images_per_s_steady"] or 0,
    )
    return row


def ray_cluster(worker_nodes, tmp):
    """A Cluster with a 0-CPU head and ``worker_nodes`` 1-CPU nodes, this process connected."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(worker_nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes(timeout=120)
    ray.init(address=cluster.address, logging_level="WARNING")
    return cluster


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--model", default=None, help="ONNX model (default: R-50 at 512, exported here)")
    parser.add_argument("--size", type=int, default=512, help="input size of the default R-50 export")
    parser.add_argument("--threads", type=int, default=2, help="threads of the local session and the 1-actor run")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def benchmark_model(model, canvas_side):
    """``model`` as given, else the R-50 exported at ``canvas_side`` (the seed's S) to that path."""
    if model.exists():
        return model
    from retinamask.config import load_config
    from retinamask.export import export_model

    logger.info("exporting R-50 at %d to %s ...", canvas_side, model)
    export_model(
        build_benchmark_model(),
        load_config(CONFIG),
        model,
        canvas_side=canvas_side,
        verify=False,
        max_detections=MAX_DETECTIONS,
    )
    return model


def ray_local_rows(monitor, env, model, images, out, reference, threads):
    """Ray on a local instance: 1 actor x ``threads`` threads, then ``threads`` actors x 1 thread."""
    import ray

    from retinamask.distributed.ray_infer import run_inference_on_ray

    rows = []
    for actors, actor_threads in ((1, threads), (threads, 1)):
        name = f"ray_local_{actors}x{actor_threads}"
        # started outside the timing, so that its processes are alive (and counted as this run's) at the end
        started = time.perf_counter()
        ray.init(num_cpus=threads, include_dashboard=False, logging_level="WARNING")
        env["ray_local_startup_s"] = time.perf_counter() - started
        run = functools.partial(
            run_inference_on_ray,
            model,
            images,
            output_dir=out,
            output_dirname=name,
            actors=actors,
            threads=actor_threads,
            progress=False,
        )
        try:
            label = f"Ray, local instance: {actors} actor(s) x {actor_threads} thread(s)"
            rows.append(
                timed(
                    monitor, label, run, out / name, reference, kind="ray-local", actors=actors, threads=actor_threads
                )
            )
        finally:
            ray.shutdown()
    return rows


def ray_cluster_rows(monitor, env, model, images, out, reference, workdir):
    """A Ray cluster on this machine with one, then two 1-CPU worker nodes (one 1-thread actor each)."""
    import ray

    from retinamask.distributed.ray_infer import run_inference_on_ray

    rows = []
    for nodes in (1, 2):
        name = f"ray_cluster_{nodes}"
        started = time.perf_counter()
        cluster = ray_cluster(nodes, workdir)
        env[f"ray_cluster_{nodes}_startup_s"] = time.perf_counter() - started
        run = functools.partial(
            run_inference_on_ray, model, images, output_dir=out, output_dirname=name, threads=1, progress=False
        )
        try:
            label = f"Ray cluster: {nodes} worker node(s) x 1 CPU, 1 actor x 1 thread each"
            rows.append(timed(monitor, label, run, out / name, reference, kind="ray-cluster", nodes=nodes, threads=1))
        finally:
            ray.shutdown()
            cluster.shutdown()
    return rows


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file in ~/.ray for these throw-away instances
    os.environ.pop("RAY_ADDRESS", None)

    import ray

    from retinamask.runtime.infer import run_inference

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ray_scaling-"))
    own_tmp = None
    if "RAY_TMPDIR" not in os.environ:  # short (socket paths), and removed at the end
        own_tmp = os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rmray-", dir="/tmp")
    model = benchmark_model(Path(args.model) if args.model else workdir / f"r50_{args.size}.onnx", args.size)
    images = workdir / "images"
    write_jpegs(images, args.images)
    out = workdir / "out"
    shutil.rmtree(out, ignore_errors=True)
    env = environment(args.threads)
    env["versions"]["ray"] = ray.__version__
    monitor = LoadMonitor()

    reference = out / "local"
    local = functools.partial(
        run_inference, model, images, out, "local", threads=args.threads, workers=1, progress=False
    )
    label = f"local pool: 1 session x {args.threads} threads, 1 preprocessing process"
    rows = [timed(monitor, label, local, reference, kind="local", threads=args.threads)]
    rows += ray_local_rows(monitor, env, model, images, out, reference, args.threads)
    rows += ray_cluster_rows(monitor, env, model, images, out, reference, workdir)
    env["load_check"] = monitor.summary()
    env["load_verdict"] = monitor.verdict()
    env["load_average_at_end"] = load_average()
    report = {"environment": env, "model": str(model), "rows": rows}
    if own_tmp:
        shutil.rmtree(own_tmp, ignore_errors=True)
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def markdown(report):
    env, rows = report["environment"], report["rows"]
    local = rows[0]
    by_kind = {(r["kind"], r.get("nodes")): r for r in rows}
    one, two = by_kind.get(("ray-cluster", 1)), by_kind.get(("ray-cluster", 2))
    lines = [
        "| run | images | wall s | images/s (wall) | images/s (steady) | vs local (steady) | same bytes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = (
            r["images_per_s_steady"] / local["images_per_s_steady"]
            if r["images_per_s_steady"] and local["images_per_s_steady"]
            else None
        )
        same = "-" if r["same_bytes_as_local"] is None else ("yes" if r["same_bytes_as_local"] else "**NO**")
        lines.append(
            f"| {r['run']} | {r['images']} | {r['wall_s']:.1f} | {r['images_per_s_wall']:.2f} | "
            f"{r['images_per_s_steady'] or 0:.2f} | {'' if ratio is None else f'{ratio:.2f}x'} | {same} |"
        )
    if one and two:
        lines += [
            "",
            f"Two 1-CPU worker nodes vs one: {two['images_per_s_steady'] / one['images_per_s_steady']:.2f}x "
            f"(steady), {two['images_per_s_wall'] / one['images_per_s_wall']:.2f}x (wall).",
        ]
    lines += [
        "",
        "Start-up, not in the wall times: local Ray instance "
        f"{env.get('ray_local_startup_s', 0):.1f} s, cluster of 1 / 2 worker nodes "
        f"{env.get('ray_cluster_1_startup_s', 0):.1f} / {env.get('ray_cluster_2_startup_s', 0):.1f} s.",
    ]
    lines += [
        "",
        f"CPU: {env['cpu']} ({env['logical_cpus']} CPUs; {' '.join(env['cpu_flags'])}); load average at "
        f"start {', '.join(f'{v:.2f}' for v in env['load_average_at_start'] or ())}. {env['load_verdict']}",
        f"Model: {Path(report['model']).name}; Versions: "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"Command: `{env['command']}`",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
