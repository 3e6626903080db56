"""Suite section "Preprocessing": JPEG -> tensor throughput through the worker processes
``retinamask infer`` uses, for 0..N workers (pool start-up included)."""

import time

import numpy as np

from benchmarks.tables import table_head, table_row


def preprocessing_throughput(model_path, image_dir, worker_counts):
    """Images/s of JPEG -> tensor through infer's loader (its worker processes and shared-memory
    slots), each tensor copied into a batch buffer as infer does; pool start-up included."""
    from retinamask.formats.model_info import read_model_info
    from retinamask.runtime.infer_inputs import collect_items, load_inputs

    info = read_model_info(model_path)
    items, _ = collect_items(image_dir, info.canvas_side)
    buffer = np.empty((1, 3, info.canvas_side, info.canvas_side), np.float32)
    rows = []
    for workers in worker_counts:
        start = time.perf_counter()
        count = 0
        for _, tensor, _, cause in load_inputs(items, info, workers):
            if cause is not None:
                raise RuntimeError(cause)
            buffer[0] = tensor
            count += 1
        elapsed = time.perf_counter() - start
        rows.append({"workers": workers, "images": count, "seconds": elapsed, "images_per_s": count / elapsed})
    return rows


def markdown(rows, canvas_side):
    """The section's lines; ``canvas_side``: the seed's S of the tensors."""
    lines = [
        f"## Preprocessing (JPEG 640x480 -> {canvas_side}x{canvas_side} tensor, "
        "infer's worker processes; pool start-up included)",
        "",
        *table_head("workers:", "images:", "s:", "images/s:"),
    ]
    for row in rows:
        lines.append(table_row(row["workers"], row["images"], f"{row['seconds']:.2f}", f"{row['images_per_s']:.1f}"))
    return lines
