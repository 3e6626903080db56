"""PyTorch eager latency of R-50-FPN RetinaMask on this machine, split by stage.

    .venv/bin/python -m benchmarks.pytorch_latency [--repeats 3] [--threads N]

Random weights (He init; the classification bias lowered so that ~100 detections survive,
as with a trained model: benchmarks/r50.py), batch 1, float32, CPU. Sizes: the seed's fixed 1344x1344 canvas and
the original's test size for a 480x640 COCO image (800x1066, padded to 800x1088).
Stages: backbone+FPN, RetinaNet head + post-processing (candidates, decode, NMS, top-100),
mask head (RoIAlign + convs + deconv on the top-50 detections). Median of the repeats.
"""

import argparse
import statistics
import time

import torch

from benchmarks.machine import cpu_model
from benchmarks.r50 import build_benchmark_model


def time_stages(model, height, width, repeats):
    x = torch.randn(1, 3, height, width) * 50
    sizes = [(height, width)]
    records = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # first run is warm-up
            t0 = time.perf_counter()
            features = model.backbone(x)
            t1 = time.perf_counter()
            anchors, logits, regression = model.rpn(features)
            detections = model.rpn.postprocessor(anchors, logits, regression, sizes)
            t2 = time.perf_counter()
            detections = model.predict_masks(features, detections)
            t3 = time.perf_counter()
            records.append((t1 - t0, t2 - t1, t3 - t2, len(detections[0]["scores"])))
    records = records[1:]
    med = [statistics.median(r[i] for r in records) for i in range(3)]
    return med, records[-1][3]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_benchmark_model()
    print(f"# PyTorch {torch.__version__} eager, float32, batch 1, {torch.get_num_threads()} threads, {cpu_model()}")
    print("| input | backbone+FPN (s) | head+postprocess (s) | mask head (s) | total (s) | masks |")
    print("|---|---|---|---|---|---|")
    for height, width, label in ((1344, 1344, "1344x1344 (seed canvas)"), (800, 1088, "800x1088 (original test size)")):
        (backbone, head, mask), count = time_stages(model, height, width, args.repeats)
        print(f"| {label} | {backbone:.2f} | {head:.2f} | {mask:.2f} | {backbone + head + mask:.2f} | {count} |")


if __name__ == "__main__":
    main()
