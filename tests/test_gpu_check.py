"""benchmarks.gpu_check on the CPU: the device check's code, run small (``--device cpu --quick``)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from benchmarks import gpu_check, gpu_sections  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ["environment", "parity", "latency", "accuracy", "training"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """The JSON and Markdown of one ``--device cpu --quick`` run (parity against ../shared/reference
    where it exists: the script's default, as tests/conftest.py finds it)."""
    out = tmp_path_factory.mktemp("gpu_report")
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--quick", "--threads", "2"]
    command += ["--out", str(out), "--workdir", str(tmp_path_factory.mktemp("gpu_work"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    return report, (out / "gpu_check.md").read_text()


@pytest.mark.slow
def test_quick_run_reports_every_section(quick_report):
    report, text = quick_report
    assert list(report["sections"]) == SECTIONS
    for name, record in report["sections"].items():
        assert record["status"] in ("ok", "skipped"), (name, record.get("traceback"))
        assert f"## {name} ({record['status']}" in text
    assert report["sections"]["parity"]["status"] == "ok" or "reference" in report["sections"]["parity"]["reason"]
    env = report["sections"]["environment"]["result"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    assert env["torchvision_ops"]["nms"] == {"runs": True, "output_device": "cpu", "matches_cpu": True}
    assert env["torchvision_ops"]["roi_align"]["runs"] is True


@pytest.mark.slow
def test_quick_parity_matches_the_original(quick_report, reference_dir):
    parity = quick_report[0]["sections"]["parity"]
    assert parity["status"] == "ok", parity.get("traceback") or parity.get("reason")
    for path in ("direct", "e2e"):
        result = parity["result"][path]
        assert result["reference"] == 50 and result["matched"] > 0
        assert result["max_score_delta"] <= 1e-4 and result["min_box_iou"] >= 0.99
    assert 0 < parity["result"]["e2e"]["identical_rle_share"] <= 1


@pytest.mark.slow
def test_quick_latency_rows_are_timed(quick_report):
    latency = quick_report[0]["sections"]["latency"]["result"]
    rows = latency["rows"]
    assert {(r["precision"], r["batch"]) for r in rows} == {("fp32", 1), ("bf16", 1), ("fp32", 2)}
    for row in rows:
        assert row["median_ms"] > 0 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert row["images_per_s"] > 0 and row["detections_first_image"] > 0
    profile = latency["profile"]
    assert all(v > 0 for v in profile["stages_ms"].values())
    assert profile["top_ops"] and "aten::" in profile["table"]


@pytest.mark.slow
def test_quick_accuracy_per_precision(quick_report):
    accuracy = quick_report[0]["sections"]["accuracy"]["result"]
    assert [r["precision"] for r in accuracy["rows"]] == ["fp32", "bf16"]
    for row in accuracy["rows"]:
        assert 0 <= row["bbox_ap"] <= 1 and 0 <= row["segm_ap"] <= 1 and row["results"] > 0
    fp32 = accuracy["rows"][0]
    assert fp32["bbox_ap"] > 0.3  # the shipped model finds the shapes


@pytest.mark.slow
def test_quick_training_steps_are_finite(quick_report):
    training = quick_report[0]["sections"]["training"]["result"]
    assert training["iterations"] == 3 and training["all_finite"]
    assert all(math.isfinite(v) for v in training["last_loss"].values())
    assert training["iterations_per_s"] > 0


def test_a_failing_section_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    def boom(opts):
        raise RuntimeError("no such kernel")

    def skip(opts):
        raise gpu_sections.SkipSection("not on this device")

    monkeypatch.setitem(gpu_sections.SECTIONS, "parity", boom)
    monkeypatch.setitem(gpu_sections.SECTIONS, "accuracy", skip)
    argv = ["--device", "cpu", "--quick", "--out", str(tmp_path), "--sections", "parity", "accuracy"]
    assert gpu_check.main(argv) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parity, accuracy = report["sections"]["parity"], report["sections"]["accuracy"]
    assert parity["status"] == "failed" and parity["error"] == "RuntimeError: no such kernel"
    assert "raise RuntimeError" in parity["traceback"]
    assert accuracy == {"status": "skipped", "reason": "not on this device", "seconds": accuracy["seconds"]}
    text = (tmp_path / "gpu_check.md").read_text()
    assert "FAILED: `RuntimeError: no such kernel`" in text and "skipped: not on this device" in text


def test_sections_past_the_deadline_are_skipped(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(gpu_sections.SECTIONS, "parity", lambda opts: calls.append("parity") or {})
    argv = ["--device", "cpu", "--quick", "--out", str(tmp_path), "--sections", "parity", "--deadline-s", "-1"]
    assert gpu_check.main(argv) == 0
    assert calls == []
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["sections"]["parity"]["status"] == "skipped"
