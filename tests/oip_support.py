"""Helpers of the Open Inference Protocol tests (REST and gRPC): the images, ``predict --model``'s records,
and the check that an infer answer is exactly /v1/predict's and predict's."""

import json

import numpy as np
from PIL import Image

from retinamask.config.shipped import SHIPPED_ONNX
from serve_support import demo_images, json_of, post_image

MODEL = "retinamask_shapes_small"
OUTPUTS = ("boxes", "scores", "labels", "class_names", "masks")


def make_images(folder):
    """A PNG and a JPEG of the demo shapes, a blank image (no detections) and a >4 MiB PNG of noise."""
    pngs = demo_images(folder / "data", count=2)[0]
    jpeg = folder / "shapes.jpg"
    Image.open(pngs[1]).convert("RGB").save(jpeg, quality=90)
    blank = folder / "blank.png"
    Image.new("RGB", (160, 120), (127, 127, 127)).save(blank)
    noise = folder / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1100, 1400, 3), dtype=np.uint8)).save(noise, compress_level=1)
    assert noise.stat().st_size > 4 * 1024 * 1024
    return {"png": pngs[0], "jpeg": jpeg, "blank": blank, "noise": noise}


def predict_records(images, out):
    """``predict --model`` (the CLI, in-process) on the images: {kind: its JSON record}."""
    from retinamask.cli import main

    command = ["predict", "--model", str(SHIPPED_ONNX), "--backend", "onnxruntime", "--output", str(out)]
    assert main([*command, "--input", *map(str, images.values())]) == 0
    return {kind: json.loads((out / f"{path.stem}.json").read_text()) for kind, path in images.items()}


def arrays_of(result):
    """The five outputs of a tritonclient InferResult as numpy arrays, BYTES elements as str."""
    arrays = {name: result.as_numpy(name) for name in OUTPUTS}
    for name in ("class_names", "masks"):
        arrays[name] = [v.decode() if isinstance(v, bytes) else v for v in arrays[name].tolist()]
    return arrays


def assert_same_as_v1_and_predict(arrays, parameters, v1, record):
    """``arrays`` (an infer answer) holds exactly /v1/predict's detections and predict --model's record."""
    detections = v1["detections"]
    assert len(detections) == len(record["detections"]) == len(arrays["scores"])
    assert arrays["boxes"].dtype == np.float32 and arrays["boxes"].shape == (len(detections), 4)
    assert arrays["scores"].dtype == np.float32 and arrays["labels"].dtype == np.int32
    assert parameters["image_height"] == v1["image"]["height"] == record["height"]
    assert parameters["image_width"] == v1["image"]["width"] == record["width"]
    for i, d in enumerate(detections):
        x0, y0, x1, y1 = arrays["boxes"][i].astype(np.float64).tolist()
        assert d["bbox"] == [x0, y0, x1 - x0 + 1, y1 - y0 + 1]  # COCO xywh with the original's +1
        assert d["score"] == float(arrays["scores"][i]) and d["category_id"] == int(arrays["labels"][i])
        assert d["category_name"] == arrays["class_names"][i]
        assert d["segmentation"]["counts"] == arrays["masks"][i]
        assert d["segmentation"]["size"] == [parameters["image_height"], parameters["image_width"]]
    for i, d in enumerate(record["detections"]):  # predict's JSON: rounded boxes and scores, contiguous labels
        assert d["box_xyxy"] == [round(float(v), 3) for v in arrays["boxes"][i]]
        assert d["score"] == round(float(arrays["scores"][i]), 6)
        assert d["class_name"] == arrays["class_names"][i]
        assert d["mask_rle"] == {"size": [record["height"], record["width"]], "counts": arrays["masks"][i]}


def v1_answer(base, path, content_type):
    status, _, body = post_image(base, path, content_type=content_type)
    assert status == 200
    return json_of(body)
