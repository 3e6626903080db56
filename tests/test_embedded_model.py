"""The shipped model end to end: `retinamask demo` (the README's main command), its accuracy
floor on a val split never trained on, and `predict` with the PyTorch and the ONNX model."""

import json
from pathlib import Path

import numpy as np
import pytest

from retinamask.apps.demo import SHIPPED_CONFIG, SHIPPED_WEIGHTS
from retinamask.cli import main
from retinamask.config.shipped import SHIPPED_ONNX

# Measured with this model through the ONNX path on 200 val images of seed 7 (see retinamask/assets/README.md);
# the floors sit a little below so that a regression fails.
BBOX_MAP_FLOOR = 0.87
SEGM_MAP_FLOOR = 0.76


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--output", str(out), "--num-images", "200", "--overlays", "4"]) == 0
    return out


def test_demo_reaches_the_accuracy_floor_through_onnx(demo_run):
    summary = json.loads((demo_run / "demo_summary.json").read_text())
    assert summary["bbox_mAP"] >= BBOX_MAP_FLOOR
    assert summary["segm_mAP"] >= SEGM_MAP_FLOOR
    assert summary["fps"] > 0
    stats_text = (demo_run / "evaluation_results.txt").read_text()
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in stats_text


def test_demo_writes_overlays_and_detection_json(demo_run):
    overlays = sorted((demo_run / "overlays").glob("*.png"))
    assert len(overlays) == 4
    record = json.loads(overlays[0].with_suffix(".json").read_text())
    classes = set(_shipped_class_names())
    assert record["detections"] and {d["class_name"] for d in record["detections"]} <= classes


# the demo's video step on its generated clips (seed 7, never tuned on, H.264 crf 18): measured MOTA 0.756,
# IDF1 0.818 (the same clips encoded with B-frames gave 0.821 / 0.858: the small model trained on PNGs feels
# the codec; 3 clips, 14 objects)
MOTA_FLOOR = 0.70
IDF1_FLOOR = 0.77


def test_demo_tracks_generated_clips_into_annotated_videos(demo_run):
    video = json.loads((demo_run / "demo_summary.json").read_text())["video"]
    assert video["clips"] == 3 and video["frames"] == 3 * 60 and not video["failed"]
    assert video["tracking"]["mota"] >= MOTA_FLOOR and video["tracking"]["idf1"] >= IDF1_FLOOR
    mp4s = sorted(Path(video["videos"]).glob("*.mp4"))
    assert len(mp4s) == 3 and all(p.with_suffix(".jsonl").is_file() for p in mp4s)
    tracks = json.loads((Path(video["videos"]) / "results_ytvis.json").read_text())
    assert tracks and all(len(t["segmentations"]) == 60 for t in tracks)


def test_demo_rerun_reuses_finished_steps(demo_run, capsys):
    first = (demo_run / "retinamask_shapes_small.onnx").stat().st_mtime
    assert main(["demo", "--output", str(demo_run), "--num-images", "200", "--overlays", "4"]) == 0
    out = capsys.readouterr().out
    assert "is current (kept)" in out and "0 images inferred, 200 kept" in out
    assert (demo_run / "retinamask_shapes_small.onnx").stat().st_mtime == first


def test_the_demo_exports_the_shipped_onnx_so_its_figures_do_not_depend_on_torch(demo_run):
    # with torch the demo exports; without, it runs the shipped ONNX: the same bytes, so the same figures
    assert (demo_run / "retinamask_shapes_small.onnx").read_bytes() == SHIPPED_ONNX.read_bytes()
    summary = json.loads((demo_run / "demo_summary.json").read_text())
    assert summary["resize"] == "original: short side 448, long side <= 448, padded to /32"


def test_predict_pytorch_and_onnx_agree(demo_run, tmp_path):
    """The same images through `predict --weights/--config` (PyTorch, the original resize the export
    was made with) and `predict --model` (the exported ONNX): same detections."""
    images = sorted((demo_run / "data" / "val").glob("*.png"))[:3]
    args = ["--input", *map(str, images), "--score-threshold", "0.3"]
    assert (
        main(
            [
                "predict",
                "--weights",
                str(SHIPPED_WEIGHTS),
                "--config",
                str(SHIPPED_CONFIG),
                "--resize",
                "original",
                "--output",
                str(tmp_path / "torch"),
                *args,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                "--model",
                str(demo_run / "retinamask_shapes_small.onnx"),
                "--output",
                str(tmp_path / "onnx"),
                *args,
            ]
        )
        == 0
    )
    for image in images:
        ours = json.loads((tmp_path / "torch" / f"{image.stem}.json").read_text())["detections"]
        theirs = json.loads((tmp_path / "onnx" / f"{image.stem}.json").read_text())["detections"]
        ours = [d for d in ours if d["score"] >= 0.05]
        theirs = [d for d in theirs if d["score"] >= 0.05]
        assert ours, "the shipped model should detect shapes"
        assert len(ours) == len(theirs)  # both keep the original's 50-mask cut
        for a, b in zip(ours, theirs):
            assert a["label"] == b["label"]
            assert abs(a["score"] - b["score"]) <= 1e-4
            assert np.abs(np.array(a["box_xyxy"]) - np.array(b["box_xyxy"])).max() <= 0.05
            assert a["mask_rle"]["counts"] == b["mask_rle"]["counts"] or _mask_iou(a, b) >= 0.99


def _mask_iou(a, b):
    from pycocotools import mask as mask_util

    return float(mask_util.iou([a["mask_rle"]], [b["mask_rle"]], [0])[0][0])


def _shipped_class_names():
    from retinamask.config import load_config

    return load_config(SHIPPED_CONFIG).CLASS_NAMES


def test_shipped_model_is_small_and_documented():
    assert SHIPPED_WEIGHTS.stat().st_size <= 20 * 1024 * 1024
    readme = (Path(SHIPPED_WEIGHTS).parent / "README.md").read_text()
    assert "retinamask train" in readme and "retinamask data shapes" in readme


def _pytorch_stats(demo_run, layout):
    """COCO stats of the eager model on the demo's val split, as the export of ``layout`` runs it: end2end (the
    demo's, the shipped ONNX) the original resize and its 50-mask cut; seed the square canvas and its 100 rows."""
    from retinamask.config import load_config
    from retinamask.core.resize import SeedResize
    from retinamask.engine.trainer import evaluate_split
    from retinamask.modeling import build_model
    from retinamask.modeling.checkpoint import load_checkpoint

    if layout == "end2end":
        # None: the original's test resize; one image a batch, each on its own canvas as infer runs it (a batch
        # of several pads them to its largest canvas, and candidates in that padding move the bbox AP by 0.005)
        cfg, resize, batch_size = load_config(SHIPPED_CONFIG), None, 1
    else:
        cfg = load_config(SHIPPED_CONFIG, ["RETINANET.NUM_MASKS_TEST", "100"])
        resize, batch_size = SeedResize(int(cfg.INPUT.MAX_SIZE_TEST)), 4
    model = build_model(cfg)
    load_checkpoint(model, SHIPPED_WEIGHTS)
    return evaluate_split(model, cfg, demo_run / "data", "val", batch_size=batch_size, resize=resize)


@pytest.mark.parametrize("layout", ["end2end", "seed"])
def test_onnx_layouts_give_the_pytorch_coco_stats(demo_run, layout, tmp_path):
    """Both export layouts through infer + evaluate land within 0.002 of the PyTorch path."""
    pytorch_stats = _pytorch_stats(demo_run, layout)
    if layout == "end2end":
        stats_file = demo_run / "evaluation_results.json"
    else:
        model = tmp_path / "seed.onnx"
        assert (
            main(
                [
                    "export",
                    "--cfg_path",
                    str(SHIPPED_CONFIG),
                    "--weight_path",
                    str(SHIPPED_WEIGHTS),
                    "--save_path",
                    str(model),
                    "--layout",
                    "seed",
                    "--no-verify",
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "infer",
                    "--model",
                    str(model),
                    "--input",
                    str(demo_run / "data" / "val"),
                    "--output",
                    str(tmp_path),
                    "--output_dirname",
                    "seed",
                    "--no-progress",
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "evaluate",
                    "--infer_results_path",
                    str(tmp_path / "seed"),
                    "--ann_file",
                    str(demo_run / "data" / "annotations" / "instances_val.json"),
                    "--output_path",
                    str(tmp_path / "evaluation_results.txt"),
                    "--no-progress",
                ]
            )
            == 0
        )
        stats_file = tmp_path / "evaluation_results.json"
    onnx_stats = json.loads(stats_file.read_text())["stats"]
    for iou_type in ("bbox", "segm"):
        for name, value in pytorch_stats[iou_type].items():
            # AP within 0.002; a recall figure moves in steps of one match: the seed layout's host-side
            # NMS over 1000 candidates flipped one (segm ARm 0.0025 off with the stage-3 model)
            tolerance = 0.003 if layout == "seed" and name.startswith("AR") else 0.002
            assert abs(onnx_stats[iou_type][name] - value) <= tolerance, (layout, iou_type, name, value)
