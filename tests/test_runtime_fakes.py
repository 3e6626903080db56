"""Small contract-conforming ONNX models and a tiny COCO-format image set, for the runtime tests.

``build_fake_model`` writes a model that follows docs/onnx_contract.md (input
[B,3,S,S], 4 outputs in the end2end or seed layout, retinamask.* metadata) and
actually "detects": row 0 is the bounding box of the input's bright pixels in the R
channel (BGR channel 2 > threshold) on the S x S canvas, label 2 where the object is
also bright in blue (a white box) else 1 (a red box), a score that depends on the
input (a float reduction, so runtimes can be compared), and a full 28x28 mask.
The other rows are end2end padding (label -1, score 0) or, for the seed layout,
identical low-score junk candidates that NMS collapses to one.

``make_box_dataset`` writes images holding one red or white rectangle each and the
matching COCO annotations, so infer -> evaluate must reach AP50 = 1 on both iou types.
"""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

MEAN = (102.9801, 115.9465, 122.7717)
# category ids deliberately unsorted in the file: label 1 -> smallest id (3, red), label 2 -> 7 (white)
CATEGORIES = [
    {"id": 7, "name": "white box", "supercategory": "box"},
    {"id": 3, "name": "red box", "supercategory": "box"},
]
RED_ID, WHITE_ID = 3, 7


def build_fake_model(
    path, layout="end2end", canvas_side=96, rows=None, batch=None, metadata=True, threshold=50.0, mask_resolution=28
):
    """Write the fake model to ``path`` (see the module docstring); returns ``path``.

    rows: K (end2end default 10; seed always 1000). batch: None for a dynamic batch
    axis, else the fixed batch size. metadata: False writes no metadata_props.
    """
    rows = rows or (1000 if layout == "seed" else 10)
    s, m, k = canvas_side, mask_resolution, rows
    pad_rows = k - 1
    nodes, inits = [], []

    def const(name, array):
        inits.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def filled(name, dims_parts, value, dtype):
        shape = node("Concat", dims_parts, name + "_shape", axis=0)
        return node("ConstantOfShape", [shape], name, value=helper.make_tensor(name + "_v", dtype, [1], [value]))

    shape_all = node("Shape", ["input"], "shape_all")
    batch_dim = node(
        "Slice",
        [shape_all, const("zero1", np.array([0], np.int64)), const("one1", np.array([1], np.int64))],
        "batch_dim",
    )
    red = node(
        "Slice",
        [
            "input",
            const("c2s", np.array([2], np.int64)),
            const("c2e", np.array([3], np.int64)),
            const("c_axis", np.array([1], np.int64)),
        ],
        "red",
    )
    blue = node(
        "Slice",
        ["input", const("c0s", np.array([0], np.int64)), const("c0e", np.array([1], np.int64)), "c_axis"],
        "blue",
    )
    thr = const("thr", np.array(threshold, np.float32))
    red_on = node("Cast", [node("Greater", [red, thr], "red_gt")], "red_on", to=TensorProto.FLOAT)
    blue_on = node("Cast", [node("Greater", [blue, thr], "blue_gt")], "blue_on", to=TensorProto.FLOAT)
    # blue counts only where red is on: a white object, not bright background
    white = node("Mul", [red_on, blue_on], "white")
    columns = node("ReduceMax", [red_on, const("ax12", np.array([1, 2], np.int64))], "columns", keepdims=0)
    lines = node("ReduceMax", [red_on, const("ax13", np.array([1, 3], np.int64))], "lines", keepdims=0)
    x1 = node("ArgMax", [columns], "x1", axis=1, keepdims=1)
    x2 = node("ArgMax", [columns], "x2", axis=1, keepdims=1, select_last_index=1)
    y1 = node("ArgMax", [lines], "y1", axis=1, keepdims=1)
    y2 = node("ArgMax", [lines], "y2", axis=1, keepdims=1, select_last_index=1)
    box = node("Cast", [node("Concat", [x1, y1, x2, y2], "box_i", axis=1)], "box_f", to=TensorProto.FLOAT)
    box = node("Unsqueeze", [box, "one1"], "box_row")  # [B,1,4]

    is_white = node("ReduceMax", [white, const("ax123", np.array([1, 2, 3], np.int64))], "is_white", keepdims=1)
    is_white = node("Reshape", [is_white, const("b1", np.array([-1, 1], np.int64))], "is_white_b1")  # [B,1]
    label = node(
        "Cast",
        [node("Add", [is_white, const("onef", np.array(1.0, np.float32))], "label_f")],
        "label_row",
        to=TensorProto.INT32,
    )
    # score: sigmoid(mean(red) / 100 + 2): a float reduction over the whole input, ~0.85..0.95
    mean_red = node("ReduceMean", [red, "ax123"], "mean_red", keepdims=1)
    mean_red = node("Reshape", [mean_red, "b1"], "mean_red_b1")
    logit = node(
        "Add",
        [
            node("Mul", [mean_red, const("c001", np.array(0.01, np.float32))], "scaled"),
            const("two", np.array(2.0, np.float32)),
        ],
        "logit",
    )
    score = node("Sigmoid", [logit], "score_row")
    mask = filled("mask_row", [batch_dim, const("mshape", np.array([1, 1, m, m], np.int64))], 1.0, TensorProto.FLOAT)

    if layout == "seed":
        pad_box_value, pad_label, pad_score = np.array([0, 0, 3, 3], np.float32), 1, 0.001
    else:
        pad_box_value, pad_label, pad_score = np.zeros(4, np.float32), -1, 0.0
    pad_boxes = node(
        "Add",
        [
            filled(
                "pad_zero_boxes", [batch_dim, const("pb", np.array([pad_rows, 4], np.int64))], 0.0, TensorProto.FLOAT
            ),
            const("pad_box_value", pad_box_value),
        ],
        "pad_boxes",
    )
    pad_labels = filled(
        "pad_labels", [batch_dim, const("pl", np.array([pad_rows], np.int64))], pad_label, TensorProto.INT32
    )
    pad_scores = filled("pad_scores", [batch_dim, "pl"], pad_score, TensorProto.FLOAT)
    pad_masks = filled(
        "pad_masks", [batch_dim, const("pm", np.array([pad_rows, 1, m, m], np.int64))], 0.0, TensorProto.FLOAT
    )

    names = ("bboxs", "labels", "scores", "masks") if layout == "seed" else ("boxes", "labels", "scores", "masks")
    node("Concat", [box, pad_boxes], names[0], axis=1)
    node("Concat", [label, pad_labels], names[1], axis=1)
    node("Concat", [score, pad_scores], names[2], axis=1)
    node("Concat", [mask, pad_masks], names[3], axis=1)

    b = batch if batch is not None else "batch"
    graph = helper.make_graph(
        nodes,
        "fake_retinamask",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [b, 3, s, s])],
        [
            helper.make_tensor_value_info(names[0], TensorProto.FLOAT, [b, k, 4]),
            helper.make_tensor_value_info(names[1], TensorProto.INT32, [b, k]),
            helper.make_tensor_value_info(names[2], TensorProto.FLOAT, [b, k]),
            helper.make_tensor_value_info(names[3], TensorProto.FLOAT, [b, k, 1, m, m]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    if metadata:
        meta = {
            "retinamask.layout": layout,
            "retinamask.input_size": str(s),
            "retinamask.pixel_mean": json.dumps(list(MEAN)),
            "retinamask.pixel_std": "[1.0, 1.0, 1.0]",
            "retinamask.class_names": json.dumps(["red box", "white box"]),
            "retinamask.score_threshold": "0.05",
            "retinamask.nms_threshold": "0.4",
            "retinamask.max_detections": str(k if layout == "end2end" else 100),
            "retinamask.mask_resolution": str(m),
            "retinamask.batch": "dynamic" if batch is None else str(batch),
            "retinamask.version": "test",
        }
        helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# (height, width, box x1, y1, x2, y2 inclusive, white?) per image
BOX_IMAGES = (
    (90, 120, 20, 15, 79, 64, False),
    (120, 80, 10, 30, 59, 104, True),
    (100, 100, 40, 40, 94, 89, False),
    (75, 150, 5, 10, 104, 59, True),
    (64, 96, 30, 8, 80, 50, False),
)


def box_image(height, width, x1, y1, x2, y2, white, seed=0):
    """uint8 [H,W,3] RGB: a dark noisy background with one red or white rectangle."""
    rng = np.random.default_rng(seed)
    image = rng.integers(30, 60, size=(height, width, 3)).astype(np.uint8)
    image[y1 : y2 + 1, x1 : x2 + 1] = (230, 230, 230) if white else (230, 40, 40)
    return image


def make_box_dataset(root, image_format="png"):
    """Write ``root/images/*.{png}`` and ``root/annotations/instances_val2017.json``; returns
    (image_dir, ann_file, list of (file_name, image_id)). Image ids are not in file order."""
    import pycocotools.mask as mask_util
    from PIL import Image

    image_dir = root / "images"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, listing = [], [], []
    for i, (h, w, x1, y1, x2, y2, white) in enumerate(BOX_IMAGES):
        name = f"img_{i:03d}.{image_format}"
        image_id = 100 - 7 * i
        Image.fromarray(box_image(h, w, x1, y1, x2, y2, white, seed=i)).save(image_dir / name)
        mask = np.zeros((h, w), np.uint8)
        mask[y1 : y2 + 1, x1 : x2 + 1] = 1
        rle = mask_util.encode(np.asfortranarray(mask))
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        annotations.append(
            {
                "id": i + 1,
                "image_id": image_id,
                "category_id": WHITE_ID if white else RED_ID,
                "bbox": [float(x1), float(y1), float(x2 - x1 + 1), float(y2 - y1 + 1)],
                "area": float(mask.sum()),
                "iscrowd": 0,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            }
        )
        listing.append((name, image_id))
    ann_file = root / "annotations" / "instances_val2017.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return image_dir, ann_file, listing


# ---------------------------------------------------------------------------
# the fakes themselves


def make_synthetic_dataset(root, sizes, category_ids, first_id, box_origin, name_digits=6):
    """PNG images ``synthetic_image(h, w, variant=i)`` for each (h, w) of ``sizes`` in ``root/images``
    (named ``{i:0{name_digits}d}.png``, image ids from ``first_id``), one w/3 x h/4 box of each category
    per image, its top-left ``box_origin(j)`` for the j-th category, and ``root/instances.json``.
    Returns (image folder, annotation file, COCO image entries)."""
    from PIL import Image

    from retinamask.export.verify import synthetic_image

    (root / "images").mkdir()
    images, annotations = [], []
    for i, (h, w) in enumerate(sizes):
        name = f"{i:0{name_digits}d}.png"
        Image.fromarray(synthetic_image(h, w, variant=i)).save(root / "images" / name)
        images.append({"id": first_id + i, "file_name": name, "width": w, "height": h})
        for j, category in enumerate(category_ids):
            box = [*box_origin(j), w / 3, h / 4]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": first_id + i,
                    "category_id": category,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                    "segmentation": [
                        [
                            box[0],
                            box[1],
                            box[0] + box[2],
                            box[1],
                            box[0] + box[2],
                            box[1] + box[3],
                            box[0],
                            box[1] + box[3],
                        ]
                    ],
                }
            )
    ann_file = root / "instances.json"
    ann_file.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": c, "name": f"c{c}"} for c in category_ids],
            }
        )
    )
    return root / "images", ann_file, images


@pytest.mark.parametrize("layout", ["end2end", "seed"])
def test_fake_model_finds_the_box_on_the_canvas(tmp_path, layout):
    import onnxruntime as ort

    from retinamask.data.transforms import seed_preprocess

    path = build_fake_model(tmp_path / "m.onnx", layout=layout, canvas_side=96)
    h, w, x1, y1, x2, y2, white = BOX_IMAGES[1]
    tensor, scale, _ = seed_preprocess(box_image(h, w, x1, y1, x2, y2, white), 96, MEAN)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, labels, scores, masks = session.run(None, {"input": np.stack([tensor, tensor])})
    rows = 1000 if layout == "seed" else 10
    assert boxes.shape == (2, rows, 4) and labels.dtype == np.int32 and masks.shape == (2, rows, 1, 28, 28)
    np.testing.assert_allclose(boxes[0, 0], np.array([x1, y1, x2, y2]) * scale, atol=1.5)
    assert labels[0, 0] == 2 and 0.5 < scores[0, 0] < 1
    assert (labels[0, 1:] == (1 if layout == "seed" else -1)).all()
