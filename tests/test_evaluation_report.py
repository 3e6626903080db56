"""``evaluate --report DIR``: its numbers against independent expectations, the 24-stat text file
unchanged, and the page opened in a real headless Chromium (its pictures must load).

The browser test skips with a reason where no Chromium is installed; .ci/run installs Debian's
``chromium`` and sets RETINAMASK_REQUIRE_BROWSER=1, so that CI fails instead of skipping.
"""

import json
import re
import subprocess

import numpy as np
import pytest

from browser import CHROMIUM_FLAGS, chromium_path
from retinamask.cli import main
from retinamask.data.shapes import generate_shapes_dataset
from retinamask.evaluation.report import image_scores
from seed_outputs import S, write_seed_outputs


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A shapes split, seed-layout outputs for it, and ``retinamask evaluate`` run without and with --report."""
    root = tmp_path_factory.mktemp("report")
    paths = generate_shapes_dataset(root / "data", 0, 8, seed=5, min_size=8)
    dataset = json.loads(paths["val_annotations"].read_text())
    (root / "outputs").mkdir()
    write_seed_outputs(root / "outputs", dataset, 5)
    common = [
        "evaluate",
        "--infer_results_path",
        str(root / "outputs"),
        "--ann_file",
        str(paths["val_annotations"]),
        "--input-size",
        str(S),
        "--workers",
        "1",
        "--no-progress",
    ]
    assert main(common + ["--output_path", str(root / "plain.txt")]) == 0
    assert main(common + ["--output_path", str(root / "reported.txt"), "--report", str(root / "report")]) == 0
    return root, dataset


def test_the_stats_text_file_is_unchanged_by_the_report(evaluated):
    root, _ = evaluated
    assert (root / "reported.txt").read_text() == (root / "plain.txt").read_text()
    assert (root / "reported.txt").read_text().count(" = ") == 24


def test_report_numbers_agree_with_the_coco_stats(evaluated):
    root, dataset = evaluated
    numbers = json.loads((root / "report" / "report.json").read_text())
    stats = json.loads((root / "reported.json").read_text())["stats"]
    for iou_type in ("bbox", "segm"):
        per_class = [v["AP"] for v in numbers["per_class"][iou_type].values() if v["AP"] is not None]
        # COCO's AP is the mean over classes with ground truth of each class's AP
        assert np.mean(per_class) == pytest.approx(stats[iou_type]["AP"], abs=1e-12)
        assert 0.05 < stats[iou_type]["AP"] < 0.95  # the numbers mean something
    objects = sum(1 for a in dataset["annotations"] if not a.get("iscrowd", 0))
    assert sum(c["all"] for c in numbers["gt_counts"].values()) == objects
    drawn = numbers["images"]["best"] + numbers["images"]["worst"]
    assert len(drawn) == 8 and not numbers["images"]["not_drawn"]
    for entry in drawn:  # every ground-truth object is matched or missed
        truth = sum(1 for a in dataset["annotations"] if a["image_id"] == entry["image_id"] and not a.get("iscrowd"))
        assert entry["tp"] + entry["fn"] == truth
    best_f1 = min(e["f1"] for e in numbers["images"]["best"])
    assert all(e["f1"] <= best_f1 for e in numbers["images"]["worst"])
    for name in (
        "pr_bbox.png",
        "pr_segm.png",
        "pr_bbox_per_class.png",
        "pr_segm_per_class.png",
        "best_1.jpg",
        "worst_1.jpg",
    ):
        assert (root / "report" / "images" / name).stat().st_size > 1000


def test_image_scores_count_matches_greedily_by_score():
    dataset = {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [
            {"image_id": 1, "category_id": 7},
            {"image_id": 1, "category_id": 7},
            {"image_id": 1, "category_id": 7, "iscrowd": 1},
            {"image_id": 2, "category_id": 7},
        ],
    }
    results = [{"image_id": 1, "category_id": 7, "score": s} for s in (0.9, 0.8, 0.7, 0.6, 0.2)]
    # rows by score; columns: annotations 0, 1 and the crowd region 2
    ious = np.array(
        [
            [0.9, 0.6, 0.0],  # 0.9 takes annotation 0
            [0.8, 0.3, 0.0],  # 0.8: annotation 0 is taken, 0.3 too low: false positive
            [0.0, 0.55, 0.0],  # 0.7 takes annotation 1
            [0.0, 0.0, 0.7],  # 0.6 falls in the crowd region: not counted
            [0.0, 0.0, 0.0],
        ]
    )  # 0.2: below the score threshold
    scores = image_scores(dataset, results, {(1, 7): (ious, [0, 1, 2, 3, 4], [0, 1, 2])}, score_threshold=0.5)
    assert scores[1] == {"tp": 2, "fp": 1, "fn": 0, "f1": 0.8}
    assert scores[2] == {"tp": 0, "fp": 0, "fn": 1, "f1": 0.0}


def test_report_page_renders_in_headless_chromium(evaluated, tmp_path):
    root, _ = evaluated
    page = root / "report" / "index.html"
    command = [
        chromium_path(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    dom = done.stdout
    assert done.returncode == 0 and "<body" in dom, done.stderr[-2000:]
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert loaded and total, "the page's script did not run"
    assert int(total.group(1)) == 4 + 8  # four precision-recall curves, four best and four worst images
    assert loaded.group(1) == total.group(1)  # every picture decoded (naturalWidth > 0)
    for heading in (
        "COCO stats",
        "By object size",
        "Per class",
        "Precision-recall curves",
        "Best images",
        "Worst images",
    ):
        assert f">{heading}<" in dom


def test_report_without_the_images_lists_them_and_still_writes_the_page(evaluated, tmp_path, caplog):
    from retinamask.apps.evaluate import evaluate_outputs

    root, _ = evaluated
    summary = evaluate_outputs(
        root / "outputs",
        root / "data" / "annotations" / "instances_val.json",
        canvas_side=S,
        workers=1,
        progress=False,
        output_path=tmp_path / "e.txt",
        report_dir=tmp_path / "r",
        image_dir=tmp_path / "nowhere",
    )
    numbers = json.loads((tmp_path / "r" / "report.json").read_text())
    assert len(numbers["images"]["not_drawn"]) == 8 and "file not found" in numbers["images"]["not_drawn"][0]
    assert "image(s) not drawn" in caplog.text
    assert "Not drawn:" in (tmp_path / "r" / "index.html").read_text()
    assert summary["timing"]["report_s"] > 0
