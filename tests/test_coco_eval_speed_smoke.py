"""``python -m benchmarks.coco_eval_speed`` on 15 images: every evaluator runs on the same results
and agrees (the script asserts it); no timing is asserted: speed is what the script prints."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_coco_eval_speed_runs_every_evaluator_and_they_agree(tmp_path):
    pytest.importorskip("faster_coco_eval")
    out = tmp_path / "outcome.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.coco_eval_speed", "--images", "15", "--workers", "1", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(out.read_text())
    assert [row["route"].split(" ")[0] for row in outcome["rows"]] == [
        "pycocotools",
        "faster-coco-eval",
        "direct,",
        "direct",
    ]
    assert outcome["detections"] == 15 * 100
    assert all(row["max_stat_difference"] <= 1e-12 and row["same_text"] for row in outcome["rows"])
    assert 0.2 < outcome["rows"][0]["stats"]["segm"]["AP"] < 1.0  # meaningful, not degenerate
    assert done.stdout.count("\n| ") == 5  # the Markdown table: header + 4 evaluators
