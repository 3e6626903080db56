"""The shipped model's ONNX: exactly what its documented command exports today, and what predict, serve
and demo use where torch is absent (a runtime-only install, simulated by making ``import torch`` fail)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retinamask.config.shipped import SHIPPED_ONNX, SHIPPED_ONNX_COMMAND

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "


def _without_torch(code, cwd):
    """Run ``code`` in a fresh interpreter where ``import torch`` raises ImportError."""
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from retinamask.data.shapes import generate_shapes_dataset

    data = generate_shapes_dataset(tmp_path_factory.mktemp("shipped_onnx"), num_train=0, num_val=1, seed=7)
    return next(Path(data["val_images"]).glob("*.png"))


def test_the_shipped_onnx_is_what_its_command_exports(tmp_path):
    pytest.importorskip("torch")
    from retinamask.cli import main

    args = SHIPPED_ONNX_COMMAND.split()[1:]
    out = tmp_path / "fresh.onnx"
    args[args.index("--save_path") + 1] = str(out)
    assert main(args) == 0
    assert out.read_bytes() == SHIPPED_ONNX.read_bytes(), (
        f"{SHIPPED_ONNX} is not what '{SHIPPED_ONNX_COMMAND}' exports today: rerun that command"
    )


def test_without_torch_predict_uses_the_shipped_onnx(image, tmp_path):
    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.ops.coco_results import detections_to_json

    code = (
        "from retinamask.cli import main; "
        f"sys.exit(main(['predict', '--input', {str(image)!r}, '--output', {str(tmp_path)!r}, "
        "'--backend', 'onnxruntime']))"
    )
    done = _without_torch(code, ROOT)
    assert done.returncode == 0, done.stderr
    assert "no model named and no torch: using the shipped model's ONNX retinamask_shapes_small.onnx" in done.stderr
    written = json.loads((tmp_path / f"{image.stem}.json").read_text())
    expected = detections_to_json(OnnxPredictor(SHIPPED_ONNX, backend="onnxruntime")(image))
    assert written == {"image": str(image), **json.loads(json.dumps(expected))}


def test_without_torch_serve_answers_with_the_shipped_model(image):
    pytest.importorskip("fastapi")
    code = (
        "from fastapi.testclient import TestClient; from retinamask.serve import create_app; "
        "from retinamask.serve.settings import ServeSettings; import time\n"
        "with TestClient(create_app(ServeSettings(backend='onnxruntime'))) as c:\n"
        "    while c.get('/v1/health/ready').status_code != 200: time.sleep(0.05)\n"
        f"    r = c.post('/v1/predict', content=open({str(image)!r}, 'rb').read(), "
        "headers={'content-type': 'image/png'})\n"
        "    print(r.status_code, len(r.json()['detections']), 'torch' in sys.modules and sys.modules['torch'])"
    )
    done = _without_torch(code, ROOT)
    assert done.returncode == 0, done.stderr
    status, count, torch_loaded = done.stdout.split()
    assert status == "200" and int(count) > 0 and torch_loaded == "None"


def test_without_torch_demo_skips_only_the_export(tmp_path):
    code = (
        "from retinamask.cli import main; "
        f"sys.exit(main(['demo', '--output', {str(tmp_path)!r}, '--num-images', '6', '--overlays', '2', "
        "'--backend', 'onnxruntime']))"
    )
    done = _without_torch(code, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert "[2/5] export: skipped (no torch" in said and "retinamask_shapes_small.onnx (original resize)" in said
    for step in ("[1/5] data", "[3/5] infer", "[4/5] evaluate", "[5/5] bench"):
        assert step in said
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert 0.3 < summary["bbox_mAP"] <= 1 and 0.3 < summary["segm_mAP"] <= 1
    assert summary["segm_mAP_subpixel"] > summary["segm_mAP"]  # small shapes: the sub-pixel paste is sharper
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 2
