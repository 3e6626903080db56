"""Training: losses against hand-computed values, mask targets, a few SGD steps, exact resume, the CLI."""

import json
import math

import numpy as np
import pytest
import torch

from retinamask.config import load_config
from retinamask.modeling import build_model
from retinamask.modeling.box_coder import BoxCoder
from retinamask.modeling.losses import (
    AdjustSmoothL1Loss,
    Matcher,
    RetinaNetLoss,
    SmoothL1Loss,
    attach_losses,
    box_iou_plus_one,
    project_masks_on_boxes,
)

# A tiny RetinaMask (a few thousand parameters) at a small input size.
TINY_YAML = """\
MODEL:
  META_ARCHITECTURE: "RetinaNet"
  RPN_ONLY: True
  MASK_ON: True
  USE_GN: True
  BACKBONE:
    CONV_BODY: "R-50-FPN"
    OUT_CHANNELS: 16
    FREEZE_CONV_BODY_AT: 0
  RESNETS:
    BLOCK_COUNTS: (1, 1, 1, 1)
    STEM_FUNC: "StemWithGN"
    TRANS_FUNC: "BottleneckWithGN"
    STEM_OUT_CHANNELS: 8
    RES2_OUT_CHANNELS: 16
    WIDTH_PER_GROUP: 4
  RPN:
    USE_FPN: True
    FG_IOU_THRESHOLD: 0.5
    BG_IOU_THRESHOLD: 0.4
  ROI_HEADS:
    USE_FPN: True
    BATCH_SIZE_PER_IMAGE: 64
    POSITIVE_FRACTION: 0.25
  ROI_MASK_HEAD:
    POOLER_SCALES: (0.125, 0.0625, 0.03125)
    POOLER_RESOLUTION: 14
    POOLER_SAMPLING_RATIO: 2
    RESOLUTION: 28
    CONV_LAYERS: (16, 16)
INPUT:
  MIN_SIZE_TRAIN: (96, 112)
  MAX_SIZE_TRAIN: 128
  MIN_SIZE_TEST: 112
  MAX_SIZE_TEST: 128
DATALOADER:
  SIZE_DIVISIBILITY: 32
  NUM_WORKERS: 0
SOLVER:
  BASE_LR: 0.01
  WEIGHT_DECAY: 0.0001
  IMS_PER_BATCH: 2
  WARMUP_ITERS: 2
  STEPS: (3,)
  MAX_ITER: 4
  CHECKPOINT_PERIOD: 2
RETINANET:
  RETINANET_ON: True
  NUM_CONVS: 1
  ANCHOR_SIZES: (16, 32, 64, 128, 256)
  SCALES_PER_OCTAVE: 1
  STRADDLE_THRESH: -1
  SELFADJUST_SMOOTH_L1: True
  BBOX_REG_BETA: 0.11
"""


@pytest.fixture()
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from retinamask.data.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(root, num_train=6, num_val=2, seed=3, max_objects=4)
    return root


# -- matching and the RetinaNet losses -------------------------------------------------------

GT_BOXES = torch.tensor([[0.0, 0.0, 9.0, 9.0], [40.0, 40.0, 45.0, 45.0]])
GT_LABELS = torch.tensor([2, 1])
ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 9.0, 9.0],  # IoU 1 with GT 0 -> positive, class 2
        [0.0, 0.0, 9.0, 14.0],  # IoU 100/150 with GT 0 -> positive, class 2
        [0.0, 0.0, 9.0, 21.0],  # IoU 100/220 = 0.45 -> between thresholds: ignored
        [20.0, 20.0, 29.0, 29.0],  # IoU 0 -> background
        [40.0, 40.0, 49.0, 49.0],  # IoU 36/100 with GT 1, its best anchor -> low-quality positive, class 1
    ]
)


def test_iou_uses_the_plus_one_convention():
    iou = box_iou_plus_one(GT_BOXES[:1], ANCHORS)
    assert torch.allclose(iou, torch.tensor([[1.0, 100 / 150, 100 / 220, 0.0, 0.0]]))


def test_matcher_thresholds_low_quality_and_ignored():
    quality = box_iou_plus_one(GT_BOXES, ANCHORS)
    assert Matcher(0.5, 0.4, allow_low_quality_matches=True)(quality).tolist() == [0, 0, -2, -1, 1]
    assert Matcher(0.5, 0.4, allow_low_quality_matches=False)(quality).tolist() == [0, 0, -2, -1, -1]
    # LOW_QUALITY_THRESHOLD above GT 1's best IoU (0.36): no low-quality match for it
    assert Matcher(0.5, 0.4, True, low_quality_threshold=0.4)(quality).tolist() == [0, 0, -2, -1, -1]
    # no ground truth: everything is background
    assert Matcher(0.5, 0.4, True)(torch.zeros(0, 5)).tolist() == [-1] * 5


def _focal(logit, target, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-logit))
    if target:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def _smooth_l1(x, beta):
    x = abs(x)
    return 0.5 * x * x / beta if x < beta else x - 0.5 * beta


def test_focal_and_regression_losses_match_hand_computation():
    num_classes, num_anchors = 2, ANCHORS.shape[0]
    torch.manual_seed(0)
    logits = torch.randn(1, num_anchors * num_classes, 1, 1)
    regression = torch.randn(1, num_anchors * 4, 1, 1) * 0.5
    loss = RetinaNetLoss(
        num_classes, Matcher(0.5, 0.4, True), BoxCoder((10.0, 10.0, 5.0, 5.0)), regression_loss=SmoothL1Loss(beta=0.11)
    )
    cls_loss, reg_loss = loss([ANCHORS], [logits], [regression], [{"boxes": GT_BOXES, "labels": GT_LABELS}])

    flat_logits = logits.view(num_anchors, num_classes).tolist()
    flat_reg = regression.view(num_anchors, 4).tolist()
    labels = [2, 2, None, 0, 1]  # None: ignored
    expected_cls = sum(
        _focal(flat_logits[a][c], labels[a] == c + 1)
        for a in range(num_anchors)
        if labels[a] is not None
        for c in range(num_classes)
    )
    num_positive, num_images = 3, 1
    assert cls_loss.item() == pytest.approx(expected_cls / (num_positive + num_images), rel=1e-5)

    expected_reg = 0.0
    for a, g in ((0, 0), (1, 0), (4, 1)):
        ax1, ay1, ax2, ay2 = ANCHORS[a].tolist()
        gx1, gy1, gx2, gy2 = GT_BOXES[g].tolist()
        aw, ah, gw, gh = ax2 - ax1 + 1, ay2 - ay1 + 1, gx2 - gx1 + 1, gy2 - gy1 + 1
        target = [
            10 * ((gx1 + gw / 2) - (ax1 + aw / 2)) / aw,
            10 * ((gy1 + gh / 2) - (ay1 + ah / 2)) / ah,
            5 * math.log(gw / aw),
            5 * math.log(gh / ah),
        ]
        expected_reg += sum(_smooth_l1(p - t, 0.11) for p, t in zip(flat_reg[a], target))
    assert reg_loss.item() == pytest.approx(expected_reg / (num_positive * 4), rel=1e-5)


def test_no_ground_truth_gives_finite_losses():
    loss = RetinaNetLoss(2, Matcher(0.5, 0.4, True), BoxCoder((10.0, 10.0, 5.0, 5.0)))
    logits = torch.zeros(1, ANCHORS.shape[0] * 2, 1, 1, requires_grad=True)
    cls_loss, reg_loss = loss(
        [ANCHORS],
        [logits],
        [torch.zeros(1, ANCHORS.shape[0] * 4, 1, 1)],
        [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}],
    )
    expected = ANCHORS.shape[0] * 2 * _focal(0.0, False) / 1
    assert cls_loss.item() == pytest.approx(expected, rel=1e-5) and reg_loss.item() == 0.0


def test_self_adjusting_smooth_l1_follows_running_statistics():
    adjust = AdjustSmoothL1Loss(4, beta=0.11)
    pred = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.02, 1.0]])
    target = torch.zeros(2, 4)
    value = adjust(pred, target)
    error = pred.abs()
    mean = 0.9 * 0.11 + 0.1 * error.mean(0)
    var = 0.1 * error.var(0)
    beta = (mean - var).clamp(1e-3, 0.11)
    assert torch.allclose(adjust.running_mean, mean) and torch.allclose(adjust.running_var, var)
    expected = sum(_smooth_l1(e, b) for row in error.tolist() for e, b in zip(row, beta.tolist()))
    assert value.item() == pytest.approx(expected, rel=1e-5)
    before = adjust.state_dict()
    adjust(pred[:1], target[:1])  # a single positive: statistics unchanged (its variance is undefined)
    assert all(torch.equal(before[k], v) for k, v in adjust.state_dict().items())


# -- mask targets ------------------------------------------------------------------------------


def test_mask_targets_of_a_square():
    masks = torch.zeros(1, 40, 48, dtype=torch.uint8)
    masks[0, 8:24, 8:24] = 1  # pixels 8..23: the +1 box (8, 8, 23, 23)
    boxes = torch.tensor(
        [
            [8.0, 8.0, 23.0, 23.0],  # the square itself
            [8.0, 8.0, 39.0, 23.0],  # twice as wide: left half
            [0.0, 0.0, 31.0, 31.0],
        ]
    )  # 32 x 32 from the corner: cells 7..20 of 28
    targets = project_masks_on_boxes(masks, boxes, torch.zeros(3, dtype=torch.int64), 28)
    assert targets.shape == (3, 28, 28) and targets.dtype == torch.float32
    assert targets.min() >= 0 and targets.max() <= 1
    expected = torch.zeros(3, 28, 28)
    expected[0] = 1
    expected[1, :, :14] = 1
    expected[2, 7:21, 7:21] = 1
    assert torch.equal((targets >= 0.5).float(), expected)
    # soft (fractional coverage) only in the cells along an edge of the mask or of the box
    padded = torch.nn.functional.pad(expected, (1, 1, 1, 1), value=-1)
    near_edge = torch.nn.functional.max_pool2d(padded, 3, 1) != -torch.nn.functional.max_pool2d(-padded, 3, 1)
    assert torch.equal(targets[~near_edge], expected[~near_edge])
    assert targets.sum((1, 2)).tolist() == pytest.approx(expected.sum((1, 2)).tolist(), rel=0.05)


# -- training steps ----------------------------------------------------------------------------


def _synthetic_batch():
    """Two 64x64 images with two squares each; normalised-looking inputs."""
    images = torch.full((2, 3, 64, 64), -50.0)
    targets = []
    for i, (a, b) in enumerate((((4, 4, 27, 27), (36, 30, 59, 57)), ((10, 30, 41, 61), (44, 4, 59, 19)))):
        masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
        boxes = []
        for k, (x1, y1, x2, y2) in enumerate((a, b)):
            images[i, k, y1 : y2 + 1, x1 : x2 + 1] = 80.0
            masks[k, y1 : y2 + 1, x1 : x2 + 1] = 1
            boxes.append([x1, y1, x2, y2])
        targets.append(
            {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([1, 2]), "masks": masks}
        )
    return images, [(64, 64), (64, 64)], targets


def test_a_few_sgd_steps_reduce_the_loss(tiny_config):
    from retinamask.engine.trainer import make_optimizer

    torch.manual_seed(0)
    cfg = load_config(tiny_config, ["RETINANET.NUM_CLASSES", "3", "SOLVER.BASE_LR", "0.02"])
    model = build_model(cfg).train()
    attach_losses(model, cfg)
    assert set(model.state_dict()) == set(build_model(cfg).state_dict())  # the loss adds no weights
    optimizer = make_optimizer(cfg, model)
    images, sizes, targets = _synthetic_batch()
    totals = []
    for _ in range(12):
        losses = model(images, sizes, targets)
        assert set(losses) == {"loss_retina_cls", "loss_retina_reg", "loss_mask"}
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert all(math.isfinite(t) for t in totals)
    assert np.mean(totals[-3:]) < 0.8 * totals[0], totals


def test_optimizer_groups_and_warmup_schedule(tiny_config):
    from retinamask.engine.trainer import make_optimizer, make_scheduler

    cfg = load_config(
        tiny_config,
        [
            "RETINANET.NUM_CLASSES",
            "3",
            "SOLVER.WARMUP_ITERS",
            "4",
            "SOLVER.WARMUP_FACTOR",
            "0.25",
            "SOLVER.STEPS",
            "(6, 8)",
        ],
    )
    model = build_model(cfg)
    optimizer = make_optimizer(cfg, model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, group in zip(names, optimizer.param_groups):
        bias = name.endswith("bias")
        assert group["weight_decay"] == (0.0 if bias else 0.0001)
        assert group["initial_lr" if "initial_lr" in group else "lr"] == pytest.approx(0.02 if bias else 0.01)
    scheduler = make_scheduler(cfg, optimizer)
    index = names.index(next(n for n in names if not n.endswith("bias")))
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[index]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.01 * (0.25 * (1 - i / 4) + i / 4) for i in range(4)] + [0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4]
    assert lrs == pytest.approx(expected)


# -- data --------------------------------------------------------------------------------------


def test_dataset_labels_boxes_masks_and_flip(shapes_dir, tiny_config):
    from retinamask.data.coco_dataset import CocoTrainDataset, TrainTransform

    dataset = CocoTrainDataset(shapes_dir / "train", shapes_dir / "annotations" / "instances_train.json")
    assert dataset.class_names == ("circle", "rectangle", "triangle", "star", "cross", "ring")
    image, boxes, labels, masks = dataset.load(0)
    assert labels.min() >= 1 and labels.max() <= 6 and masks.shape[1:] == image.shape[:2]
    for box, mask in zip(boxes, masks):  # +1 boxes: x2 = x + w - 1 = the last mask column
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]

    class Always:  # a generator whose uniform() always flips
        def integers(self, n):
            return 0

        def uniform(self):
            return 0.0

    transform = TrainTransform((image.shape[0],), 10000, flip_prob=1.0)
    out, flipped, flipped_masks = transform(image, boxes, masks, Always())
    width = image.shape[1]
    assert out.shape == (3,) + image.shape[:2]
    assert torch.equal(flipped_masks, torch.from_numpy(masks).flip(-1))
    assert torch.allclose(flipped[:, 0], width - 1 - torch.from_numpy(boxes[:, 2]))
    # BGR minus mean, flipped: pixel (0, 0) of the output is pixel (0, W-1) of the input
    expected = torch.tensor(image[0, -1, ::-1].astype(np.float32)) - torch.tensor([102.9801, 115.9465, 122.7717])
    assert torch.allclose(out[:, 0, 0], expected)


def test_batch_sampler_is_a_function_of_the_iteration():
    from retinamask.data.coco_dataset import IterationBatchSampler

    flags = [i % 3 == 0 for i in range(11)]
    full = list(IterationBatchSampler(11, 2, 12, seed=5, group_flags=flags))
    assert len(full) == 12 and all(len(b) == 2 for b in full)
    assert list(IterationBatchSampler(11, 2, 12, start_iter=7, seed=5, group_flags=flags)) == full[7:]
    assert all(len({flags[i] for i, _ in b}) == 1 for b in full[:4])  # grouped batches first in an epoch
    assert full != list(IterationBatchSampler(11, 2, 12, seed=6, group_flags=flags))


# -- checkpoints, resume, CLI --------------------------------------------------------------------


def _train(tiny_config, shapes_dir, output, **kwargs):
    from retinamask.engine.train_run import train

    return train(load_config(tiny_config), shapes_dir, output, num_workers=0, progress=False, **kwargs)


def test_interrupted_training_resumes_exactly(tiny_config, shapes_dir, tmp_path, monkeypatch):
    from retinamask.engine import trainer as trainer_module
    from retinamask.modeling.checkpoint import read_checkpoint

    uninterrupted = read_checkpoint(_train(tiny_config, shapes_dir, tmp_path / "a"))

    original_step = trainer_module.Trainer.train_step

    def step_then_die(self, *args):
        if self.iteration == 3:  # after model_0000002.pth, in the middle of the next period
            raise KeyboardInterrupt
        return original_step(self, *args)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_config, shapes_dir, tmp_path / "b")
    assert (tmp_path / "b" / "last_checkpoint").read_text().strip() == "model_0000002.pth"
    monkeypatch.setattr(trainer_module.Trainer, "train_step", original_step)
    resumed = read_checkpoint(_train(tiny_config, shapes_dir, tmp_path / "b"))

    assert resumed["iteration"] == uninterrupted["iteration"] == 4
    assert resumed["scheduler"]["last_epoch"] == uninterrupted["scheduler"]["last_epoch"] == 4
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for index, state in uninterrupted["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"])
    assert [g["lr"] for g in resumed["optimizer"]["param_groups"]] == [
        g["lr"] for g in uninterrupted["optimizer"]["param_groups"]
    ]
    for key, value in uninterrupted["loss_state"]["retinanet"].items():
        assert torch.equal(resumed["loss_state"]["retinanet"][key], value)


@pytest.mark.filterwarnings("ignore:no detections to evaluate")  # 2 iterations detect nothing on val
def test_cli_trains_two_iterations_and_writes_a_loadable_model(tiny_config, shapes_dir, tmp_path, capsys):
    from retinamask.cli import main
    from retinamask.modeling.checkpoint import load_checkpoint

    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--config",
            str(tiny_config),
            "--data",
            str(shapes_dir),
            "--output",
            str(out),
            "--max-iter",
            "2",
            "--workers",
            "0",
        ]
    )
    assert code == 0
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    cfg = load_config(out / "config.yaml")
    assert cfg.CLASS_NAMES == ("circle", "rectangle", "triangle", "star", "cross", "ring")
    assert cfg.RETINANET.NUM_CLASSES == 7 and cfg.SOLVER.MAX_ITER == 2
    model = build_model(cfg)
    load_checkpoint(model, out / "model_final.pth")
    assert model.class_names == cfg.CLASS_NAMES
    # rerunning the finished command does nothing and succeeds; --eval scores the final model on val
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--config",
                str(tiny_config),
                "--data",
                str(shapes_dir),
                "--output",
                str(out),
                "--max-iter",
                "2",
                "--workers",
                "0",
                "--eval",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "final checkpoint" in printed and "model_final.pth" in printed
    stats = json.loads((out / "eval_val.json").read_text())
    assert "bbox" in json.dumps(stats) and "segm" in json.dumps(stats)


def test_cli_reports_a_missing_dataset(tiny_config, tmp_path, capsys):
    from retinamask.cli import main

    code = main(
        ["train", "--config", str(tiny_config), "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run")]
    )
    assert code == 2
    assert "instances_train.json" in capsys.readouterr().err
