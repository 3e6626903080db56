"""The shipped model by one name and by default, configs that do not fit their weights, and
overlays that stay readable on small images."""

import json

import numpy as np
import pytest

from retinamask.cli import main
from retinamask.core.detections import Prediction
from retinamask.ops.draw import draw_prediction, layout_labels

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def shapes_image(tmp_path_factory):
    from retinamask.data.shapes import generate_shapes_dataset

    data = generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=0, num_val=2, seed=11)
    return sorted(data["val_images"].iterdir())[0]


def test_predict_with_no_model_named_uses_the_shipped_model(shapes_image, tmp_path, caplog):
    caplog.set_level("INFO")
    assert main(["predict", "--input", str(shapes_image), "--output", str(tmp_path / "out")]) == 0
    assert "using the shipped model retinamask_shapes_small" in caplog.text
    record = json.loads((tmp_path / "out" / f"{shapes_image.stem}.json").read_text())
    names = {"circle", "rectangle", "triangle", "star", "cross", "ring"}
    assert record["detections"] and {d["class_name"] for d in record["detections"]} <= names
    # the same model named explicitly gives the same detections
    assert (
        main(
            [
                "predict",
                "--input",
                str(shapes_image),
                "--output",
                str(tmp_path / "named"),
                "--weights",
                "retinamask_shapes_small",
            ]
        )
        == 0
    )
    named = json.loads((tmp_path / "named" / f"{shapes_image.stem}.json").read_text())
    assert named["detections"] == record["detections"]


def test_the_shipped_config_fits_the_shipped_weights():
    from retinamask.config import load_config
    from retinamask.config.shipped import SHIPPED_WEIGHTS
    from retinamask.modeling import build_model
    from retinamask.modeling.checkpoint import load_checkpoint

    cfg = load_config("retinamask_shapes_small")  # the name a user finds in retinamask/configs
    load_checkpoint(build_model(cfg), SHIPPED_WEIGHTS)
    assert len(cfg.CLASS_NAMES) == cfg.RETINANET.NUM_CLASSES - 1 == 6


def test_a_config_that_does_not_fit_names_the_one_saved_with_the_weights(tmp_path, capsys):
    from retinamask.config.shipped import SHIPPED_CONFIG, SHIPPED_WEIGHTS

    code = main(
        [
            "export",
            "--cfg_path",
            "retinanet_mask_R-50-FPN_2x_adjust_std011_ms",
            "--weight_path",
            str(SHIPPED_WEIGHTS),
            "--save_path",
            str(tmp_path / "never.onnx"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "shape conflicts" in err and f"the config saved with these weights is {SHIPPED_CONFIG}" in err
    assert not (tmp_path / "never.onnx").exists()


def test_weights_without_a_config_need_one_saved_beside_them(tmp_path, capsys):
    from retinamask.config import load_config
    from retinamask.modeling import build_model
    from retinamask.modeling.checkpoint import save_checkpoint

    weights = tmp_path / "m.pth"
    save_checkpoint(weights, build_model(load_config("retinamask_shapes_small")))
    assert main(["predict", "--input", "x.png", "--output", str(tmp_path), "--weights", str(weights)]) == 2
    assert "a config is needed with the weights" in capsys.readouterr().err


def _prediction(h, w, boxes, labels):
    boxes = np.asarray(boxes, np.float32)
    masks = np.zeros((len(boxes), h, w), np.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
        m[y1:y2, x1:x2] = 1
    return Prediction(
        boxes=boxes,
        scores=np.linspace(0.9, 0.5, len(boxes)).astype(np.float32),
        labels=np.asarray(labels),
        class_names=[f"class{label}" for label in labels],
        masks=masks,
        mask_probs=np.zeros((len(boxes), 28, 28), np.float32),
        image_hw=(h, w),
    )


def test_small_images_are_drawn_scaled_up():
    image = np.full((200, 300, 3), 128, np.uint8)
    prediction = _prediction(200, 300, [[10, 20, 60, 80]], [1])
    overlay = draw_prediction(image, prediction)
    assert overlay.shape == (600, 900, 3)  # x3, the smallest whole factor that takes the long side to >= 800
    # the mask is drawn where the box is, scaled by the same factor
    assert not np.array_equal(overlay[3 * 50, 3 * 35], [128, 128, 128])
    assert np.array_equal(overlay[3 * 150, 3 * 200], [128, 128, 128])
    assert draw_prediction(np.full((900, 1000, 3), 128, np.uint8), _prediction(900, 1000, [], [])).shape == (
        900,
        1000,
        3,
    )


def test_labels_never_cover_each_other():
    # five detections of one object: their labels would all sit at the same spot above the box
    boxes = [(100, 100, 300, 260)] * 5 + [(105, 90, 310, 250)]
    rects = layout_labels([f"cross 0.{i}" for i in range(6)], boxes, (800, 1000), 0.9)
    for i, (ax1, ay1, ax2, ay2) in enumerate(rects):
        assert 0 <= ax1 < ax2 <= 1000 and 0 <= ay1 < ay2 <= 800
        for bx1, by1, bx2, by2 in rects[i + 1 :]:
            assert ax2 <= bx1 or bx2 <= ax1 or ay2 <= by1 or by2 <= ay1, (rects[i], (bx1, by1, bx2, by2))
    assert rects[0][3] <= 100  # the best detection's label keeps the place above its box
