"""`retinamask preprocess` and the .info / .bin readers, on generated images."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinamask.cli import main
from retinamask.core.errors import EXIT_BAD_INPUT, EXIT_ITEMS_FAILED, EXIT_OK, InputError
from retinamask.core.resize import SeedResize
from retinamask.data.preprocess import preprocess_images
from retinamask.data.transforms import seed_preprocess
from retinamask.formats.bins import bin_nbytes, read_bin, read_info
from retinamask.formats.images import load_image_rgb

SIZE = 64  # a small input size keeps the batch fast; the 1344 layout has its own test

GOOD = {
    "wide rgb.jpg": (40, 100),  # (h, w) of the stored pixels
    "gray.png": (50, 30),
    "rgba.png": (20, 20),
    "palette.png": (16, 24),
    "sixteen.png": (30, 40),
    "cmyk.jpg": (24, 32),
    "exif_rotated.jpg": (20, 60),
    "café ü 猫.png": (33, 17),
    "tiny.png": (1, 1),
}
BAD = {
    "empty.jpg": "empty file (0 bytes)",
    "truncated.jpg": "truncated",
    "text.jpg": "not an image",
}


def _random_rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _make_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_random_rgb(*GOOD["wide rgb.jpg"], 1)).save(folder / "wide rgb.jpg")
    Image.fromarray(_random_rgb(*GOOD["gray.png"], 2)[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([_random_rgb(20, 20, 3), np.full((20, 20), 7, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(_random_rgb(16, 24, 4)).convert("P").save(folder / "palette.png")
    Image.fromarray(np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50).save(folder / "sixteen.png")
    Image.new("CMYK", (32, 24), (10, 200, 30, 5)).save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(_random_rgb(20, 60, 5)).save(folder / "exif_rotated.jpg", exif=exif)
    Image.fromarray(_random_rgb(33, 17, 6)).save(folder / "café ü 猫.png")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "tiny.png")
    (folder / "empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(_random_rgb(64, 64, 7)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[:500])
    (folder / "text.jpg").write_text("not a picture\n")
    (folder / "readme.txt").write_text("ignored: not an image extension\n")
    return folder


@pytest.fixture
def image_dir(tmp_path):
    return _make_images(tmp_path / "images dir é")


def _cli(*args):
    return main(["preprocess", *map(str, args)])


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(Path(folder).glob("*.bin"))}


def test_cli_batch_good_and_bad_images(image_dir, tmp_path, capsys):
    bins, info = tmp_path / "out bins", tmp_path / "list.info"
    code = _cli(
        "--image_src_path",
        image_dir,
        "--bin_file_path",
        bins,
        "--bin_info_name",
        info,
        "--input_size",
        SIZE,
        "--workers",
        2,
    )
    assert code == EXIT_ITEMS_FAILED
    err = capsys.readouterr().err
    for name, cause in BAD.items():
        lines = [line for line in err.splitlines() if name in line and cause in line]
        assert len(lines) == 2, (name, err)  # reported when met, and again in the summary

    good_names = sorted(GOOD)
    assert sorted(p.name for p in bins.iterdir()) == sorted(Path(n).stem + ".bin" for n in good_names)
    lines = info.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(GOOD)
    for index, (line, name) in enumerate(zip(lines, good_names)):
        h, w = GOOD[name]
        assert line == f"{index} {os.path.join(str(bins), Path(name).stem + '.bin')} {w} {h}"

    records = read_info(info)
    assert [r.file_name for r in records] == good_names
    for record in records:
        h, w = GOOD[record.file_name]
        assert (record.width, record.height) == (w, h)
        assert record.bin_path.stat().st_size == SIZE * SIZE * 3 * 4
        expected, scale, (rh, rw) = seed_preprocess(load_image_rgb(image_dir / record.file_name), SIZE)
        np.testing.assert_array_equal(read_bin(record.bin_path, SIZE)[0], expected)
        assert (record.scale, record.resized_height, record.resized_width) == (scale, rh, rw)
        assert record.canvas_side == SIZE and record.name == Path(record.file_name).stem

    sidecar = json.loads((tmp_path / "list.info.json").read_text(encoding="utf-8"))
    assert sidecar["input_size"] == SIZE and sidecar["tensor"]["shape"] == [1, 3, SIZE, SIZE]
    assert {f["file_name"]: f["cause"] for f in sidecar["failed"]}.keys() == BAD.keys()
    wide = next(e for e in sidecar["images"] if e["file_name"] == "wide rgb.jpg")
    assert (wide["width"], wide["height"], wide["resized_width"], wide["resized_height"]) == (100, 40, 64, 25)
    assert wide["scale"] == SIZE / 100


def test_strict_stops_at_first_bad_image(image_dir, tmp_path, capsys):
    info = tmp_path / "s.info"
    code = _cli(
        "--image-src-path",
        image_dir,
        "--bin-file-path",
        tmp_path / "b",
        "--bin-info-name",
        info,
        "--input-size",
        SIZE,
        "--workers",
        1,
        "--strict",
    )
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "empty.jpg" in err and "empty file (0 bytes)" in err  # first bad one in name order
    assert "truncated.jpg" not in err
    assert not info.exists()


def test_all_good_exit_zero_and_resume_keeps_existing_bins(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for i, (h, w) in enumerate([(30, 50), (50, 30), (8, 8)]):
        Image.fromarray(_random_rgb(h, w, i)).save(images / f"{i:012d}.jpg")
    bins, info = tmp_path / "bins", tmp_path / "x.info"
    args = (
        "--image_src_path",
        images,
        "--bin_file_path",
        bins,
        "--bin_info_name",
        info,
        "--input_size",
        SIZE,
        "--workers",
        1,
    )
    assert _cli(*args) == EXIT_OK
    first = _mtimes(bins)
    first_info = info.read_text()

    summary = preprocess_images(images, bins, info, resize=SeedResize(SIZE), workers=1)
    assert (summary["written"], summary["resumed"], summary["failed"]) == (0, 3, [])
    assert _mtimes(bins) == first
    assert info.read_text() == first_info

    # a partial .bin cannot be a finished one: redone; a newer image: redone
    (bins / "000000000000.bin").write_bytes(b"\0" * 100)
    newer = first["000000000001.bin"] + 10**9
    os.utime(images / "000000000001.jpg", ns=(newer, newer))
    summary = preprocess_images(images, bins, info, resize=SeedResize(SIZE), workers=1)
    assert (summary["written"], summary["resumed"]) == (2, 1)
    assert _mtimes(bins)["000000000002.bin"] == first["000000000002.bin"]
    assert (bins / "000000000000.bin").stat().st_size == bin_nbytes(SIZE)
    assert info.read_text() == first_info

    # other settings recorded in the sidecar: nothing is kept
    summary = preprocess_images(images, bins, info, resize=SeedResize(SIZE), workers=1, mean=(0, 0, 0))
    assert (summary["written"], summary["resumed"]) == (3, 0)


def test_default_input_size_gives_the_seed_byte_layout(tmp_path, reference_dir):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "A.png").write_bytes((reference_dir / "image_A_256x320.png").read_bytes())
    summary = preprocess_images(images, tmp_path / "bins", tmp_path / "a.info", workers=1)
    bin_path = tmp_path / "bins" / "A.bin"
    assert bin_path.stat().st_size == 1344 * 1344 * 3 * 4
    assert summary["records"][0]["scale"] == 1344 / 320
    assert (summary["records"][0]["resized_height"], summary["records"][0]["resized_width"]) == (1075, 1344)
    tensor = np.fromfile(bin_path, dtype=np.float32).reshape(1, 3, 1344, 1344)
    assert not tensor[:, :, 1075:, :].any()


def test_colliding_output_names_are_reported(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (4, 4)).save(images / "same.jpg")
    Image.new("RGB", (4, 4)).save(images / "same.png")
    summary = preprocess_images(images, tmp_path / "b", tmp_path / "c.info", resize=SeedResize(SIZE), workers=1)
    assert [r["file_name"] for r in summary["records"]] == ["same.jpg"]
    assert summary["failed"][0]["file"].endswith("same.png") and "same.bin" in summary["failed"][0]["cause"]


def test_no_images_and_bad_settings_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        preprocess_images(tmp_path / "empty", tmp_path / "b", tmp_path / "i.info")
    assert _cli("--image_src_path", tmp_path / "missing", "--bin_info_name", tmp_path / "i.info") == EXIT_BAD_INPUT
    with pytest.raises(InputError, match="workers"):
        preprocess_images(tmp_path / "empty", tmp_path / "b", tmp_path / "i.info", workers=0)


# --------------------------------------------------------------------------- readers


def _write_bins(folder, names, size=SIZE):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"\0" * bin_nbytes(size))


def test_read_info_seed_style_and_paths_with_spaces(tmp_path, monkeypatch):
    _write_bins(tmp_path / "my bins", ["000000000139.bin", "b c.bin"])
    info = tmp_path / "seed.info"
    info.write_text("0 my bins/000000000139.bin 1344 1344\n1 my bins/b c.bin 1344 1344\n\n")
    monkeypatch.chdir(tmp_path)
    records = read_info(info)
    assert [(r.index, r.name, r.width, r.height) for r in records] == [
        (0, "000000000139", 1344, 1344),
        (1, "b c", 1344, 1344),
    ]
    assert records[1].bin_path == Path("my bins/b c.bin")
    assert records[0].scale is None and records[0].file_name is None
    # relative to the .info's folder when the current directory differs
    monkeypatch.chdir(tmp_path / "my bins")
    assert read_info(info)[1].bin_path == tmp_path / "my bins" / "b c.bin"


@pytest.mark.parametrize(
    "text, message",
    [
        ("0 a.bin 10 10\n0 a.bin 10\n", "line 2: expected 'index bin_path width height'"),
        ("0 a.bin ten 10\n", "line 1: index, width and height must be integers"),
        ("0 a.bin 10 0\n", "line 1: index must be >= 0 and width, height > 0"),
        ("0 a.bin 10 10\n0 b.bin 10 10\n", "line 2: index 0 already used on line 1"),
        ("0 a.bin 10 10\n1 sub/a.bin 10 10\n", "line 2: a.bin is listed twice (also on line 1)"),
        ("0 a.bin 10 10\n1 missing.bin 10 10\n", "line 2: listed file missing.bin not found"),
    ],
)
def test_read_info_errors_name_file_and_line(tmp_path, monkeypatch, text, message):
    _write_bins(tmp_path, ["a.bin", "b.bin"])
    (tmp_path / "sub").mkdir()
    info = tmp_path / "bad.info"
    info.write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as caught:
        read_info(info)
    assert caught.value.path == str(info)
    assert message in caught.value.cause


def test_read_info_sidecar_must_agree(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (6, 4)).save(images / "x.png")
    info = tmp_path / "r.info"
    preprocess_images(images, tmp_path / "bins", info, resize=SeedResize(SIZE), workers=1)
    line = info.read_text()
    info.write_text(line.replace(" 6 4", " 7 4"))
    with pytest.raises(InputError, match="disagrees with the sidecar"):
        read_info(info)
    (tmp_path / "r.info.json").write_text("{not json")
    with pytest.raises(InputError, match="JSON") as caught:
        read_info(info)
    assert caught.value.path.endswith("r.info.json")
    with pytest.raises(InputError, match="not found"):
        read_info(tmp_path / "missing.info")


def test_read_bin_checks_byte_size(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\0" * 1000)
    with pytest.raises(InputError) as caught:
        read_bin(path, SIZE)
    assert caught.value.path == str(path)
    assert f"expected {SIZE * SIZE * 12} bytes" in caught.value.cause and "found 1000 bytes" in caught.value.cause
    data = np.arange(3 * SIZE * SIZE, dtype=np.float32)
    data.tofile(path)
    out = read_bin(path, SIZE)
    assert out.shape == (1, 3, SIZE, SIZE) and out.dtype == np.float32
    np.testing.assert_array_equal(out.ravel(), data)
    with pytest.raises(InputError, match="not found"):
        read_bin(tmp_path / "nope.bin", SIZE)
