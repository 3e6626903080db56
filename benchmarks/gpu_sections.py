"""The measurements of ``benchmarks.gpu_check``, one function per report section.

Each takes the run's :class:`benchmarks.gpu_check.Options` and returns a JSON-able dict, or
raises :class:`SkipSection` (recorded as skipped, with the reason). Times are CUDA events on
CUDA (``time.perf_counter`` on CPU), medians of the timed repeats after the warm-ups.
"""

import itertools
import math
import statistics
import time

import numpy as np
import torch

from benchmarks.device import precision, synchronize, time_ms
from benchmarks.machine import cpu_model, package_versions

TRAIN_CONFIG = "retinamask_shapes_small"
TRAIN_SEED = 0


class SkipSection(Exception):
    """A section that does not apply to this run (the message says why)."""


# -- environment ---------------------------------------------------------------------------


def _op_check(run_op, device):
    """Whether a torchvision op runs on ``device`` and gives what it gives on the CPU."""
    try:
        ours, cpu = run_op(device), run_op(torch.device("cpu"))
        synchronize(device)
        same = ours.shape == cpu.shape and bool(torch.allclose(ours.cpu().float(), cpu.float(), atol=1e-4))
        return {"runs": True, "output_device": str(ours.device), "matches_cpu": same}
    except Exception as error:  # recorded in the report
        return {"runs": False, "error": f"{type(error).__name__}: {error}"}


def _nms(device):
    from torchvision.ops import nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 300
    boxes = torch.cat((xy, xy + 10 + torch.rand(500, 2, generator=g) * 60), dim=1)
    return nms(boxes.to(device), torch.rand(500, generator=g).to(device), 0.5)


def _roi_align(device):
    from torchvision.ops import roi_align

    g = torch.Generator().manual_seed(0)
    feature = torch.randn(1, 8, 40, 50, generator=g)
    rois = torch.tensor([[0, 3.0, 4.0, 120.0, 90.0], [0, 50.0, 20.0, 300.0, 310.0]])
    return roi_align(feature.to(device), rois.to(device), 14, spatial_scale=1 / 8, sampling_ratio=2, aligned=False)


def environment(opts):
    import torchvision

    device = opts.device
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    else:
        info["device_name"] = cpu_model()
    info["torchvision_ops"] = {"nms": _op_check(_nms, device), "roi_align": _op_check(_roi_align, device)}
    return info


# -- parity with the original --------------------------------------------------------------


def _match_summary(ours, npz, prefix, boxes_key):
    from benchmarks.reference import match_detections

    match = match_detections(ours, npz[boxes_key], npz[f"{prefix}_labels"], npz[f"{prefix}_scores"])
    summary = {
        "reference": len(match.ours_index),
        "ours": len(ours["boxes"]),
        "matched": match.matched,
        "extra": match.extra,
        "complete": match.complete,
        "max_score_delta": max(match.score_delta, default=None),
        "min_box_iou": min(match.iou, default=None),
    }
    return summary, match


def _max_prob_delta(probs, ref_probs, match):
    pairs = [(j, r) for r, j in enumerate(match.ours_index) if j >= 0]
    if not pairs:
        return None
    ours, ref = zip(*pairs)
    return float(np.abs(np.asarray(probs)[list(ours)] - ref_probs[list(ref)]).max())


def parity(opts):
    """Fixture A through the model on the device in fp32: the model on the reference's own input
    tensor ("direct"), and Predictor from the PNG with masks pasted at the original size ("e2e")."""
    from benchmarks.reference import (
        REFERENCE_CONFIG,
        REFERENCE_PNG,
        load_reference_model,
        load_reference_npz,
    )
    from retinamask.config import load_config
    from retinamask.engine.predictor import Predictor
    from retinamask.ops.masks import encode_masks

    if opts.reference is None or not (opts.reference / REFERENCE_PNG).is_file():
        raise SkipSection(f"no reference fixture at {opts.reference} (pass --reference DIR)")
    device = opts.device
    npz = load_reference_npz(opts.reference)
    model = load_reference_model(opts.reference).to(device)
    x = torch.from_numpy(npz["direct_input_bgr_minus_mean"]).to(device)
    size = tuple(int(v) for v in npz["direct_input_image_size_hw"])
    with torch.no_grad(), precision("fp32", device):
        det = {k: v.cpu() for k, v in model(x, [size])[0].items()}
    direct, match = _match_summary(det, npz, "direct_det", "direct_det_boxes_xyxy")
    direct["max_mask_prob_delta"] = _max_prob_delta(det["mask_probs"].numpy(), npz["direct_mask_probs_28x28"], match)

    predictor = Predictor(model, load_config(REFERENCE_CONFIG), device=str(device))
    with precision("fp32", device):
        pred = predictor(opts.reference / REFERENCE_PNG)
    ours = {k: torch.from_numpy(getattr(pred, k)) for k in ("boxes", "labels", "scores")}
    e2e, match = _match_summary(ours, npz, "e2e_det", "e2e_det_boxes_xyxy_orig")
    e2e["max_mask_prob_delta"] = _max_prob_delta(pred.mask_probs, npz["e2e_mask_probs_28x28"], match)
    pairs = [(j, r) for r, j in enumerate(match.ours_index) if j >= 0]
    rles = encode_masks(np.ascontiguousarray(pred.masks[[j for j, _ in pairs]])) if pairs else []
    identical = sum(rle["counts"] == str(npz["e2e_mask_rle_counts"][r]) for rle, (_, r) in zip(rles, pairs))
    e2e["identical_rle"] = int(identical)
    e2e["identical_rle_share"] = identical / len(pairs) if pairs else None
    return {"direct": direct, "e2e": e2e}


# -- latency ---------------------------------------------------------------------------------


def _latency_row(model, size, batch, name, opts):
    device = opts.device
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(batch, 3, *size, generator=g) * 50).to(device)
    sizes = [tuple(size)] * batch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    detections = []

    def call():
        detections[:] = model(x, sizes)

    with torch.no_grad(), precision(name, device):
        times = time_ms(call, device, opts.warmup, opts.repeats)
    median = statistics.median(times)
    return {
        "size": f"{size[0]}x{size[1]}",
        "batch": batch,
        "precision": name,
        "median_ms": median,
        "min_ms": min(times),
        "max_ms": max(times),
        "repeats": len(times),
        "images_per_s": batch * 1000.0 / median,
        "peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "detections_first_image": len(detections[0]["scores"]),
    }


def _stages_ms(model, x, sizes, name, opts):
    """Median ms of backbone+FPN, head+post-processing and mask head (synchronised between)."""
    device, records = opts.device, []
    with torch.no_grad(), precision(name, device):
        for _ in range(opts.warmup + opts.repeats):
            marks = [time.perf_counter()]
            features = model.backbone(x)
            synchronize(device)
            marks.append(time.perf_counter())
            anchors, logits, regression = model.rpn(features)
            detections = model.rpn.postprocessor(anchors, logits, regression, sizes)
            synchronize(device)
            marks.append(time.perf_counter())
            model.predict_masks(features, detections)
            synchronize(device)
            marks.append(time.perf_counter())
            records.append([(b - a) * 1000.0 for a, b in itertools.pairwise(marks)])
    records = records[opts.warmup :]
    names = ("backbone_fpn", "head_postprocess", "mask_head")
    return {n: statistics.median(r[i] for r in records) for i, n in enumerate(names)}


def _profile(model, x, sizes, name, opts):
    """The torch profiler's top operators of a few calls: (table text, top rows)."""
    from torch.profiler import ProfilerActivity, profile

    device = opts.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), precision(name, device):
        model(x, sizes)
        synchronize(device)
        with profile(activities=activities) as prof:
            for _ in range(opts.profile_calls):
                model(x, sizes)
            synchronize(device)
    averages = prof.key_averages()
    on_device = device.type == "cuda"
    key = "self_device_time_total" if on_device else "self_cpu_time_total"

    def value(event, attribute):
        return float(getattr(event, attribute, getattr(event, attribute.replace("device", "cuda"), 0.0)) or 0.0)

    events = sorted(averages, key=lambda e: value(e, key), reverse=True)[: opts.profile_rows]
    top = [
        {
            "op": e.key,
            "calls": int(e.count),
            "self_ms_per_run": value(e, key) / 1000.0 / opts.profile_calls,
            "cpu_total_ms_per_run": value(e, "cpu_time_total") / 1000.0 / opts.profile_calls,
        }
        for e in events
    ]
    table = averages.table(sort_by=key, row_limit=opts.profile_rows)
    return table, top


def latency(opts):
    from benchmarks.r50 import build_benchmark_model

    model = build_benchmark_model().to(opts.device)
    if opts.latency_masks is not None:
        model.num_masks_test = opts.latency_masks
    rows = [_latency_row(model, size, 1, name, opts) for size in opts.sizes for name in opts.precisions]
    rows += [_latency_row(model, opts.sizes[0], opts.batch, name, opts) for name in opts.batch_precisions]
    size = opts.sizes[0]
    x = (torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 50).to(opts.device)
    table, top = _profile(model, x, [tuple(size)], opts.profile_precision, opts)
    return {
        "model": "R-50-FPN RetinaMask, random weights (benchmarks/r50.py)",
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "masks_per_image": model.num_masks_test,
        "rows": rows,
        "profile": {
            "size": f"{size[0]}x{size[1]}",
            "precision": opts.profile_precision,
            "calls": opts.profile_calls,
            "stages_ms": _stages_ms(model, x, [tuple(size)], opts.profile_precision, opts),
            "top_ops": top,
            "table": table,
        },
    }


# -- accuracy per precision ------------------------------------------------------------------


def _coco_results(predictor, dataset, images_dir, batch_size):
    from retinamask.evaluation import detections_to_coco_results, encode_masks

    category_ids = sorted(c["id"] for c in dataset["categories"])
    images = sorted(dataset["images"], key=lambda im: im["id"])
    results = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        predictions = predictor.predict_batch([images_dir / im["file_name"] for im in chunk])
        for im, pred in zip(chunk, predictions):
            cats = [category_ids[label - 1] for label in pred.labels]
            results += detections_to_coco_results(im["id"], pred.boxes, pred.scores, cats, encode_masks(pred.masks))
    return results


def accuracy(opts):
    """The shipped model on the demo's val split, evaluated as ``train --eval`` does, per precision."""
    from retinamask.apps.demo import DEMO_VAL_SEED
    from retinamask.config.shipped import SHIPPED_CONFIG, SHIPPED_WEIGHTS
    from retinamask.data.shapes import generate_shapes_dataset
    from retinamask.engine.predictor import Predictor
    from retinamask.evaluation import evaluate_coco, load_ground_truth

    val = generate_shapes_dataset(
        opts.workdir / "shapes_val", 0, opts.images, seed=DEMO_VAL_SEED, workers=opts.data_workers
    )
    dataset, _ = load_ground_truth(val["val_annotations"])
    predictor = Predictor.from_config(SHIPPED_CONFIG, SHIPPED_WEIGHTS, device=str(opts.device))
    rows = []
    for name in opts.accuracy_precisions:
        with precision(name, opts.device):
            start = time.perf_counter()
            results = _coco_results(predictor, dataset, val["val_images"], opts.eval_batch)
            seconds = time.perf_counter() - start
        report = evaluate_coco(dataset, results)
        rows.append(
            {
                "precision": name,
                "bbox_ap": report["bbox"]["AP"],
                "segm_ap": report["segm"]["AP"],
                "results": len(results),
                "seconds": seconds,
                "images_per_s": len(dataset["images"]) / seconds,
            }
        )
    return {"images": len(dataset["images"]), "seed": DEMO_VAL_SEED, "batch": opts.eval_batch, "rows": rows}


# -- training --------------------------------------------------------------------------------


def training(opts):
    """``opts.iterations`` steps of the project's Trainer (shapes config) on the device, fp32."""
    from retinamask.config import load_config
    from retinamask.data.coco_dataset import build_train_loader
    from retinamask.data.shapes import generate_shapes_dataset
    from retinamask.engine.trainer import Trainer, make_optimizer, make_scheduler

    data = generate_shapes_dataset(
        opts.workdir / "shapes_train", opts.train_images, 0, seed=TRAIN_SEED, workers=opts.data_workers
    )
    device = opts.device
    cfg = load_config(TRAIN_CONFIG, opts.train_opts)
    trainer = Trainer(cfg, data["root"], opts.workdir / "train_run", seed=TRAIN_SEED, num_workers=opts.data_workers)
    # The Trainer builds on the CPU (`retinamask train` has no device option): move the model,
    # then build the optimizer and schedule over the moved parameters.
    trainer.model.to(device)
    trainer.optimizer = make_optimizer(trainer.cfg, trainer.model)
    trainer.scheduler = make_scheduler(trainer.cfg, trainer.optimizer)
    loader = build_train_loader(
        trainer.cfg, trainer.dataset, opts.iterations, seed=TRAIN_SEED, num_workers=opts.data_workers
    )
    losses, times = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for images, image_sizes, targets, _ in loader:
        images = images.to(device)
        targets = [{k: v.to(device) for k, v in target.items()} for target in targets]
        synchronize(device)
        start = time.perf_counter()
        losses.append(trainer.train_step(images, image_sizes, targets))
        synchronize(device)
        times.append(time.perf_counter() - start)
    timed = times[1:] or times  # the first step is warm-up
    return {
        "config": TRAIN_CONFIG,
        "opts": list(opts.train_opts),
        "images_per_batch": trainer.cfg.SOLVER.IMS_PER_BATCH,
        "iterations": len(losses),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "all_finite": all(math.isfinite(v) for step in losses for v in step.values()),
        "iterations_per_s": len(timed) / sum(timed),
        "peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "data_workers": opts.data_workers,
    }


SECTIONS = {
    "environment": environment,
    "parity": parity,
    "latency": latency,
    "accuracy": accuracy,
    "training": training,
}
