"""Bad input through the real commands: one line per failure naming the file and the cause, batches
that go on past bad items (exit 1, or 2 at the first with --strict), atomic outputs, and runs that
resume after an interruption. Every row of docs/errors.md points at a test here or in the module
tests it names.

Models are the contract-conforming fakes of test_runtime_fakes (S = 64) and, for the PyTorch commands,
the tiny R-50 variant of test_checkpoint_config, so the whole module stays cheap on a small CPU.
"""

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinamask.cli import main
from retinamask.core.errors import EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR, EXIT_ITEMS_FAILED, EXIT_OK
from test_runtime_fakes import build_fake_model, make_box_dataset
from tiny_model import TINY_OPTS

S = 64
REPO = Path(__file__).resolve().parent.parent
CONFIG = "retinanet_mask_R-50-FPN_2x_adjust_std011_ms"


# --------------------------------------------------------------------------- helpers


def _cli(*args):
    return main([str(a) for a in args])


def _lines_about(text, name):
    return [line for line in text.splitlines() if name in line]


def _error_line(err):
    """The one ``error: <file>: <cause>`` line a failed command prints (log lines may precede it)."""
    assert "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    return errors[0]


def _assert_one_line_each(err, expected_causes):
    """Every bad file is reported, each report is one line holding its cause, and nothing is a traceback."""
    assert "Traceback" not in err
    for name, cause in expected_causes.items():
        lines = _lines_about(err, name)
        assert lines, f"{name} not reported in:\n{err}"
        assert all(cause in line for line in lines), (name, cause, lines)


def _random_rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming_size(width, height):
    """A small file whose PNG header claims width x height (1-bit gray): Pillow's decompression-bomb
    guard refuses it when the image is opened, before any pixel is decoded."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _encoded(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


# (stored height, width) of each good image: outputs must describe them in this orientation
GOOD_IMAGES = {
    "rgb.jpg": (30, 40),
    "gray.png": (25, 20),
    "rgba.png": (16, 16),
    "palette.png": (12, 18),
    "sixteen bit.png": (20, 24),
    "cmyk.jpg": (24, 32),
    "exif rotated.jpg": (20, 60),  # orientation tag 6 ("rotate 90 to display") is ignored
    "café 猫.png": (17, 33),
    "one pixel.png": (1, 1),
}
BAD_IMAGES = {
    "empty.jpg": "empty file (0 bytes)",
    "truncated.jpg": "truncated image data",
    "cut in half.png": "truncated image data",
    "corrupt.png": "corrupt or unreadable image data",
    "text.png": "not an image Pillow can decode",
    "bomb.png": "refused as a possible decompression bomb",
}


def _make_image_zoo(folder):
    folder.mkdir(parents=True)
    Image.fromarray(_random_rgb(30, 40, 1)).save(folder / "rgb.jpg")
    Image.fromarray(_random_rgb(25, 20, 2)[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([_random_rgb(16, 16, 3), np.full((16, 16), 9, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(_random_rgb(12, 18, 4)).convert("P").save(folder / "palette.png")
    Image.fromarray(np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 97).save(folder / "sixteen bit.png")
    Image.new("CMYK", (32, 24), (0, 200, 200, 0)).save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_random_rgb(20, 60, 5)).save(folder / "exif rotated.jpg", exif=exif)
    Image.fromarray(_random_rgb(17, 33, 6)).save(folder / "café 猫.png")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "one pixel.png")

    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(_encoded(_random_rgb(48, 48, 7), "JPEG")[:400])
    png = _encoded(_random_rgb(48, 48, 8), "PNG")
    (folder / "cut in half.png").write_bytes(png[: len(png) // 2])
    corrupt = bytearray(png)
    corrupt[60:90] = bytes(30)  # inside the compressed pixel data: the stream no longer inflates
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    (folder / "text.png").write_text("this is not a picture\n")
    (folder / "bomb.png").write_bytes(_png_claiming_size(20000, 9000))  # 180 MP, over twice Pillow's limit
    return folder


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return _make_image_zoo(tmp_path_factory.mktemp("inputs") / "zoo dir ü 猫")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_fake_model(tmp_path_factory.mktemp("models") / "end2end.onnx", canvas_side=S)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_box_dataset(tmp_path_factory.mktemp("boxes"))


@pytest.fixture(scope="module")
def inferred(tmp_path_factory, dataset, model):
    """infer's outputs for the box dataset (5 images), made once."""
    image_dir, _, _ = dataset
    root = tmp_path_factory.mktemp("inferred")
    assert (
        _cli(
            "infer",
            "--model",
            model,
            "--input",
            image_dir,
            "--output",
            root,
            "--output_dirname",
            "run",
            "--workers",
            0,
            "--no-progress",
        )
        == EXIT_OK
    )
    return root / "run"


def _copy_folder(source, target):
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())
    return target


# --------------------------------------------------------------------------- images


def test_images_through_preprocess(zoo, tmp_path, capsys):
    bins, info = tmp_path / "bins", tmp_path / "list.info"
    code = _cli(
        "preprocess",
        "--image_src_path",
        zoo,
        "--bin_file_path",
        bins,
        "--bin_info_name",
        info,
        "--input_size",
        S,
        "--workers",
        2,
    )
    err = capsys.readouterr().err
    assert code == EXIT_ITEMS_FAILED
    _assert_one_line_each(err, BAD_IMAGES)
    assert f"{len(BAD_IMAGES)} image(s) failed:" in err
    listed = {}
    for line in info.read_text(encoding="utf-8").splitlines():
        path, width, height = line.split(" ", 1)[1].rsplit(" ", 2)  # "index path width height", spaces in path
        listed[Path(path).stem] = (int(height), int(width))
        assert Path(path).stat().st_size == 3 * S * S * 4
    assert listed == {Path(name).stem: hw for name, hw in GOOD_IMAGES.items()}
    assert not list(bins.glob(".*.tmp"))


def test_images_through_infer(zoo, model, tmp_path, capsys):
    code = _cli(
        "infer",
        "--model",
        model,
        "--input",
        zoo,
        "--output",
        tmp_path,
        "--output_dirname",
        "res",
        "--workers",
        1,
        "--no-progress",
    )
    err = capsys.readouterr().err
    assert code == EXIT_ITEMS_FAILED
    _assert_one_line_each(err, BAD_IMAGES)
    sidecar = json.loads((tmp_path / "res" / "images.json").read_text())
    sizes = {entry["file_name"]: (entry["height"], entry["width"]) for entry in sidecar["images"]}
    assert sizes == GOOD_IMAGES
    for name in GOOD_IMAGES:
        assert (tmp_path / "res" / f"{Path(name).stem}_3.bin").is_file()
    failed = {Path(f["file"]).name: f["cause"] for f in sidecar["failed"]}
    assert failed.keys() == BAD_IMAGES.keys()

    code = _cli(
        "infer",
        "--model",
        model,
        "--input",
        zoo,
        "--output",
        tmp_path,
        "--output_dirname",
        "strict",
        "--workers",
        0,
        "--strict",
        "--no-progress",
    )
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert _error_line(err).startswith(f"error: {zoo / 'bomb.png'}: {BAD_IMAGES['bomb.png']}")  # first by name


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from retinamask.config import load_config
    from retinamask.modeling import build_model
    from retinamask.modeling.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, TINY_OPTS))
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pth"
    save_checkpoint(path, model)
    return path


def test_images_through_predict(zoo, checkpoint, tmp_path, capsys):
    out = tmp_path / "predicted"
    code = _cli(
        "predict",
        "--input",
        zoo,
        "--output",
        out,
        "--weights",
        checkpoint,
        "--config",
        CONFIG,
        "--input-size",
        S,
        "--opts",
        *TINY_OPTS,
    )
    err = capsys.readouterr().err
    assert code == EXIT_ITEMS_FAILED
    _assert_one_line_each(err, BAD_IMAGES)
    for name, (height, width) in GOOD_IMAGES.items():
        record = json.loads((out / f"{Path(name).stem}.json").read_text())
        assert (record["height"], record["width"]) == (height, width), name
        assert (out / f"{Path(name).stem}.png").is_file()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))

    code = _cli(
        "predict",
        "--input",
        zoo / "rgb.jpg",
        zoo / "text.png",
        "--output",
        tmp_path / "strict",
        "--weights",
        checkpoint,
        "--config",
        CONFIG,
        "--input-size",
        S,
        "--strict",
        "--opts",
        *TINY_OPTS,
    )
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert _error_line(err) == f"error: {zoo / 'text.png'}: {BAD_IMAGES['text.png']} (unrecognised file format)"


# --------------------------------------------------------------------------- .bin files and .info lists


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory, dataset):
    """The box dataset preprocessed at S: (bin folder, .info with its sidecar)."""
    image_dir, _, _ = dataset
    root = tmp_path_factory.mktemp("preprocessed")
    assert (
        _cli(
            "preprocess",
            "--image_src_path",
            image_dir,
            "--bin_file_path",
            root / "bins",
            "--bin_info_name",
            root / "boxes.info",
            "--input_size",
            S,
            "--workers",
            1,
        )
        == EXIT_OK
    )
    return root / "bins", root / "boxes.info"


def _info_lines(info):
    return info.read_text(encoding="utf-8").splitlines()


def test_info_list_with_bad_lines_and_bins(preprocessed, model, tmp_path, capsys):
    bins, info = preprocessed
    lines = _info_lines(info)  # "index path width height" for img_000 ... img_004
    short_bin = tmp_path / "img_002.bin"
    short_bin.write_bytes((bins / "img_002.bin").read_bytes()[:1000])
    edited = [
        lines[0],
        "1 only-three fields",
        lines[1],
        f"3 {short_bin} 100 100",
        f"7 {bins / 'img_999.bin'} 150 75",  # a listed file that does not exist
        f"8 {bins / 'img_000.bin'} 120 90",  # img_000 again
        lines[4],
    ]
    bad_info = tmp_path / "edited.info"
    bad_info.write_text("\n".join(edited) + "\n")  # no sidecar beside it: the listed sizes are used
    code = _cli(
        "infer", "--model", model, "--input", bad_info, "--output", tmp_path, "--output_dirname", "res", "--no-progress"
    )
    err = capsys.readouterr().err
    assert code == EXIT_ITEMS_FAILED
    _assert_one_line_each(
        err,
        {
            "line 2:": "expected 'index bin_path width height'",
            "img_002.bin:": f"expected {3 * S * S * 4} bytes (float32 [1, 3, {S}, {S}]), found 1000 bytes",
            "img_999.bin": ".bin file not found",
            "line 6:": "img_000.bin is listed twice (also on line 1)",
        },
    )
    summary = json.loads((tmp_path / "res_summary.json").read_text())
    assert summary["count"] == 3 and len(summary["failed"]) == 4
    assert sorted(p.name for p in (tmp_path / "res").glob("*_0.bin")) == [
        "img_000_0.bin",
        "img_001_0.bin",
        "img_004_0.bin",
    ]

    code = _cli(
        "infer",
        "--model",
        model,
        "--input",
        bad_info,
        "--output",
        tmp_path,
        "--output_dirname",
        "strict",
        "--strict",
        "--no-progress",
    )
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert _error_line(err) == (
        f"error: {bad_info}: line 2: expected 'index bin_path width height', got '1 only-three fields'"
    )
    assert not list((tmp_path / "strict").glob("*.bin"))

    # a file that is no .info at all stops the command
    not_info = tmp_path / "notes.info"
    not_info.write_text("shopping list\nmilk\n")
    assert _cli("infer", "--model", model, "--input", not_info, "--output", tmp_path, "--no-progress") == 2
    assert _error_line(capsys.readouterr().err).startswith(
        f"error: {not_info}: line 1: expected 'index bin_path width height', got 'shopping list' "
        "(and all 2 other lines are bad too)"
    )


def test_info_lines_are_skipped_by_evaluate_too(preprocessed, inferred, dataset, tmp_path, capsys):
    _, info = preprocessed
    _, ann_file, _ = dataset
    bad_info = tmp_path / "boxes.info"
    bad_info.write_text("\n".join(_info_lines(info)[:4] + ["4 img_004.bin wide 64"]) + "\n")
    (tmp_path / "boxes.info.json").write_bytes(info.with_name(info.name + ".json").read_bytes())
    code = _cli(
        "evaluate",
        "--infer_results_path",
        inferred,
        "--input_text_path",
        bad_info,
        "--ann_file",
        ann_file,
        "--output_path",
        tmp_path / "e.txt",
        "--workers",
        1,
        "--no-progress",
    )
    err = capsys.readouterr().err
    assert code == EXIT_ITEMS_FAILED
    _assert_one_line_each(err, {"line 5:": "index, width and height must be integers"})
    assert json.loads((tmp_path / "e.json").read_text())["images_evaluated"] == 4


def test_bins_made_for_another_input_size(tmp_path, model, dataset, capsys):
    image_dir, _, _ = dataset
    assert (
        _cli(
            "preprocess",
            "--image_src_path",
            image_dir,
            "--bin_file_path",
            tmp_path / "bins48",
            "--bin_info_name",
            tmp_path / "b48.info",
            "--input_size",
            48,
            "--workers",
            1,
        )
        == EXIT_OK
    )
    capsys.readouterr()
    assert _cli("infer", "--model", model, "--input", tmp_path / "bins48", "--output", tmp_path, "--no-progress") == 2
    assert _error_line(capsys.readouterr().err).startswith(
        f"error: {tmp_path / 'bins48' / 'img_000.bin'}: holds a float32 [1, 3, 48, 48] input, "
        f"the model takes [B, 3, {S}, {S}]"
    )
    assert _cli("infer", "--model", model, "--input", tmp_path / "b48.info", "--output", tmp_path, "--no-progress") == 2
    assert _error_line(capsys.readouterr().err) == (
        f"error: {tmp_path / 'b48.info'}: the inputs were made with the resize policy seed (long side 48, "
        f"canvas 48x48), but the model runs seed (long side {S}, canvas {S}x{S}); they do not match. Ways out: "
        f"export the model with --resize seed --input-size 48, preprocess the images with --resize seed "
        f"--input_size {S}, or stream from the images (infer --input <image folder>)"
    )


# --------------------------------------------------------------------------- inference outputs and annotations


def test_evaluate_strict_stops_at_the_first_bad_output(inferred, dataset, tmp_path, capsys):
    _, ann_file, _ = dataset
    broken = _copy_folder(inferred, tmp_path / "broken")
    scores = np.fromfile(broken / "img_001_2.bin", dtype="<f4")
    scores[3] = np.nan
    scores.tofile(broken / "img_001_2.bin")
    (broken / "img_003_0.bin").write_bytes(b"")
    code = _cli(
        "evaluate",
        "--infer_results_path",
        broken,
        "--ann_file",
        ann_file,
        "--output_path",
        tmp_path / "e.txt",
        "--workers",
        1,
        "--strict",
        "--no-progress",
    )
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert _error_line(err) == f"error: {broken / 'img_001_2.bin'}: 1 NaN/inf value(s) in scores"
    assert not (tmp_path / "e.txt").exists()


def test_outputs_of_images_absent_from_the_annotations(inferred, dataset, tmp_path, capsys):
    _, ann_file, _ = dataset
    extra = _copy_folder(inferred, tmp_path / "extra")
    (extra / "images.json").unlink()  # list the output files instead: stranger_* are among them
    for index in range(4):
        (extra / f"stranger_{index}.bin").write_bytes((extra / f"img_000_{index}.bin").read_bytes())
    code = _cli(
        "evaluate",
        "--infer_results_path",
        extra,
        "--ann_file",
        ann_file,
        "--output_path",
        tmp_path / "e.txt",
        "--input-size",
        S,
        "--workers",
        1,
        "--no-progress",
    )
    captured = capsys.readouterr()
    assert code == EXIT_ITEMS_FAILED
    _assert_one_line_each(captured.err, {"stranger": "no image stranger.* in the annotation file"})
    stats = json.loads((tmp_path / "e.json").read_text())
    assert stats["images_evaluated"] == 5 and stats["stats"]["bbox"]["AP50"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "content, cause",
    [
        ('{"images": [], "categories": []}', "not a COCO annotation file: missing key 'annotations'"),
        ('[{"id": 1}]', "not a COCO annotation file: top level is a list, not an object"),
        ('{"images": [', "annotation file is not valid JSON"),
    ],
)
def test_annotation_file_that_is_not_coco(inferred, tmp_path, capsys, content, cause):
    ann_file = tmp_path / "annotations.json"
    ann_file.write_text(content)
    code = _cli(
        "evaluate",
        "--infer_results_path",
        inferred,
        "--ann_file",
        ann_file,
        "--output_path",
        tmp_path / "e.txt",
        "--no-progress",
    )
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert _error_line(err).startswith(f"error: {ann_file}: {cause}")
    assert not (tmp_path / "e.txt").exists()


def test_coco_path_without_instances_val2017_takes_its_one_annotation_file_or_names_them(
    inferred, dataset, tmp_path, capsys
):
    # `retinamask data shapes --out d` writes d/annotations/instances_val.json: `evaluate --coco_path d` takes it
    _, ann_file, _ = dataset
    root = tmp_path / "d"
    (root / "annotations").mkdir(parents=True)
    taken = root / "annotations" / "instances_val.json"
    taken.write_bytes(Path(ann_file).read_bytes())

    def evaluate(name):
        args = ("--infer_results_path", inferred, "--coco_path", root, "--output_path", tmp_path / name)
        return _cli("evaluate", *args, "--workers", 1, "--no-progress"), capsys.readouterr().err

    code, err = evaluate("one.txt")
    assert code == EXIT_OK, err
    expected = f"note: instances_val2017.json is not in {root / 'annotations'}: using {taken} (the only annotation"
    assert [line for line in err.splitlines() if line.startswith("note: ")] == [f"{expected} file there)"]
    assert json.loads((tmp_path / "one.json").read_text())["stats"]["bbox"]["AP50"] == pytest.approx(1.0)
    # a train split beside it (what `data shapes` writes with --train-images): the val split's file is taken
    (root / "annotations" / "instances_train.json").write_text("{}")
    code, err = evaluate("two.txt")
    assert code == EXIT_OK and f"using {taken} (the only one of a val split there)" in err
    # two val splits: nothing is guessed, the message names every file
    (root / "annotations" / "instances_val_b.json").write_text("{}")
    code, err = evaluate("three.txt")
    assert code == EXIT_BAD_INPUT
    assert _error_line(err) == (
        f"error: {root / 'annotations' / 'instances_val2017.json'}: not found, and {root / 'annotations'} holds 3 "
        "annotation files (instances_train.json, instances_val.json, instances_val_b.json): name one with --ann_file"
    )
    assert not (tmp_path / "three.txt").exists()


def test_no_detections_at_all_is_map_zero_with_a_warning(inferred, dataset, tmp_path, caplog):
    _, ann_file, _ = dataset
    empty = _copy_folder(inferred, tmp_path / "empty")
    for labels in empty.glob("*_1.bin"):
        np.full(labels.stat().st_size // 4, -1, "<i4").tofile(labels)  # every row is padding
    code = _cli(
        "evaluate",
        "--infer_results_path",
        empty,
        "--ann_file",
        ann_file,
        "--output_path",
        tmp_path / "e.txt",
        "--workers",
        1,
        "--no-progress",
    )
    assert code == EXIT_OK
    # logged on stderr (pytest takes the log records over from the stream)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "no detections in any of the 5 evaluated images: AP and AR are 0 "
        "(-1 where the annotations have no object of that size)"
    ]
    stats = json.loads((tmp_path / "e.json").read_text())["stats"]
    assert stats["bbox"]["AP"] == 0.0 and stats["segm"]["AP50"] == 0.0
    assert json.loads((tmp_path / "e_coco_results.json").read_text()) == []


# --------------------------------------------------------------------------- ONNX models


@pytest.mark.parametrize("command", ["infer", "bench", "evaluate"])
def test_model_that_is_not_onnx_or_lacks_metadata(command, inferred, dataset, tmp_path, capsys):
    image_dir, ann_file, _ = dataset
    not_onnx = tmp_path / "weights.onnx"
    not_onnx.write_bytes(b"PK\x03\x04 a zip file, not a protobuf")
    bare = build_fake_model(tmp_path / "bare.onnx", canvas_side=S, metadata=False)
    rest = {
        "infer": ["--input", image_dir, "--output", tmp_path, "--no-progress"],
        "bench": ["--loop", 1, "--warmup", 0],
        "evaluate": ["--infer_results_path", inferred, "--ann_file", ann_file, "--output_path", tmp_path / "e.txt"],
    }[command]
    cases = (
        (not_onnx, "not an ONNX model (protobuf parse failed"),
        (tmp_path / "missing.onnx", "model file not found"),
        (bare, "the model's metadata lacks retinamask.layout (pass --layout end2end|seed"),
    )
    for path, cause in cases:
        assert _cli(command, "--model", path, *rest) == EXIT_BAD_INPUT
        assert _error_line(capsys.readouterr().err).startswith(f"error: {path}: {cause}")
    assert not (tmp_path / "e.txt").exists()


def test_evaluate_with_a_model_that_did_not_make_the_outputs(inferred, preprocessed, dataset, tmp_path, capsys):
    """Another model's input size or layout would map every box wrongly: refused, not a quietly wrong mAP."""
    _, info = preprocessed
    _, ann_file, _ = dataset
    bigger = build_fake_model(tmp_path / "s96.onnx", canvas_side=96)
    seed = build_fake_model(tmp_path / "seed.onnx", layout="seed", canvas_side=S)
    cases = [
        (
            bigger,
            f"the model has input_size 96, but the outputs in {inferred} came from a model with "
            f"input_size {S} (their run sidecar)",
        ),
        (seed, f"the model has layout seed, but the outputs in {inferred} came from a model with layout end2end"),
    ]
    for model_path, cause in cases:
        code = _cli(
            "evaluate",
            "--infer_results_path",
            inferred,
            "--ann_file",
            ann_file,
            "--model",
            model_path,
            "--output_path",
            tmp_path / "e.txt",
            "--no-progress",
        )
        assert code == EXIT_BAD_INPUT
        assert _error_line(capsys.readouterr().err).startswith(f"error: {model_path}: {cause}")
    # the preprocess sidecar of the .info records the input size too
    without_sidecar = _copy_folder(inferred, tmp_path / "bare")
    (without_sidecar / "images.json").unlink()
    code = _cli(
        "evaluate",
        "--infer_results_path",
        without_sidecar,
        "--input_text_path",
        info,
        "--ann_file",
        ann_file,
        "--model",
        bigger,
        "--output_path",
        tmp_path / "e.txt",
        "--no-progress",
    )
    assert code == EXIT_BAD_INPUT
    assert _error_line(capsys.readouterr().err) == (
        f"error: {bigger}: the inputs were made with the resize policy seed (long side {S}, canvas {S}x{S}), "
        "but the model runs seed (long side 96, canvas 96x96); they do not match. Ways out: export the model "
        f"with --resize seed --input-size {S}, preprocess the images with --resize seed --input_size 96, "
        "or stream from the images (infer --input <image folder>)"
    )
    assert not (tmp_path / "e.txt").exists()


# --------------------------------------------------------------------------- checkpoints and configs


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _command(name, config, weights, tmp_path, zoo):
    if name == "predict":
        return [
            "predict",
            "--input",
            zoo / "rgb.jpg",
            "--output",
            tmp_path / "out",
            "--weights",
            weights,
            "--config",
            config,
            "--input-size",
            S,
        ]
    if name == "export":
        return [
            "export",
            "--cfg_path",
            config,
            "--weight_path",
            weights,
            "--save_path",
            tmp_path / "m.onnx",
            "--input-size",
            S,
            "--no-verify",
            "--no-simplify",
        ]
    return ["train", "--config", config, "--data", tmp_path / "data", "--output", tmp_path / "run", "--max-iter", 1]


@pytest.mark.parametrize("command", ["predict", "export", "train"])
@pytest.mark.parametrize(
    "yaml_text, cause",
    [
        (
            "MODEL:\n  RESNETS:\n    BLOCK_COUNT: (1, 1, 1, 1)\n",
            "unknown config key MODEL.RESNETS.BLOCK_COUNT (did you mean BLOCK_COUNTS",
        ),
        ("RETINANET:\n  NUM_CLASSES: four\n", "RETINANET.NUM_CLASSES expects int (default 81), got str 'four'"),
        ("- just\n- a list\n", "not a config: the top level must be a mapping"),
    ],
)
def test_bad_config(command, yaml_text, cause, checkpoint, zoo, tmp_path, capsys):
    config = tmp_path / "bad config.yaml"
    config.write_text(yaml_text)
    assert _cli(*_command(command, config, checkpoint, tmp_path, zoo)) == EXIT_BAD_INPUT
    assert _error_line(capsys.readouterr().err).startswith(f"error: {config}: {cause}")
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists() and not (tmp_path / "run").exists()


def _tiny_config(tmp_path, num_classes=4):
    """The tiny model's whole effective config as a YAML file, so that the same file works for every command."""
    from retinamask.config import load_config

    path = tmp_path / f"tiny_{num_classes}_classes.yaml"
    path.write_text(load_config(CONFIG, TINY_OPTS + ["RETINANET.NUM_CLASSES", str(num_classes)]).dump())
    return path


@pytest.mark.parametrize("command", ["predict", "export"])
def test_checkpoints_that_do_not_fit(command, checkpoint, zoo, tmp_path, capsys):
    import torch

    state = torch.load(checkpoint, weights_only=True)["model"]
    classes_shape = tuple(state["rpn.head.cls_logits.weight"].shape)  # (anchors * (classes - 1), C, 3, 3)
    del state["rpn.head.cls_logits.bias"]
    state["backbone.fpn.fpn_inner2.weight"] = torch.zeros(3, 3, 1, 1)
    edited = tmp_path / "edited.pth"
    torch.save({"model": state}, edited)
    evil = tmp_path / "evil.pth"
    torch.save({"model": state, "payload": _RunsCode(tmp_path / "pwned")}, evil)
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("not a checkpoint\n")
    cases = [
        (
            tiny := _tiny_config(tmp_path),
            edited,
            "checkpoint does not match the model built from the config (wrong config for these weights?) -- "
            "missing keys: rpn.head.cls_logits.bias; shape conflicts: backbone.fpn.fpn_inner2.weight: "
            "checkpoint (3, 3, 1, 1) vs model",
        ),
        (
            _tiny_config(tmp_path, num_classes=6),
            checkpoint,
            f"shape conflicts: rpn.head.cls_logits.weight: checkpoint {classes_shape} vs model "
            f"({classes_shape[0] // 3 * 5}, {', '.join(map(str, classes_shape[1:]))})",
        ),
        (tiny, evil, "refused: the file holds pickled Python objects beyond tensors"),
        (tiny, not_a_checkpoint, "not a readable PyTorch checkpoint"),
        (tiny, tmp_path / "missing.pth", "no such checkpoint file"),
    ]
    for config, weights, cause in cases:
        assert _cli(*_command(command, config, weights, tmp_path, zoo)) == EXIT_BAD_INPUT, cause
        line = _error_line(capsys.readouterr().err)
        assert line.startswith(f"error: {weights}: ") and cause in line, (cause, line)
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------------------- exit codes, outputs, interruptions


def test_unexpected_exception_is_one_line_unless_debug(model, dataset, tmp_path, capsys, monkeypatch):
    import retinamask.data.transforms as transforms

    image_dir, _, _ = dataset

    def broken_preprocess(image, *args, **kwargs):
        if image.shape[:2] == (120, 80):  # img_001 only
            raise ZeroDivisionError("float division by zero")
        return original(image, *args, **kwargs)

    original = transforms.seed_preprocess
    monkeypatch.setattr(transforms, "seed_preprocess", broken_preprocess)
    args = ["infer", "--model", model, "--input", image_dir, "--output", tmp_path, "--workers", 0, "--no-progress"]
    # in a worker's job: that item's failure, the others go on
    assert _cli(*args, "--output_dirname", "a") == EXIT_ITEMS_FAILED
    _assert_one_line_each(
        capsys.readouterr().err,
        {"img_001.png": "cannot load this input (unexpected ZeroDivisionError: float division by zero)"},
    )
    assert len(list((tmp_path / "a").glob("*_0.bin"))) == 4

    # outside any item: one line and exit 3, the traceback only with --debug
    import retinamask.runtime.infer as infer

    def broken_summary(summary):
        raise KeyError("NPU_compute_time")

    monkeypatch.setattr(infer, "format_summary", broken_summary)
    assert _cli(*args, "--output_dirname", "b") == EXIT_INTERNAL_ERROR
    assert _error_line(capsys.readouterr().err) == (
        "error: unexpected KeyError: 'NPU_compute_time' (a bug; 'retinamask --debug infer ...' shows the traceback)"
    )
    with pytest.raises(KeyError):
        _cli("--debug", *args, "--output_dirname", "c")


def test_unwritable_output_is_one_line(inferred, dataset, tmp_path, capsys):
    _, ann_file, _ = dataset
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should be\n")
    code = _cli(
        "evaluate",
        "--infer_results_path",
        inferred,
        "--ann_file",
        ann_file,
        "--output_path",
        blocker / "e.txt",
        "--workers",
        1,
        "--no-progress",
    )
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    line = _error_line(err)
    assert line.startswith(f"error: {blocker}") and "cannot write: " in line, line


# --------------------------------------------------------------------------- kill -9 and Ctrl-C (subprocesses)

NUM_MANY = 200


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """NUM_MANY small images and an annotation file with one whole-image box per image."""
    root = tmp_path_factory.mktemp("many")
    folder = root / "images"
    folder.mkdir()
    images, annotations = [], []
    for i in range(NUM_MANY):
        height, width = 36 + i % 7, 48 + i % 11
        Image.fromarray(_random_rgb(height, width, i)).save(folder / f"im_{i:04d}.png")
        images.append({"id": i + 1, "file_name": f"im_{i:04d}.png", "width": width, "height": height})
        annotations.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 3,
                "iscrowd": 0,
                "bbox": [0.0, 0.0, float(width), float(height)],
                "area": float(width * height),
                "segmentation": [[0, 0, width - 1, 0, width - 1, height - 1, 0, height - 1]],
            }
        )
    categories = [{"id": 3, "name": "red box"}, {"id": 7, "name": "white box"}]
    ann_file = root / "annotations.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return folder, ann_file


def _retinamask(*args):
    return [sys.executable, "-m", "retinamask", *map(str, args)]


def _run_and_kill_when(command, ready, kill_signal=signal.SIGKILL, timeout=120):
    """Start ``command``, send ``kill_signal`` to it (and its process group) as soon as ``ready()``;
    returns (returncode, stderr). Fails if the command ended before it could be killed."""
    # SIGINT at its default in the child, even where this test runs with it ignored (a background
    # job of a non-interactive shell): Python only turns SIGINT into KeyboardInterrupt if it is not ignored
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the command ended before it could be interrupted: give it more work"
            assert time.monotonic() < deadline, "the command made no progress"
            time.sleep(0.002)
        os.killpg(process.pid, kill_signal)
        _, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    _wait_until_group_ended(process.pid)
    return process.returncode, err.decode("utf-8", "replace")


def _wait_until_group_ended(group, timeout=30):
    """The command's worker processes die a moment after it: a rerun must not meet them still writing."""
    deadline = time.monotonic() + timeout
    while any(
        _group_and_state(stat)[0] == group and _group_and_state(stat)[1] not in ("Z", "X")
        for stat in Path("/proc").glob("[0-9]*/stat")
    ):
        assert time.monotonic() < deadline, "the killed command's processes did not end"
        time.sleep(0.01)


def _group_and_state(stat_path):
    try:
        fields = stat_path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None, None
    return int(fields[2]), fields[0]


def _complete_images(folder):
    return len(list(folder.glob("*_3.bin"))) if folder.is_dir() else 0


def _folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_kill_9_mid_infer_then_rerun_equals_an_uninterrupted_run(many, model, tmp_path, caplog):
    images, ann_file = many

    def infer(name):
        return _retinamask(
            "infer",
            "--model",
            model,
            "--input",
            images,
            "--output",
            tmp_path,
            "--output_dirname",
            name,
            "--batchsize",
            2,
            "--workers",
            1,
            "--no-progress",
        )

    subprocess.run(infer("whole"), cwd=REPO, check=True, capture_output=True)
    killed = tmp_path / "killed"
    code, _ = _run_and_kill_when(infer("killed"), lambda: _complete_images(killed) >= 2)
    assert code == -signal.SIGKILL
    done_before_rerun = _complete_images(killed)
    assert done_before_rerun < NUM_MANY, "killed too late to test anything"
    before = {p.name: p.stat().st_mtime_ns for p in killed.glob("*_3.bin")}
    # evaluate is told that the folder is unfinished rather than quietly scoring a part of it
    assert json.loads((killed / "images.json").read_text())["finished"] is False
    assert (
        _cli(
            "evaluate",
            "--infer_results_path",
            killed,
            "--ann_file",
            ann_file,
            "--output_path",
            tmp_path / "early.txt",
            "--no-progress",
        )
        == EXIT_BAD_INPUT
    )  # its list: the 0 images done before
    assert any("the infer run that wrote it has not finished" in r.getMessage() for r in caplog.records)

    # what a writer killed mid-write leaves (the kill above may or may not have hit a write)
    from retinamask.core.fileio import _HOST_TAG

    ended = subprocess.Popen(["true"])
    ended.wait()
    (killed / f".im_0001_2.bin.{_HOST_TAG}-{ended.pid}.x1y2z3.tmp").write_bytes(b"half")

    rerun = subprocess.run(infer("killed"), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == EXIT_OK, rerun.stderr
    summary = json.loads((tmp_path / "killed_summary.json").read_text())
    assert summary["skipped"] >= done_before_rerun and summary["count"] + summary["skipped"] == NUM_MANY
    assert all(p.stat().st_mtime_ns == before[p.name] for p in killed.glob("*_3.bin") if p.name in before)

    whole, resumed = _folder_bytes(tmp_path / "whole"), _folder_bytes(killed)
    assert json.loads(resumed["images.json"])["finished"] is True
    assert len(whole) == 4 * NUM_MANY + 1  # the outputs and images.json; no temp file is left either
    assert resumed.keys() == whole.keys()
    assert [name for name in whole if resumed[name] != whole[name]] == []


def test_kill_9_mid_preprocess_then_rerun_equals_an_uninterrupted_run(many, tmp_path):
    images, _ = many

    def preprocess(name):  # S = 256: 0.8 MB per .bin, so that the run lasts long enough to be killed
        return _retinamask(
            "preprocess",
            "--image_src_path",
            images,
            "--bin_file_path",
            tmp_path / name,
            "--bin_info_name",
            tmp_path / name / "list.info",
            "--input_size",
            256,
            "--workers",
            2,
        )

    subprocess.run(preprocess("whole"), cwd=REPO, check=True, capture_output=True)
    killed = tmp_path / "killed"
    code, _ = _run_and_kill_when(preprocess("killed"), lambda: killed.is_dir() and len(list(killed.glob("*.bin"))) >= 2)
    assert code == -signal.SIGKILL
    finished = {p.name: p.stat().st_mtime_ns for p in killed.glob("*.bin")}
    assert len(finished) < NUM_MANY and not (killed / "list.info").exists()

    rerun = subprocess.run(preprocess("killed"), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == EXIT_OK, rerun.stderr
    assert f"({NUM_MANY - len(finished)} written, {len(finished)} already complete)" in rerun.stdout
    assert all(p.stat().st_mtime_ns == finished[p.name] for p in killed.glob("*.bin") if p.name in finished)
    whole, resumed = _folder_bytes(tmp_path / "whole"), _folder_bytes(killed)
    assert resumed.keys() == whole.keys()  # no temp file is left either
    assert [name for name in whole if name.endswith(".bin") and resumed[name] != whole[name]] == []
    # the list and its sidecar name the output folder ("whole" or "killed"), and differ only there
    for name in ("list.info", "list.info.json"):
        assert resumed[name] == whole[name].replace(b"/whole", b"/killed"), name


def test_kill_9_mid_evaluate_then_rerun_equals_an_uninterrupted_run(many, model, tmp_path):
    images, ann_file = many
    assert (
        _cli(
            "infer",
            "--model",
            model,
            "--input",
            images,
            "--output",
            tmp_path,
            "--output_dirname",
            "out",
            "--batchsize",
            4,
            "--workers",
            1,
            "--no-progress",
        )
        == EXIT_OK
    )

    def evaluate(name):
        return _retinamask(
            "evaluate",
            "--infer_results_path",
            tmp_path / "out",
            "--ann_file",
            ann_file,
            "--output_path",
            tmp_path / f"{name}.txt",
            "--workers",
            1,
            "--no-progress",
        )

    subprocess.run(evaluate("whole"), cwd=REPO, check=True, capture_output=True)
    parts = tmp_path / "killed_parts"
    code, _ = _run_and_kill_when(evaluate("killed"), lambda: parts.is_dir() and len(list(parts.glob("*.json"))) >= 2)
    assert code == -signal.SIGKILL
    assert not (tmp_path / "killed_coco_results.json").exists()

    rerun = subprocess.run(evaluate("killed"), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == EXIT_OK, rerun.stderr
    summary = json.loads((tmp_path / "killed.json").read_text())
    assert 2 <= summary["images_resumed"] < NUM_MANY and summary["images_evaluated"] == NUM_MANY
    for suffix in ("_coco_results.json", ".txt"):
        assert (tmp_path / f"killed{suffix}").read_bytes() == (tmp_path / f"whole{suffix}").read_bytes(), suffix
    assert not parts.exists()  # every image evaluated: the parts are gone


def test_ctrl_c_stops_with_130_and_no_tracebacks(many, model, tmp_path):
    images, _ = many
    out = tmp_path / "res"
    command = _retinamask(
        "infer",
        "--model",
        model,
        "--input",
        images,
        "--output",
        tmp_path,
        "--output_dirname",
        "res",
        "--workers",
        2,
        "--no-progress",
    )
    code, err = _run_and_kill_when(command, lambda: _complete_images(out) >= 2, kill_signal=signal.SIGINT)
    assert code == 130
    # stderr: the line saying which runtime --backend auto picked (and the sessions line where there
    # are several, the line offering a faster precision where one is measured here), then only "interrupted"
    said = ("infer: 2 sessions x ", "fp32 here; ")
    lines = [line for line in err.strip().splitlines() if not line.startswith(said)]
    assert lines[0].startswith("backend auto -> ") and lines[1:] == ["interrupted"], err


def test_a_worker_killed_mid_run_stops_infer_with_one_line(many, model, tmp_path):
    """A worker the OOM killer takes: the run stops with a clear line instead of waiting forever."""
    images, _ = many
    out = tmp_path / "res"
    process = subprocess.Popen(
        _retinamask(
            "infer",
            "--model",
            model,
            "--input",
            images,
            "--output",
            tmp_path,
            "--output_dirname",
            "res",
            "--workers",
            2,
            "--no-progress",
        ),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        while _complete_images(out) < 2:
            assert process.poll() is None, "infer ended before a worker could be killed"
            time.sleep(0.002)
        workers = _grandchildren(process.pid)  # the pool's workers are children of the forkserver
        assert workers
        os.kill(workers[0], signal.SIGKILL)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    err = err.decode()
    assert process.returncode == EXIT_BAD_INPUT, err
    assert "Traceback" not in err
    assert "a preprocessing worker process died" in err.strip().splitlines()[-1]


def _grandchildren(pid):
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    children = {p for p, parent in parents.items() if parent == pid}
    return sorted(p for p, parent in parents.items() if parent in children)
