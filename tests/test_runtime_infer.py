"""retinamask infer: images streamed through worker processes, .bin folders and .info lists,
per-image output files, the run sidecar and summary, resume, bad items."""

import json

import numpy as np
import pytest

from retinamask.cli import main
from retinamask.core.errors import InputError
from retinamask.core.resize import SeedResize
from retinamask.data.transforms import seed_preprocess
from retinamask.formats.model_info import output_specs
from retinamask.runtime.backends import create_session
from retinamask.runtime.infer import run_inference
from test_runtime_fakes import BOX_IMAGES, MEAN, box_image, build_fake_model, make_box_dataset

S = 96


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_box_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_fake_model(tmp_path_factory.mktemp("model") / "m.onnx", layout="end2end", canvas_side=S)


def test_images_streamed_with_workers(tmp_path, dataset, model_path):
    image_dir, _, listing = dataset
    summary = run_inference(model_path, image_dir, tmp_path, "result", batch_size=2, workers=1, progress=False)
    out = tmp_path / "result"
    assert summary["count"] == len(BOX_IMAGES) and summary["skipped"] == 0 and summary["failed"] == []
    specs = output_specs("end2end", 10)
    for name, _ in listing:
        stem = name.rsplit(".", 1)[0]
        for spec in specs:
            path = out / f"{stem}_{spec.index}.bin"
            assert path.stat().st_size == spec.nbytes
    # the outputs are the model's outputs for the preprocessed image, batch axis removed
    h, w, x1, y1, x2, y2, white = BOX_IMAGES[0]
    tensor, scale, (rh, rw) = seed_preprocess(box_image(h, w, x1, y1, x2, y2, white, seed=0), S, MEAN)
    expected = create_session(model_path).run(tensor[None])
    boxes = np.fromfile(out / "img_000_0.bin", dtype="<f4").reshape(10, 4)
    labels = np.fromfile(out / "img_000_1.bin", dtype="<i4")
    np.testing.assert_array_equal(boxes, expected[0][0])
    np.testing.assert_array_equal(labels, expected[1][0])

    sidecar = json.loads((out / "images.json").read_text())
    assert sidecar["model"]["layout"] == "end2end" and sidecar["model"]["input_size"] == S
    first = sidecar["images"][0]
    assert first["basename"] == "img_000" and first["file_name"] == "img_000.png"
    assert (first["width"], first["height"], first["resized_width"], first["resized_height"]) == (w, h, rw, rh)
    assert first["input_size"] == S and first["scale"] == pytest.approx(scale)
    assert first["outputs"] == [f"img_000_{i}.bin" for i in range(4)]

    # 5 images through 4 shared-memory slots, batches of 2: same bytes as preprocessing in this process
    run_inference(model_path, image_dir, tmp_path, "inline", batch_size=3, workers=0, progress=False)
    for path in sorted(out.glob("*.bin")):
        assert path.read_bytes() == (tmp_path / "inline" / path.name).read_bytes(), path.name

    saved = json.loads((tmp_path / "result_summary.json").read_text())
    assert saved["count"] == len(BOX_IMAGES) and saved["batchsize"] == 2
    stats = saved["NPU_compute_time"]
    assert set(stats) == {"min", "max", "mean", "median", "percentile(99%)"}
    assert saved["throughput"] == pytest.approx(1000 * 2 / stats["mean"])
    assert saved["e2e"]["images_per_s"] > 0


def test_resume_skips_complete_outputs_and_redoes_deleted(tmp_path, dataset, model_path):
    image_dir, _, _ = dataset
    run_inference(model_path, image_dir, tmp_path, "r", workers=0, progress=False)
    out = tmp_path / "r"
    files = sorted(p for p in out.iterdir() if p.suffix == ".bin")
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    again = run_inference(model_path, image_dir, tmp_path, "r", workers=0, progress=False)
    assert again["count"] == 0 and again["skipped"] == len(BOX_IMAGES)
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    # the sidecar still describes every image
    assert len(json.loads((out / "images.json").read_text())["images"]) == len(BOX_IMAGES)

    (out / "img_002_3.bin").unlink()
    third = run_inference(model_path, image_dir, tmp_path, "r", workers=0, progress=False)
    assert third["count"] == 1 and third["skipped"] == len(BOX_IMAGES) - 1
    assert (out / "img_002_3.bin").exists()
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in files if not p.name.startswith("img_002"))


def test_other_model_in_the_folder_redoes_everything(tmp_path, dataset, model_path):
    image_dir, _, _ = dataset
    run_inference(model_path, image_dir, tmp_path, "r", workers=0, progress=False)
    other = build_fake_model(tmp_path / "k20.onnx", layout="end2end", canvas_side=S, rows=20)
    summary = run_inference(other, image_dir, tmp_path, "r", workers=0, progress=False)
    assert summary["count"] == len(BOX_IMAGES) and summary["skipped"] == 0
    assert (tmp_path / "r" / "img_000_0.bin").stat().st_size == 20 * 16


def test_npy_and_legacy_names(tmp_path, dataset, model_path):
    image_dir, _, _ = dataset
    run_inference(model_path, image_dir, tmp_path, "n", outfmt="NPY", legacy_names=True, workers=0, progress=False)
    names = sorted(p.name for p in (tmp_path / "n").glob("img_000_*"))
    assert names == [f"img_000_{i}.npy" for i in (1, 2, 3, 4)]
    labels = np.load(tmp_path / "n" / "img_000_2.npy")
    assert labels.dtype == np.int32 and labels.shape == (10,)


def test_bin_folder_and_info_list(tmp_path, dataset, model_path):
    from retinamask.data.preprocess import preprocess_images

    image_dir, _, _ = dataset
    info = tmp_path / "set.info"
    preprocess_images(image_dir, tmp_path / "bins", info, resize=SeedResize(S), workers=1, progress=False)
    from_images = run_inference(model_path, image_dir, tmp_path, "a", workers=0, progress=False)
    from_bins = run_inference(model_path, tmp_path / "bins", tmp_path, "b", batch_size=3, progress=False)
    from_info = run_inference(model_path, info, tmp_path, "c", progress=False)
    assert from_images["count"] == from_bins["count"] == from_info["count"] == len(BOX_IMAGES)
    for name in ("img_001_0.bin", "img_004_3.bin"):
        reference = (tmp_path / "a" / name).read_bytes()
        assert (tmp_path / "b" / name).read_bytes() == reference
        assert (tmp_path / "c" / name).read_bytes() == reference
    bins_sidecar = json.loads((tmp_path / "b" / "images.json").read_text())["images"][0]
    assert bins_sidecar["basename"] == "img_000" and "width" not in bins_sidecar
    info_sidecar = json.loads((tmp_path / "c" / "images.json").read_text())["images"][0]
    assert info_sidecar["file_name"] == "img_000.png" and info_sidecar["width"] == BOX_IMAGES[0][1]

    # evaluate needs no image geometry from a bare .bin run (the annotations and the model give it),
    # and takes the preprocess sidecar as its image list too
    from retinamask.apps.evaluate import evaluate_outputs

    _, ann_file, _ = dataset
    for results_dir, images_path in ((tmp_path / "b", None), (tmp_path / "a", tmp_path / "set.info.json")):
        evaluation = evaluate_outputs(
            results_dir, ann_file, images_path=images_path, output_path=tmp_path / "e.txt", workers=1, progress=False
        )
        assert evaluation["failed"] == [] and evaluation["images_evaluated"] == len(BOX_IMAGES)
        assert evaluation["stats"]["segm"]["AP50"] == pytest.approx(1.0)


def test_bins_of_another_input_size_are_refused(tmp_path, model_path):
    (tmp_path / "bins").mkdir()
    np.zeros((1, 3, 64, 64), np.float32).tofile(tmp_path / "bins" / "a.bin")
    with pytest.raises(InputError, match=r"\[1, 3, 64, 64\].*96"):
        run_inference(model_path, tmp_path / "bins", tmp_path, "x", progress=False)


def test_bad_items_are_listed_and_the_rest_processed(tmp_path, dataset, model_path, capsys):
    image_dir, _, _ = dataset
    images = tmp_path / "images"
    images.mkdir()
    for path in image_dir.iterdir():
        (images / path.name).write_bytes(path.read_bytes())
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (images / "img_001.webp").write_bytes((image_dir / "img_001.png").read_bytes())  # same basename

    code = main(
        [
            "infer",
            "--model",
            str(model_path),
            "--input",
            str(images),
            "--output",
            str(tmp_path),
            "--output_dirname",
            "res",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "img_001.webp" in err
    summary = json.loads((tmp_path / "res_summary.json").read_text())
    assert summary["count"] == len(BOX_IMAGES)
    assert sorted(f["file"].rsplit("/", 1)[1] for f in summary["failed"]) == ["broken.png", "img_001.webp"]
    assert all(f["cause"] for f in summary["failed"])

    code = main(
        [
            "infer",
            "--model",
            str(model_path),
            "--input",
            str(images),
            "--output",
            str(tmp_path),
            "--output-dirname",
            "strict",
            "--strict",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 2
    assert "img_001.webp" in capsys.readouterr().err


def test_cli_prints_an_ais_bench_like_summary(tmp_path, dataset, model_path, capsys):
    image_dir, _, _ = dataset
    code = main(
        [
            "infer",
            "--model",
            str(model_path),
            "--input",
            str(image_dir),
            "--output",
            str(tmp_path),
            "--output_dirname",
            "cli",
            "--batchsize",
            "2",
            "--outfmt",
            "npy",
            "--backend",
            "openvino",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "openvino-cpu-fp32" in out and "throughput 1000*batchsize(2)" in out and "percentile(99%)" in out
    assert len(list((tmp_path / "cli").glob("*.npy"))) == 4 * len(BOX_IMAGES)


def test_model_errors_exit_2(tmp_path, dataset, capsys):
    image_dir, _, _ = dataset
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    assert main(["infer", "--model", str(bad), "--input", str(image_dir), "--output", str(tmp_path)]) == 2
    assert "not an ONNX model" in capsys.readouterr().err
    bare = build_fake_model(tmp_path / "bare.onnx", metadata=False)
    assert main(["infer", "--model", str(bare), "--input", str(image_dir), "--output", str(tmp_path)]) == 2
    assert "--layout" in capsys.readouterr().err
    code = main(
        [
            "infer",
            "--model",
            str(bare),
            "--layout",
            "end2end",
            "--input",
            str(image_dir),
            "--output",
            str(tmp_path),
            "--output_dirname",
            "bare",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
