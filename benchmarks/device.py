"""Running and timing on a torch device: the precisions a check compares (autocast, TF32),
synchronisation, and per-call times (CUDA events on CUDA, ``time.perf_counter`` elsewhere)."""

import contextlib
import time

import torch

# name -> (autocast dtype or None, TF32 matmul/conv allowed)
PRECISIONS = {
    "fp32": (None, False),
    "tf32": (None, True),
    "fp16": (torch.float16, False),
    "bf16": (torch.bfloat16, False),
}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def precision(name, device):
    """Run the body in precision ``name`` (:data:`PRECISIONS`): autocast for fp16/bf16; TF32 in
    cuDNN and cuBLAS only for tf32 (fp32 turns cuDNN's default TF32 off)."""
    dtype, tf32 = PRECISIONS[name]
    saved = None
    if device.type == "cuda":
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    try:
        with autocast:
            yield
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def time_ms(fn, device, warmup, repeats):
    """Milliseconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
    return times
