"""A real (tiny) exported RetinaMask through infer -> evaluate, both layouts.

The model is the R-50-FPN config shrunk (1 block per stage, 8-32 channels, 3 classes) with the
classifier rescaled so that random weights give real detections, exported by
``retinamask.export`` at S = 128. The evaluate results must equal ``outputs_to_coco_results``
applied to the model's outputs computed directly (same runtime, same preprocessed input):
that checks the whole IO chain (worker preprocessing, batching, files, reading, geometry).
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
export = pytest.importorskip("retinamask.export")

from retinamask.apps.evaluate import evaluate_outputs  # noqa: E402
from retinamask.config import load_config  # noqa: E402
from retinamask.data.transforms import seed_preprocess  # noqa: E402
from retinamask.decode.coco_results import outputs_to_coco_results  # noqa: E402
from retinamask.runtime.backends import create_session  # noqa: E402
from retinamask.runtime.infer import run_inference  # noqa: E402
from test_runtime_fakes import make_synthetic_dataset  # noqa: E402
from tiny_model import TINY_OPTS, tiny_model_with_detections  # noqa: E402

S = 128
SIZES = ((96, 128), (160, 120), (100, 100))
CATEGORY_IDS = (9, 1, 5)  # unsorted on purpose: label L -> sorted ids [1, 5, 9][L - 1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms", TINY_OPTS)
    model = tiny_model_with_detections(cfg, S)
    folder = tmp_path_factory.mktemp("exported")
    paths = {}
    paths["end2end"] = folder / "end2end.onnx"
    export.export_model(model, cfg, paths["end2end"], dynamic_batch=True, canvas_side=S, verify=False, simplify=False)
    paths["seed"] = folder / "seed.onnx"
    export.export_model(model, cfg, paths["seed"], layout="seed", canvas_side=S, verify=False, simplify=False)
    return paths


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("images"),
        SIZES,
        CATEGORY_IDS,
        first_id=10,
        box_origin=lambda j: (5.0 + 10 * j, 8.0 + 5 * j),
        name_digits=12,
    )


def _direct_results(model_path, layout, image_dir, images):
    """COCO results from running the model on each preprocessed image directly (no files)."""
    from retinamask.formats.images import load_image_rgb

    session = create_session(model_path)
    results = []
    for image in images:
        rgb = load_image_rgb(image_dir / image["file_name"])
        tensor, _, resized_hw = seed_preprocess(rgb, S)
        outputs = [o[0] for o in session.run(tensor[None])]
        results += outputs_to_coco_results(
            outputs, layout, image["id"], rgb.shape[:2], resized_hw, sorted(CATEGORY_IDS)
        )
    return results


@pytest.mark.parametrize("layout", ["end2end", "seed"])
def test_exported_model_through_infer_and_evaluate(tmp_path, exported, image_set, layout):
    image_dir, ann_file, images = image_set
    summary = run_inference(exported[layout], image_dir, tmp_path, "result", batch_size=1, workers=1, progress=False)
    assert summary["count"] == len(SIZES) and summary["failed"] == [] and summary["layout"] == layout
    evaluation = evaluate_outputs(
        tmp_path / "result", ann_file, output_path=tmp_path / "eval.txt", workers=1, progress=False
    )
    assert evaluation["failed"] == [] and evaluation["layout"] == layout
    assert evaluation["images_evaluated"] == len(SIZES)
    assert set(evaluation["stats"]) >= {"bbox", "segm"}

    ours = json.loads((tmp_path / "eval_coco_results.json").read_text())
    direct = _direct_results(exported[layout], layout, image_dir, images)
    assert len(ours) == len(direct) > len(SIZES)  # real detections, not just padding
    assert {r["category_id"] for r in ours} <= set(CATEGORY_IDS)
    key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])  # noqa: E731
    for a, b in zip(sorted(ours, key=key), sorted(direct, key=key)):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-4)
        assert a["segmentation"] == b["segmentation"]
    # boxes lie inside their original image
    sizes = {image["id"]: (image["width"], image["height"]) for image in images}
    for r in ours:
        x, y, w, h = r["bbox"]
        width, height = sizes[r["image_id"]]
        assert x >= 0 and y >= 0 and x + w - 1 <= width - 1 + 1e-4 and y + h - 1 <= height - 1 + 1e-4
