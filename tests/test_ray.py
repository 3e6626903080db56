"""infer --ray / evaluate --ray on a real multi-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``: a head with 0 CPUs, so that all work lands on removable 1-CPU
worker nodes): the same bytes as the local run, bad images reported per item, a worker node
removed mid-run, a killed driver. Skipped where Ray is not installed (``retinamask[ray]``)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from retinamask.cli import main
from retinamask.runtime.infer import run_inference
from test_runtime_fakes import box_image, build_fake_model, make_box_dataset

S = 96
WORKER_NODES = 2
TIMEOUT_S = 180  # one Ray run; far above what it takes (seconds), below CI's patience


def _ray_env():
    """Environment for the cluster and its drivers: no token file in ~/.ray, no stray cluster address,
    a short temp folder (Unix socket paths are limited to 107 bytes)."""
    return {
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="rmray-", dir="/tmp"),
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        "RAY_ADDRESS": None,
    }


@pytest.fixture(scope="module")
def cluster():
    """A head (0 CPUs) and two 1-CPU worker nodes, this process connected as the driver.
    Yields (cluster, worker nodes list); a test that removes a node adds one back."""
    pytest.importorskip("ray.data", reason="Ray is an optional extra: pip install 'retinamask[ray]'")
    import ray
    from ray.cluster_utils import Cluster

    env = _ray_env()
    saved = {key: os.environ.get(key) for key in env}
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    ray_cluster = None
    try:
        # a dead node is noticed in about 1 s, not Ray's default 15 s or so (its raylet stops answering health checks)
        ray_cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "_system_config": {
                    "health_check_initial_delay_ms": 0,
                    "health_check_period_ms": 200,
                    "health_check_timeout_ms": 200,
                    "health_check_failure_threshold": 3,
                },
            },
        )
        nodes = [ray_cluster.add_node(num_cpus=1) for _ in range(WORKER_NODES)]
        ray_cluster.wait_for_nodes(timeout=120)
        ray.init(address=ray_cluster.address, logging_level="WARNING")
        yield ray_cluster, nodes
    finally:
        ray.shutdown()
        if ray_cluster is not None:
            ray_cluster.shutdown()
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_fake_model(tmp_path_factory.mktemp("model") / "m.onnx", layout="end2end", canvas_side=S)


def _many_images(folder, count):
    """``count`` PNGs with one red or white box each (varied sizes), named img_000.png ..."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(60, 140, size=2))
        x1, y1 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        image = box_image(h, w, x1, y1, x1 + w // 3, y1 + h // 3, bool(i % 2), seed=i)
        Image.fromarray(image).save(folder / f"img_{i:03d}.png")
    return folder


def _folder_bytes(folder):
    """{name: bytes} of every file in ``folder``, hidden ones (temp files) included."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def _run_with_timeout(function, *args, **kwargs):
    """function(*args, **kwargs) in a thread; fails the test (instead of hanging CI) past TIMEOUT_S."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as e:  # re-raised in the test's thread
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT_S)
    if thread.is_alive():
        pytest.fail(f"the Ray run did not finish in {TIMEOUT_S} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_an_unreachable_cluster_is_one_line(tmp_path, model_path, monkeypatch, capsys):
    """--ray auto where no cluster runs: one line naming the address, exit 2, nothing written."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'retinamask[ray]'")
    if ray.is_initialized():  # the module's cluster is up (another test order): "auto" would find it
        pytest.skip("runs before the module's cluster starts")
    for key, value in _ray_env().items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)  # a fresh temp folder: no address file of another cluster
    image_dir = _many_images(tmp_path / "images", 1)
    code = _run_with_timeout(
        main,
        [
            "infer",
            "--model",
            str(model_path),
            "--input",
            str(image_dir),
            "--output",
            str(tmp_path / "out"),
            "--output_dirname",
            "r",
            "--no-progress",
            "--ray",
            "auto",
        ],
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "cannot connect to the Ray cluster at 'auto'" in err[-1], err
    assert not list((tmp_path / "out" / "r").glob("*.bin"))
    shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)


def test_same_bytes_as_local_and_bad_images_reported(tmp_path, cluster, model_path, capsys):
    """infer --ray and evaluate --ray on 2 worker nodes: the local run's output folder byte for byte
    (outputs and sidecar), bad images reported per item (exit 1, not a failed job), the same COCO results."""
    ray_cluster, _ = cluster
    image_dir, ann_file, _ = make_box_dataset(tmp_path / "data")
    (image_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (image_dir / "aaa_empty.jpg").write_bytes(b"")
    common = [
        "--model",
        str(model_path),
        "--input",
        str(image_dir),
        "--output",
        str(tmp_path / "out"),
        "--batchsize",
        "2",
        "--no-progress",
    ]
    # one local session: its name is then the bare session name each actor runs
    assert main(["infer", *common, "--output_dirname", "local", "--workers", "0", "--sessions", "1"]) == 1
    capsys.readouterr()
    code = _run_with_timeout(main, ["infer", *common, "--output_dirname", "ray", "--ray", ray_cluster.address])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "aaa_empty.jpg" in err and "2 item(s) failed" in err

    local, ray_out = _folder_bytes(tmp_path / "out" / "local"), _folder_bytes(tmp_path / "out" / "ray")
    assert sorted(ray_out) == sorted(local) and len(local) == 4 * 5 + 1  # 4 outputs per good image + images.json
    for name in local:
        assert ray_out[name] == local[name], name
    summary = json.loads((tmp_path / "out" / "ray_summary.json").read_text())
    local_session = json.loads((tmp_path / "out" / "local_summary.json").read_text())["session"]
    assert summary["count"] == 5 and summary["session"] == f"ray:{local_session} x2"  # what ran, in 2 actors
    assert [Path(f["file"]).name for f in summary["failed"]] == ["aaa_empty.jpg", "broken.png"]

    evaluated = {}
    for name, extra in (("local", ["--workers", "1"]), ("ray", ["--ray", ray_cluster.address])):
        code = _run_with_timeout(
            main,
            [
                "evaluate",
                "--infer-results-path",
                str(tmp_path / "out" / name),
                "--ann-file",
                str(ann_file),
                "--output-path",
                str(tmp_path / f"eval_{name}.txt"),
                "--no-progress",
                *extra,
            ],
        )
        assert code == 0
        evaluated[name] = (tmp_path / f"eval_{name}_coco_results.json").read_bytes()
    assert evaluated["ray"] == evaluated["local"]
    assert (tmp_path / "eval_ray.txt").read_text() == (tmp_path / "eval_local.txt").read_text()
    assert json.loads(evaluated["ray"])  # the boxes were found: not an empty comparison


def test_worker_node_removed_mid_run(tmp_path, cluster, model_path):
    """One of the two worker nodes dies once the first images are written: every image still gets its
    outputs exactly once, byte-identical to the local run, and the sidecar lists each image once."""
    from retinamask.distributed.ray_infer import run_inference_on_ray

    ray_cluster, nodes = cluster
    images = _many_images(tmp_path / "images", 24)
    run_inference(model_path, images, tmp_path, "local", workers=0, progress=False)
    out = tmp_path / "ray"
    removal = {}

    def remove_a_node_mid_run():
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and "done" not in removal:
            written = len(list(out.glob("*_3.bin"))) if out.is_dir() else 0
            if written >= 2:
                removal["written_before"] = written
                ray_cluster.remove_node(nodes[0], allow_graceful=False)
                removal["removed"] = True
                return
            time.sleep(0.02)

    remover = threading.Thread(target=remove_a_node_mid_run, daemon=True)
    remover.start()
    try:
        summary = _run_with_timeout(
            run_inference_on_ray, model_path, images, output_dir=tmp_path, output_dirname="ray", progress=False
        )
    finally:
        removal["done"] = True
        remover.join(TIMEOUT_S)
        if removal.get("removed"):  # the module's other tests get their two worker nodes back
            nodes[0] = ray_cluster.add_node(num_cpus=1)
            ray_cluster.wait_for_nodes(timeout=120)
    assert removal.get("removed") and removal["written_before"] < 24, removal  # the node died mid-run
    assert summary["count"] == 24 and summary["failed"] == []
    local, ray_out = _folder_bytes(tmp_path / "local"), _folder_bytes(out)
    assert sorted(ray_out) == sorted(local)  # no leftover temp file, no missing or extra output
    for name in local:
        assert ray_out[name] == local[name], name
    sidecar = json.loads((out / "images.json").read_text())
    assert [r["basename"] for r in sidecar["images"]] == [f"img_{i:03d}" for i in range(24)]


def test_an_unwritable_output_stops_the_ray_run_with_one_line(tmp_path, cluster, model_path, capsys):
    """An error of the run, not of an item (here: a folder where an output file goes) stops a Ray run
    with the local run's one line and exit 2, not a Ray traceback."""
    ray_cluster, _ = cluster
    image_dir, _, _ = make_box_dataset(tmp_path / "data")
    (tmp_path / "out" / "r" / "img_002_1.bin").mkdir(parents=True)
    code = _run_with_timeout(
        main,
        [
            "infer",
            "--model",
            str(model_path),
            "--input",
            str(image_dir),
            "--output",
            str(tmp_path / "out"),
            "--output_dirname",
            "r",
            "--no-progress",
            "--ray",
            ray_cluster.address,
        ],
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "img_002_1.bin: cannot write" in err[-1], err


def test_a_model_the_nodes_cannot_load_stops_the_run_with_one_line(tmp_path, cluster, model_path):
    """An actor that fails to start (here: the nodes are given a model path that does not exist) ends
    the run with that error (not a hang, not a Ray traceback)."""
    from retinamask.core.errors import InputError
    from retinamask.distributed.ray_infer import RayExecutor

    image_dir, _, _ = make_box_dataset(tmp_path / "data")
    executor = RayExecutor(tmp_path / "missing.onnx", threads=1)
    with pytest.raises(InputError, match=r"missing.onnx: the model is not visible on node .* every node mounts"):
        _run_with_timeout(run_inference, model_path, image_dir, tmp_path, "r", progress=False, executor=executor)


def test_an_actor_that_cannot_see_the_output_folder_says_so(tmp_path, model_path):
    """A node that does not mount the output folder (no images.json, which the driver writes first)."""
    pytest.importorskip("ray.data", reason="Ray is an optional extra: pip install 'retinamask[ray]'")
    from retinamask.core.errors import InputError
    from retinamask.distributed.ray_infer import _ModelActor
    from retinamask.formats.model_info import read_model_info

    with pytest.raises(InputError, match=r"output folder is not visible on node .*a path every node mounts"):
        _ModelActor(read_model_info(model_path), "onnxruntime", "cpu", "fp32", 1, None, str(tmp_path), "BIN", False)


@pytest.mark.slow
def test_killed_driver_leaves_a_folder_a_rerun_completes(tmp_path, cluster, model_path):
    """kill -9 of an `infer --ray` driver once outputs appear: a local rerun and a Ray rerun each complete
    the folder, byte-identical to an undisturbed local run."""
    ray_cluster, _ = cluster
    images = _many_images(tmp_path / "images", 24)
    run_inference(model_path, images, tmp_path, "local", workers=0, progress=False)
    reference = _folder_bytes(tmp_path / "local")
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    for rerun in ("local", "ray"):
        name = f"killed_{rerun}"
        out = tmp_path / name
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "retinamask",
                "infer",
                "--model",
                str(model_path),
                "--input",
                str(images),
                "--output",
                str(tmp_path),
                "--output_dirname",
                name,
                "--no-progress",
                "--ray",
                ray_cluster.address,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while time.monotonic() < deadline and driver.poll() is None and len(list(out.glob("*_3.bin"))) < 2:
                time.sleep(0.02)
            written = len(list(out.glob("*_3.bin")))
            driver.send_signal(signal.SIGKILL)
            driver.wait(30)
        finally:
            if driver.poll() is None:
                driver.kill()
        assert 2 <= written < 24, written  # killed mid-run
        assert json.loads((out / "images.json").read_text())["finished"] is False
        if rerun == "local":
            summary = run_inference(model_path, images, tmp_path, name, workers=0, progress=False)
        else:
            from retinamask.distributed.ray_infer import run_inference_on_ray

            summary = _run_with_timeout(
                run_inference_on_ray, model_path, images, output_dir=tmp_path, output_dirname=name, progress=False
            )
        assert summary["count"] + summary["skipped"] == 24 and summary["skipped"] >= 2
        time.sleep(0.5)  # the killed driver's workers: gone once Ray notices their owner died
        got = _folder_bytes(out)
        assert sorted(got) == sorted(reference), rerun
        for file_name in reference:
            assert got[file_name] == reference[file_name], (rerun, file_name)


def test_without_ray_the_flag_says_how_to_install_it(tmp_path, model_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is not installed
    image_dir = _many_images(tmp_path / "images", 1)
    for command in (
        ["infer", "--model", str(model_path), "--input", str(image_dir), "--output", str(tmp_path)],
        ["evaluate", "--infer-results-path", str(tmp_path), "--ann-file", str(tmp_path / "a.json")],
    ):
        capsys.readouterr()
        code = main([*command, "--ray"])
        err = capsys.readouterr().err.strip()
        assert code == 2, command
        assert "pip install 'retinamask[ray]'" in err and len(err.splitlines()) == 1, err


def test_address_from_the_flag_then_ray_address_then_a_local_instance(monkeypatch):
    from retinamask.distributed.cluster import resolve_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert resolve_address(None) == "head:6379"
    assert resolve_address("ray://other:10001") == "ray://other:10001"


def test_a_dynamic_canvas_model_gives_the_local_bytes_on_ray(tmp_path, cluster):
    """A model exported with --resize original (any canvas, image_sizes input): each image's valid
    region reaches the actors, so clipping and outputs equal the local run's byte for byte."""
    pytest.importorskip("torch")
    from PIL import Image

    from retinamask import export
    from retinamask.config import load_config
    from retinamask.export.verify import synthetic_image
    from tiny_model import TINY_OPTS, tiny_model_with_detections

    cfg = load_config(
        "retinanet_mask_R-50-FPN_2x_adjust_std011_ms",
        TINY_OPTS + ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160"],
    )
    model_path = tmp_path / "original.onnx"
    export.export_model(
        tiny_model_with_detections(cfg, 128),
        cfg,
        model_path,
        resize="original",
        dynamic_batch=True,
        verify=False,
        simplify=False,
    )
    images = tmp_path / "images"
    images.mkdir()
    # sizes whose resized region is smaller than its padded canvas (e.g. 70x150 -> 75x160 in 96x160)
    for i, (h, w) in enumerate(((70, 150), (100, 130), (150, 70), (130, 100), (110, 97), (97, 110))):
        Image.fromarray(synthetic_image(h, w, variant=i)).save(images / f"{i:03d}.png")
    ray_cluster, _ = cluster
    common = [
        "--model",
        str(model_path),
        "--input",
        str(images),
        "--output",
        str(tmp_path / "out"),
        "--batchsize",
        "2",
        "--no-progress",
    ]
    assert main(["infer", *common, "--output_dirname", "local", "--workers", "0"]) == 0
    assert _run_with_timeout(main, ["infer", *common, "--output_dirname", "ray", "--ray", ray_cluster.address]) == 0
    local, ray_out = _folder_bytes(tmp_path / "out" / "local"), _folder_bytes(tmp_path / "out" / "ray")
    assert sorted(ray_out) == sorted(local) and len(local) == 4 * 6 + 1
    for name in local:
        assert ray_out[name] == local[name], name
