"""``python -m benchmarks.suite``, section by section on a tiny model at S = 128: every section
runs and reports what the Markdown table needs; every benchmark script starts as a module from
the repository root. No timing is asserted: speed is what the suite prints."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import suite  # noqa: E402
from benchmarks.cpu_load import LoadMonitor, other_busy_processes, own_tree_seconds  # noqa: E402
from benchmarks.flops import count_flops  # noqa: E402
from benchmarks.machine import environment  # noqa: E402
from benchmarks.r50 import CONFIG, INPUT_SIZE, MAX_DETECTIONS, benchmark_input, write_jpegs  # noqa: E402
from benchmarks.sections import sweep as sweep_section  # noqa: E402
from benchmarks.sections.infer_routes import infer_routes  # noqa: E402
from benchmarks.sections.latency import latency_rows  # noqa: E402
from benchmarks.sections.models import prepare_models  # noqa: E402
from benchmarks.sections.peaks import matmul_peaks  # noqa: E402
from benchmarks.sections.postprocess_eval import postprocess_and_evaluate  # noqa: E402
from benchmarks.sections.preprocessing import preprocessing_throughput  # noqa: E402
from benchmarks.synthetic import synthetic_ground_truth, synthetic_outputs  # noqa: E402
from retinamask.config import load_config  # noqa: E402
from tiny_model import TINY_OPTS, tiny_model_with_detections  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = (
    "suite",
    "video",
    "resize_policies",
    "accuracy",
    "serve",
    "serve_protocols",
    "serve_latency",
    "conventions",
    "coco_eval_speed",
    "ray_scaling",
    "pytorch_latency",
    "infer_levers",
    "mask_ceiling",
    "tracking",
)

S = 128
SETTINGS = {**suite.QUICK, "warmup": 0, "repeats": 1, "calibration_images": 2, "batched": True}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, cfg, paths of the end2end / seed / int8 exports, work folder)."""
    cfg = load_config(CONFIG, TINY_OPTS)
    model = tiny_model_with_detections(cfg, S)
    workdir = tmp_path_factory.mktemp("suite")
    paths, seconds = prepare_models(workdir, model, cfg, S, SETTINGS, reuse=False)
    assert set(seconds) == {"end2end", "seed", "end2end_dynamic", "end2end_k50", "int8", "int8_k50"}
    return model, cfg, paths, workdir


def test_flop_counter_counts_the_dense_part_and_the_mask_head_per_roi(tiny):
    _model, _, paths, _ = tiny
    end2end, seed, int8 = (count_flops(paths[k]) for k in ("end2end", "seed", "int8"))
    # the same convolutions whichever the layout or the quantization
    assert end2end["dense_gflop"] == pytest.approx(seed["dense_gflop"]) == pytest.approx(int8["dense_gflop"])
    assert end2end["mask_gflop_per_roi"] == pytest.approx(seed["mask_gflop_per_roi"])
    assert end2end["mask_gflop_per_roi"] == pytest.approx(int8["mask_gflop_per_roi"])
    # against a hand count of the mask head: 2 convs 32->32 3x3 at 14x14, deconv 32->32 2x2 to 28x28,
    # 1x1 predictor 32->4 at 28x28
    per_roi = 2 * (2 * 14 * 14 * 32 * 32 * 9) + 2 * 14 * 14 * 32 * 32 * 4 + 2 * 28 * 28 * 4 * 32
    assert end2end["mask_gflop_per_roi"] == pytest.approx(per_roi / 1e9)
    # and the stem conv alone is part of the dense count: 7x7x3 -> 8 at 64x64
    assert end2end["dense_gflop"] > 2 * 64 * 64 * 8 * 3 * 49 / 1e9
    assert end2end["by_op"]["ConvTranspose"] == 1


def test_matmul_peaks_cover_each_precision(tmp_path):
    peaks = matmul_peaks(tmp_path, threads=1, size=64, repeats=1)
    assert {"fp32", "int8"} <= set(peaks["peak"])
    assert all(rate["gflops"] > 0 for rate in peaks["rates"])


def test_latency_rows_and_the_markdown_table(tiny, tmp_path):
    model, _, paths, workdir = tiny
    flops = {key: count_flops(paths[key]) for key in ("end2end", "seed")}
    peaks = matmul_peaks(tmp_path, threads=1, size=64, repeats=1)
    rows = latency_rows(paths, model, benchmark_input(S), flops, peaks, 1, SETTINGS)
    measured = [r for r in rows if "error" not in r]
    assert measured[0]["route"].startswith("PyTorch eager") and measured[0]["speedup_vs_eager"] == 1.0
    routes = {(r["route"], r["precision"]) for r in measured}
    assert ("ONNX Runtime, end2end", "fp32") in routes and ("ONNX Runtime, end2end INT8", "int8") in routes
    by_route = {(r["route"], r["precision"]): r for r in measured}
    # the exact fp32 path finds every detection of the eager model
    assert by_route[("ONNX Runtime, end2end", "fp32")]["agreement_with_eager"] == 1.0
    assert by_route[("ONNX Runtime, seed layout + host NMS", "fp32")]["mask_rois"] == 1000
    assert by_route[("ONNX Runtime, end2end K=50", "fp32")]["agreement_with_eager"] == 1.0
    assert by_route[("ONNX Runtime, end2end K=50", "fp32")]["detections"] <= 50
    assert by_route[("ONNX Runtime, end2end, batch 2", "fp32")]["batch"] == 2
    gpu = [
        r for r in rows if r["route"].startswith("ONNX Runtime CUDA") or r["route"].startswith("ONNX Runtime TensorRT")
    ]
    assert gpu and all("error" in r or r["median_s"] > 0 for r in gpu)

    preprocessing = preprocessing_throughput(paths["end2end"], write_jpegs(workdir / "jpegs", 3)[0].parent, [0, 1])
    assert [r["images"] for r in preprocessing] == [3, 3]
    post = postprocess_and_evaluate(12, workers=1, chunk=5)
    assert post["detections"] == 12 * MAX_DETECTIONS and post["fused_rle_mismatched_images"] == 0
    infer_dir = workdir / "infer_jpegs"
    write_jpegs(infer_dir, 2, height=96, width=128)
    infer = infer_routes(paths["end2end"], infer_dir, workdir, threads=1)
    assert infer["images"] == 2 and infer["bins_total_s"] >= infer["bins_preprocess_s"]

    report = {
        "input_size": S,
        "environment": environment(1),
        "latency": rows,
        "flops": flops,
        "peaks": peaks,
        "preprocessing": preprocessing,
        "postprocess_eval": post,
        "infer": infer,
        "preparation_s": {},
    }
    text = suite.markdown(report)
    table = [line for line in text.splitlines() if line.startswith("| PyTorch eager")]
    assert len(table) == 1 and "| 1.00 |" in table[0]
    assert "unavailable" in text or not any("error" in r for r in rows)


def test_synthetic_evaluation_gives_identical_stats_in_both_evaluators():
    pytest.importorskip("faster_coco_eval")
    post = postprocess_and_evaluate(20, workers=1, chunk=7)
    assert post["ground_truth"] > 20
    assert post["max_stat_difference"] == 0.0
    stats = post["evaluation"]["pycocotools"]["stats"]
    assert 0.2 < stats["bbox"]["AP"] < 1.0 and 0.2 < stats["segm"]["AP"] < 1.0  # meaningful, not degenerate


def test_synthetic_outputs_follow_the_end2end_contract():
    rng = np.random.default_rng(0)
    dataset = synthetic_ground_truth(3)
    image = dataset["images"][0]
    anns = [a for a in dataset["annotations"] if a["image_id"] == image["id"]]
    (boxes, labels, scores, masks), image_hw, resized_hw = synthetic_outputs(
        image, anns, sorted(c["id"] for c in dataset["categories"]), rng
    )
    assert boxes.shape == (100, 4) and labels.dtype == np.int32 and masks.shape == (100, 1, 28, 28)
    assert (np.diff(scores) <= 0).all() and labels.min() >= 1
    assert max(resized_hw) == INPUT_SIZE and image_hw == (image["height"], image["width"])


def test_session_option_sweep(tiny, monkeypatch):
    _, _, paths, workdir = tiny
    monkeypatch.setattr(sweep_section, "SWEEP", sweep_section.SWEEP[:2] + sweep_section.SWEEP[-2:])
    sweep = sweep_section.session_option_sweep(paths, benchmark_input(S), 1, SETTINGS, workdir)
    assert len(sweep["latency"]) == 4 and all("median_s" in r or "error" in r for r in sweep["latency"])
    assert {(r["backend"], r["model"]) for r in sweep["session_creation"]} == {
        ("onnxruntime", "end2end"),
        ("openvino", "end2end"),
        ("onnxruntime", "int8"),
        ("openvino", "int8"),
    }
    assert all(r["cache_cold_s"] > 0 and r["cache_warm_s"] > 0 for r in sweep["session_creation"])
    # every run fills a cache of its own (a cold start is never a rerun's warm one), then removes it
    assert not list(workdir.glob("cache_*"))


def test_infer_routes_time_fresh_runs_not_resumes(tiny, tmp_path, monkeypatch):
    """Two runs in one work folder both infer every image: the second does not time a resume."""
    _, _, paths, workdir = tiny
    jpegs = tmp_path / "jpegs"
    write_jpegs(jpegs, 2, height=96, width=128)
    counts = []
    import retinamask.runtime.infer as infer_module

    original = infer_module.run_inference

    def counting(*args, **kwargs):
        summary = original(*args, **kwargs)
        counts.append((summary["count"], summary["skipped"]))
        return summary

    monkeypatch.setattr(infer_module, "run_inference", counting)
    for _ in range(2):
        infer_routes(paths["end2end"], jpegs, workdir, 1)
    assert counts == [(2, 0)] * 4  # (inferred, skipped) for streaming and .bin routes, both runs


def test_bench_compare_reports_gpu_routes_cleanly(tiny, monkeypatch, capsys):
    """No GPU here: CUDA/TensorRT rows say why; a GPU route failing at run time fails its row only."""
    from retinamask.cli import main
    from retinamask.runtime import backends, bench

    _, _, paths, _ = tiny
    assert main(["bench", "--model", str(paths["end2end"]), "--compare", "--loop", "1", "--warmup", "0"]) == 0
    table = {
        line.split("|")[2].strip() + " " + line.split("|")[3].strip(): line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| onnxruntime")
    }
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "unavailable: this onnxruntime" in table["cuda fp32"] and "onnxruntime-gpu" in table["cuda fp32"]
        assert "unavailable:" in table["tensorrt fp16"]

    monkeypatch.setattr(
        backends,
        "candidate_configurations",
        lambda: [("onnxruntime", "cpu", "fp32", None), ("onnxruntime", "cuda", "fp32", None)],
    )
    real_run = bench.run_benchmark

    def run(model_path, backend, device, *args, **kwargs):
        if device == "cuda":
            raise RuntimeError("CUDA failure 999: unknown error\nmore lines")
        return real_run(model_path, backend, device, *args, **kwargs)

    monkeypatch.setattr(bench, "run_benchmark", run)
    rows = bench.compare_backends(paths["end2end"], loop=1, warmup=0)
    assert rows[0]["mean_ms"] > 0
    assert rows[1]["error"] == "failed: RuntimeError: CUDA failure 999: unknown error more lines"
    assert "| failed: RuntimeError" in bench.format_table(rows)


def test_other_processes_are_noticed():
    """A busy process outside this one's tree is listed; this process's own children are not."""
    import subprocess
    import time

    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    # started through a shell that exits at once, so that the spinner is no descendant of ours
    outsider = int(
        subprocess.run(
            ["sh", "-c", f'"{sys.executable}" -c "{spin}" >/dev/null 2>&1 & echo $!'],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        found = {b["pid"]: b for b in other_busy_processes("test", interval=1.0)}
        assert outsider in found and found[outsider]["cpu_percent"] > 20
        assert child.pid not in found
    finally:
        child.wait()
        while Path(f"/proc/{outsider}").exists():
            time.sleep(0.2)


def test_load_monitor_counts_short_lived_outsiders_and_not_its_own_children():
    """Other processes that start and end inside a timed section (invisible to per-process
    sampling) are counted; CPU used by this process and its children is not."""
    import subprocess

    burn = "import time\nend = time.process_time() + 1.5\nwhile time.process_time() < end: pass"
    before = own_tree_seconds()
    subprocess.run([sys.executable, "-c", burn], check=True)  # 1.5 CPU-s in a child: ours, not "other"
    assert own_tree_seconds() - before >= 1.4
    monitor = LoadMonitor()
    with monitor.timed("outsiders"):
        # three short-lived spinners, each started through a shell that exits at once (not our
        # descendants), each gone before the section ends
        subprocess.run(
            ["sh", "-c", " ; ".join([f'("{sys.executable}" -c "{burn}" &)'] * 3) + " ; sleep 0.1"], check=True
        )
        _wait_for_no_spinners(burn)
    summary = monitor.summary()
    assert summary["sections"]["outsiders"]["other_cpu_seconds"] >= 3.0  # other jobs on the machine only add
    assert not summary["fit_for_record"] and "NOT fit for the record" in monitor.verdict()


def _wait_for_no_spinners(marker, timeout=60):
    import time

    end = time.time() + timeout
    while time.time() < end:
        if not any(marker.split("\n")[1] in _cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit()):
            return
        time.sleep(0.1)
    raise AssertionError("spinners did not finish")


def _cmdline(proc):
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_starts_as_a_module_from_the_repository_root(name):
    """``python -m benchmarks.NAME --help``: the package imports without sys.path edits."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_infer_levers_time_every_setting_on_fresh_folders(tmp_path, capsys):
    from benchmarks import infer_levers

    report = tmp_path / "r.json"
    infer_levers.main(["--workdir", str(tmp_path), "--rounds", "1", "--shipped-images", "3", "--json", str(report)])
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "setting" not in line]
    assert [row.split(" | ")[0][2:] for row in rows] == [label for label, _ in infer_levers.SETTINGS]
    assert rows[0].endswith("| 1.00 |")  # the reference row
    rates = json.loads(report.read_text())["rates"]
    (per_setting,) = rates.values()
    assert all(len(values) == 1 and values[0] > 0 for values in per_setting.values())
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["shapes"]  # every run's folder was removed


def test_mask_ceiling_rows(tmp_path, capsys):
    """Perfect masks through the sub-pixel paste give segm AP 1 on the generated split (independent of the
    resolution's loss), the original's paste less; the shipped model's rows are there for both pastes."""
    from benchmarks import mask_ceiling

    rows = mask_ceiling.main(["--workdir", str(tmp_path), "--num-images", "6"])
    assert rows[(28, False, "subpixel")]["AP"] > 0.99
    assert rows[(28, False, "original")]["AP"] < rows[(28, False, "subpixel")]["AP"]
    assert set(rows) >= {("shipped", "original"), ("shipped", "subpixel")}
    assert "sub-pixel paste" in capsys.readouterr().out


def test_tracking_benchmark_scores_three_ways(tmp_path, capsys):
    from benchmarks import tracking

    report = tmp_path / "tracking.json"
    argv = ["--num-videos", "1", "--frames", "6", "--size", "128x96", "--workdir", str(tmp_path), "--json", str(report)]
    assert tracking.main(argv) == 0
    printed = capsys.readouterr().out
    assert "CPU: " in printed and "frames/s" in printed
    ways = json.loads(report.read_text())["ways"]
    assert list(ways) == ["model", "model, stride 2", "ground-truth boxes"]
    assert ways["model, stride 2"]["overall"]["frames"] == 3
    assert ways["ground-truth boxes"]["overall"]["recall"] == 1.0
