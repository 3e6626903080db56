"""The shipped model's ONNX: exactly what its documented command exports today, and what predict, serve
and demo use where torch is absent (a runtime-only install, simulated by making ``import torch`` fail) or
installed but broken (a ``torch`` package first on PYTHONPATH whose import raises, as a mismatched wheel's)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retinamask.config.shipped import SHIPPED_ONNX, SHIPPED_ONNX_COMMAND

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "


# What a torch wheel built against another libstdc++ / CUDA raises on import; a broken one may raise anything.
BROKEN_TORCH = {
    "ImportError": "libtorch_cpu.so: cannot open shared object file: No such file or directory",
    "RuntimeError": "module compiled against ABI version 0x1000009 but this version of numpy is 0x2000000",
}


def _without_torch(code, cwd):
    """Run ``code`` in a fresh interpreter where ``import torch`` raises ImportError."""
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], cwd=cwd, capture_output=True, text=True, timeout=600)


def _with_broken_torch(code, cwd, tmp_path, error="ImportError"):
    """Run ``code`` in a fresh interpreter where torch is found, but importing it raises ``error``."""
    fake = tmp_path / "broken_site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise {error}({BROKEN_TORCH[error]!r})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", "import sys; " + code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


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


@pytest.mark.parametrize("error", sorted(BROKEN_TORCH))
def test_a_torch_that_cannot_be_imported_is_no_torch_with_its_error_in_one_line(image, tmp_path, error):
    # predict with no model named: the shipped ONNX, the same detections as without torch, one line saying why
    out = tmp_path / "predict"
    code = (
        "from retinamask.cli import main; "
        f"sys.exit(main(['predict', '--input', {str(image)!r}, '--output', {str(out)!r}, '--backend', 'onnxruntime']))"
    )
    done = _with_broken_torch(code, ROOT, tmp_path, error)
    assert done.returncode == 0, done.stderr
    why = f"torch is installed but cannot be imported ({error}: {BROKEN_TORCH[error]})"
    assert f"no model named and {why}: using the shipped model's ONNX retinamask_shapes_small.onnx" in done.stderr
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr
    written = json.loads((out / f"{image.stem}.json").read_text())
    absent = tmp_path / "absent"
    assert _without_torch(code.replace(str(out), str(absent)), ROOT).returncode == 0
    assert written == json.loads((absent / f"{image.stem}.json").read_text())
    # predict with PyTorch weights named: one line, exit 2, not "unexpected ... (a bug)"
    code = (
        "from retinamask.cli import main; "
        f"sys.exit(main(['predict', '--weights', 'retinamask_shapes_small', '--input', {str(image)!r}, "
        f"'--output', {str(out)!r}]))"
    )
    done = _with_broken_torch(code, ROOT, tmp_path / "weights", error)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        f"error: command line: the PyTorch model needs torch ({why}): pip install 'retinamask[torch]', "
        "or give an exported model with --model"
    )


def test_with_a_broken_torch_demo_takes_the_torch_free_route(tmp_path):
    code = (
        "from retinamask.cli import main; "
        f"sys.exit(main(['demo', '--output', {str(tmp_path / 'demo')!r}, '--num-images', '2', '--overlays', '1', "
        "'--backend', 'onnxruntime']))"
    )
    done = _with_broken_torch(code, ROOT, tmp_path)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    assert (
        "[2/5] export: skipped (torch is installed but cannot be imported (ImportError: libtorch_cpu.so: cannot "
        "open shared object file: No such file or directory): pip install 'retinamask[torch]' to export); "
        "running the shipped model's ONNX retinamask_shapes_small.onnx (original resize)"
    ) in said
    assert "Traceback" not in said and json.loads((tmp_path / "demo" / "demo_summary.json").read_text())["bbox_mAP"] > 0


def test_with_a_broken_torch_serve_answers_with_the_shipped_model(image, tmp_path):
    pytest.importorskip("fastapi")
    code = (
        "from fastapi.testclient import TestClient; from retinamask.serve import create_app; "
        "from retinamask.serve.settings import ServeSettings; import time\n"
        "with TestClient(create_app(ServeSettings(backend='onnxruntime'))) as c:\n"
        "    while c.get('/v1/health/ready').status_code != 200: time.sleep(0.05)\n"
        f"    r = c.post('/v1/predict', content=open({str(image)!r}, 'rb').read(), "
        "headers={'content-type': 'image/png'})\n"
        "    print(r.status_code, len(r.json()['detections']))"
    )
    done = _with_broken_torch(code, ROOT, tmp_path)
    assert done.returncode == 0, done.stderr
    status, count = done.stdout.split()
    assert status == "200" and int(count) > 0
