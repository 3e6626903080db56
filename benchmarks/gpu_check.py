"""The PyTorch path on a GPU, proven and timed (issue 19): one run, one report.

    python -m benchmarks.gpu_check [--device cuda] [--quick] [--reference DIR] [--out DIR]

Sections (benchmarks/gpu_sections.py), each guarded: a failure is recorded (its traceback in
the JSON) and the run goes on; the report is rewritten after every section.
  environment  torch/torchvision/CUDA versions, the device, whether torchvision's nms and
               roi_align run on it (and agree with the CPU)
  parity       fixture A of the original RetinaMask (--reference DIR) through the model on the
               device in fp32, matched as tests/test_model_parity.py matches (benchmarks.reference):
               matched detections, max |d score|, min box IoU, identical-RLE share
  latency      R-50-FPN (random weights, benchmarks/r50.py) at batch 1, 800x1088 and 1344x1344,
               fp32 / TF32 / fp16 autocast / bf16 autocast: median of >= 20 runs after warm-ups
               (CUDA events), peak memory; batch 8 at 800x1088; stage split and torch profiler
               table (top ops) of the fp16 800x1088 run
  accuracy     the shipped model on the demo's val split (shapes, seed 7) on the device:
               bbox/segm mAP per precision through the project's COCO evaluation
  training     20 iterations of the project's Trainer (shapes config) on the device: losses
               finite, iterations/s
Writes gpu_check.md and gpu_check.json under --out (default: $OUT, else ./gpu_report).
``--device cpu --quick`` runs the same code small (tests/test_gpu_check.py); on the CPU TF32
and fp16 make no sense and are left out.

Device run (the device tool's ``run``; ../shared does not travel, so copy what it needs into
the ignored build/ folder first, with the two packages the device lacks as wheels):

    mkdir -p build/gpu/reference build/gpu/whl
    cp ../shared/reference/{synthetic_weights.py,retinamask_R-50-FPN_state_dict_spec.json,\\
reference_image_A_256x320.npz,image_A_256x320.png} build/gpu/reference/
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d build/gpu/whl pycocotools yacs

    run(carry=["build/gpu"], timeout_s=420, command=
      "python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site build/gpu/whl/*.whl
       && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
       && python3 -m benchmarks.gpu_check --device cuda --reference build/gpu/reference --out $OUT")

It stops starting sections after --deadline-s (default 330 s), so the report lands inside the
timeout; a rerun of what failed: ``--sections parity training``.
"""

import argparse
import json
import os
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.gpu_report import markdown
from benchmarks.machine import command_line, utc_now

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REFERENCE = Path(os.environ.get("RETINAMASK_SHARED", REPO.parent / "shared")) / "reference"
REPORT_NAME = "gpu_check"


@dataclass
class Options:
    """What one run measures and how much of it. Sizes are (H, W) canvases."""

    device: object
    quick: bool
    reference: Path | None
    out: Path
    workdir: Path
    repeats: int
    warmup: int
    sizes: list
    precisions: list
    batch: int
    batch_precisions: list
    latency_masks: int | None
    profile_precision: str
    profile_calls: int
    profile_rows: int
    images: int
    eval_batch: int
    accuracy_precisions: list
    iterations: int
    train_images: int
    train_opts: list = field(default_factory=list)
    data_workers: int = 0


def build_options(args, workdir):
    import torch

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precisions = ["fp32", "tf32", "fp16", "bf16"] if cuda else ["fp32", "bf16"]
    quick = args.quick
    return Options(
        device=device,
        quick=quick,
        reference=Path(args.reference) if args.reference else None,
        out=Path(args.out),
        workdir=workdir,
        repeats=args.repeats or (2 if quick else 20),
        warmup=args.warmup if args.warmup is not None else (1 if quick else 5),
        sizes=[(800, 1088), (1344, 1344)] if cuda or not quick else [(128, 160)],
        precisions=precisions,
        batch=8 if cuda or not quick else 2,
        # quick on the CPU: the mask head on the top 10 instead of 50 (it dominates small canvases)
        latency_masks=None if cuda or not quick else 10,
        batch_precisions=["fp32", "fp16"] if cuda else ["fp32"],
        profile_precision="fp16" if cuda else "fp32",
        profile_calls=5 if cuda else 1,
        profile_rows=15,
        images=args.images or (3 if quick else 200),
        eval_batch=4,
        accuracy_precisions=["fp32", "fp16", "bf16"] if cuda else ["fp32", "bf16"],
        iterations=args.iterations or (3 if quick else 20),
        train_images=4 if quick else 32,
        # quick: small batches and images, so that a 2-core CPU takes seconds per step
        train_opts=["SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", "256"]
        if quick
        else [],
        data_workers=min(8, os.cpu_count() or 1) if cuda else 0,
    )


def run_section(name, fn, opts):
    """Run one section: {"status": ok | failed | skipped, "seconds", "result" | "error" + "traceback"}."""
    from benchmarks.gpu_sections import SkipSection

    start = time.perf_counter()
    record = {}
    try:
        record.update(status="ok", result=fn(opts))
    except SkipSection as reason:
        record.update(status="skipped", reason=str(reason))
    except Exception as error:  # the report records it and the run goes on
        record.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    record["seconds"] = time.perf_counter() - start
    return record


def write_report(report, out):
    """gpu_check.json and gpu_check.md under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{REPORT_NAME}.json", out / f"{REPORT_NAME}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def run(opts, sections, deadline_s):
    """Run ``sections`` in order, rewriting the report after each; returns the report."""
    import torch

    from benchmarks.gpu_sections import SECTIONS

    if opts.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    options = {k: v for k, v in asdict(opts).items() if k not in ("out", "workdir")}
    report = {"date": utc_now(), "command": " ".join(["python", *command_line()]), "options": options}
    report["sections"] = {}
    start = time.perf_counter()
    for name in sections:
        if time.perf_counter() - start > deadline_s:
            report["sections"][name] = {"status": "skipped", "reason": f"past --deadline-s {deadline_s:g}"}
        else:
            print(f"[gpu_check] {name} ...", flush=True)
            report["sections"][name] = run_section(name, SECTIONS[name], opts)
            print(f"[gpu_check] {name}: {report['sections'][name]['status']}", flush=True)
        report["total_seconds"] = time.perf_counter() - start
        write_report(report, opts.out)
    return report


def main(argv=None):
    from benchmarks.gpu_sections import SECTIONS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda); cpu runs the same code")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats, images and iterations")
    parser.add_argument(
        "--reference",
        default=str(DEFAULT_REFERENCE) if DEFAULT_REFERENCE.is_dir() else None,
        metavar="DIR",
        help="fixture A of the original (default: ../shared/reference where it exists; parity is skipped without)",
    )
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_report", metavar="DIR")
    parser.add_argument("--workdir", default=None, metavar="DIR", help="generated datasets (default: a temp dir)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per latency row (default 20; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 5; quick 1)")
    parser.add_argument("--images", type=int, default=None, help="accuracy val images (default 200; quick 3)")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations (default 20; quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--deadline-s", type=float, default=330.0, help="start no section after this (default 330)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        opts = build_options(args, workdir)
        report = run(opts, args.sections, args.deadline_s)
    failed = [name for name, record in report["sections"].items() if record["status"] == "failed"]
    print(f"[gpu_check] report in {opts.out}; failed sections: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
