"""benchmarks/coco_eval_speed.py on 15 images: every evaluator runs on the same results and agrees
(the script asserts it); no timing is asserted: speed is what the script prints."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_coco_eval_speed_runs_every_evaluator_and_they_agree():
    pytest.importorskip("faster_coco_eval")
    import coco_eval_speed

    outcome = coco_eval_speed.run(15, workers=1)
    assert [row["route"].split(" ")[0] for row in outcome["rows"]] == [
        "pycocotools",
        "faster-coco-eval",
        "direct,",
        "direct",
    ]
    assert outcome["detections"] == 15 * 100
    assert all(row["max_stat_difference"] <= 1e-12 and row["same_text"] for row in outcome["rows"])
    assert 0.2 < outcome["rows"][0]["stats"]["segm"]["AP"] < 1.0  # meaningful, not degenerate
    table = coco_eval_speed.format_markdown(outcome)
    assert table.count("\n| ") == 5  # header + 4 evaluators
