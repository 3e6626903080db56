"""The two evaluation conventions on the shipped model, and what the report costs.

The demo's flow, as a user coming from the seed runs it: 200 synthetic val images (seed 7, never
trained on, JPEG), the shipped shapes model exported in the seed layout (1000 candidates, host
NMS) at its 448 input, ``infer --legacy-names``, then the same output files evaluated with
``--convention original`` and ``--convention seed``, each without and with ``--report``.

    .venv/bin/python -m benchmarks.conventions --out runs/conventions

Prints the 24 stats' headline numbers side by side and the wall times (evaluate alone, evaluate
+ report). Finished steps (data, export, infer) are kept and reused by a rerun.
"""

import argparse
import time
from pathlib import Path


def main(argv=None):
    from retinamask.apps.demo import DEMO_VAL_SEED, SHIPPED_CONFIG, SHIPPED_WEIGHTS
    from retinamask.apps.evaluate import evaluate_outputs
    from retinamask.config import load_config
    from retinamask.data.shapes import generate_shapes_dataset
    from retinamask.export.onnx_export import export_onnx
    from retinamask.runtime.infer import run_inference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/conventions")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="evaluate runs per setting (the fastest is kept)")
    args = parser.parse_args(argv)
    out = Path(args.out)

    cfg = load_config(SHIPPED_CONFIG)
    canvas_side = int(cfg.INPUT.MAX_SIZE_TEST)
    data = generate_shapes_dataset(
        out / "data", num_train=0, num_val=args.images, seed=DEMO_VAL_SEED, image_format="jpg"
    )
    model = out / "retinamask_shapes_small_seed.onnx"
    if not model.exists():
        export_onnx(cfg, SHIPPED_WEIGHTS, model, layout="seed", canvas_side=canvas_side, verify=True)
    if not (out / "infer" / "images.json").exists():
        run_inference(
            model, data["val_images"], output_dir=out, output_dirname="infer", legacy_names=True, progress=False
        )

    rows = {}
    for convention in ("original", "seed"):
        for report in (False, True):
            best = None
            for _ in range(args.repeats):
                began = time.perf_counter()
                summary = evaluate_outputs(
                    out / "infer",
                    data["val_annotations"],
                    convention=convention,
                    output_path=out / f"evaluation_{convention}.txt",
                    progress=False,
                    report_dir=out / f"report_{convention}" if report else None,
                )
                seconds = time.perf_counter() - began
                best = seconds if best is None else min(best, seconds)
            rows[convention, report] = (best, summary)

    print(
        f"shipped model, seed layout, {args.images} images (seed {DEMO_VAL_SEED}, JPEG), S = {canvas_side}; "
        f"same output files:\n"
    )
    print("| convention | bbox AP | bbox AP50 | bbox APs | segm AP | segm AP50 | segm APs | evaluate s | + report s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for convention in ("original", "seed"):
        plain, summary = rows[convention, False]
        with_report, _ = rows[convention, True]
        b, s = summary["stats"]["bbox"], summary["stats"]["segm"]
        print(
            f"| {convention} | {b['AP']:.3f} | {b['AP50']:.3f} | {b['APs']:.3f} | {s['AP']:.3f} | {s['AP50']:.3f} | "
            f"{s['APs']:.3f} | {plain:.2f} | {with_report:.2f} ({100 * (with_report / plain - 1):+.0f} %) |"
        )


if __name__ == "__main__":
    main()
