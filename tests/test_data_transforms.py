"""Image loading and the two test-time transforms, checked against the original's
reference data (exact) and synthetic images with known content."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from retinamask.core.errors import InputError
from retinamask.data.transforms import (
    PIXEL_MEAN,
    normalize_bgr,
    pad_divisible,
    pad_to,
    resize_rgb,
    seed_preprocess,
    seed_resize_geometry,
    upstream_preprocess,
    upstream_test_size,
)
from retinamask.formats.images import list_images, load_image_rgb

MEAN_BGR = np.array(PIXEL_MEAN, dtype=np.float32)


# --------------------------------------------------------------------------- upstream vs NPZ


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((256, 320), (800, 1000)),
        ((224, 352), (800, 1257)),
        ((352, 224), (1257, 800)),
        ((480, 1000), (640, 1333)),  # long side capped: short = int(round(1333 * 480 / 1000))
        ((800, 1000), (800, 1000)),  # already the right size
        ((600, 600), (800, 800)),
    ],
)
def test_upstream_test_size(hw, expected):
    assert upstream_test_size(*hw) == expected


def test_upstream_resize_matches_reference_exactly(reference_npz):
    resized = resize_rgb(reference_npz["image_rgb_uint8"], (800, 1000))
    assert resized.dtype == np.uint8
    np.testing.assert_array_equal(resized, reference_npz["upstream_resized_rgb_uint8"])


def test_upstream_preprocess_matches_reference(reference_npz):
    ref = reference_npz
    tensor, image_size = upstream_preprocess(ref["image_rgb_uint8"])
    batched = tensor[None]
    assert batched.dtype == np.float32
    assert batched.shape == tuple(ref["upstream_input_shape"])
    assert image_size == tuple(ref["upstream_input_image_size_hw"])
    np.testing.assert_array_equal(
        batched.ravel()[ref["upstream_input_sample_flat_indices"]], ref["upstream_input_sample_values"]
    )
    # the whole tensor: float32(resized BGR) - mean in the valid region, zeros elsewhere
    h, w = image_size
    expected_valid = ref["upstream_resized_rgb_uint8"][:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
    expected_valid -= MEAN_BGR[:, None, None]
    np.testing.assert_array_equal(tensor[:, :h, :w], expected_valid)
    assert not tensor[:, h:, :].any() and not tensor[:, :, w:].any()
    # the stored statistics were reduced in float32 by torch: equal up to that rounding
    as64 = tensor.astype(np.float64)
    np.testing.assert_allclose(as64.mean((1, 2)), ref["upstream_input_channel_mean_padded"], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(as64.std((1, 2)), ref["upstream_input_channel_std_padded"], rtol=1e-6, atol=1e-4)
    valid = as64[:, :h, :w]
    np.testing.assert_allclose(valid.mean((1, 2)), ref["upstream_input_channel_mean_valid"], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(valid.std((1, 2)), ref["upstream_input_channel_std_valid"], rtol=1e-6, atol=1e-4)


def test_direct_input_matches_reference_exactly(reference_npz):
    direct = pad_divisible(normalize_bgr(reference_npz["image_rgb_uint8"]), 32)[None]
    assert direct.dtype == np.float32
    np.testing.assert_array_equal(direct, reference_npz["direct_input_bgr_minus_mean"])


def test_reference_png_loads_as_the_npz_pixels(reference_dir, reference_npz):
    np.testing.assert_array_equal(
        load_image_rgb(reference_dir / "image_A_256x320.png"), reference_npz["image_rgb_uint8"]
    )


# --------------------------------------------------------------------------- normalise / pad


def test_normalize_bgr_order_mean_and_std():
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30  # R, G, B
    out = normalize_bgr(img, mean=(1, 2, 3), std=(2, 4, 8))
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0, 0], np.float32([(30 - 1) / 2, (20 - 2) / 4, (10 - 3) / 8]))


def test_pad_to_and_pad_divisible():
    t = np.ones((3, 5, 7), np.float32)
    padded = pad_to(t, (6, 9))
    assert padded.shape == (3, 6, 9) and padded.dtype == np.float32
    assert padded[:, :5, :7].all() and not padded[:, 5:, :].any() and not padded[:, :, 7:].any()
    assert pad_divisible(t, 32).shape == (3, 32, 32)
    assert pad_divisible(np.ones((3, 64, 33), np.float32), 32).shape == (3, 64, 64)
    assert pad_divisible(t, 0) is t
    with pytest.raises(ValueError):
        pad_to(t, (4, 9))


# --------------------------------------------------------------------------- seed transform


@pytest.mark.parametrize(
    "hw, size, expected_hw",
    [
        ((100, 200), 400, (200, 400)),
        ((200, 100), 400, (400, 200)),
        ((3, 5), 7, (4, 7)),
        ((480, 640), 1344, (1008, 1344)),
        ((45, 60), 1344, (1008, 1344)),  # the seed's float int() gave 1007 here
        ((570, 300), 1344, (1344, 707)),  # ... and 1343 for this long side
        ((1, 1000), 1344, (1, 1344)),  # at least one pixel
        ((1, 1), 1344, (1344, 1344)),
    ],
)
def test_seed_resize_geometry(hw, size, expected_hw):
    resized_hw, scale = seed_resize_geometry(*hw, size)
    assert resized_hw == expected_hw
    assert scale == size / max(hw)


def test_seed_preprocess_geometry_colour_order_and_padding():
    img = np.zeros((100, 200, 3), np.uint8)
    img[20:40, 50:90] = (255, 0, 0)  # a red rectangle (RGB)
    tensor, scale, resized_hw = seed_preprocess(img, canvas_side=400)
    assert tensor.shape == (3, 400, 400) and tensor.dtype == np.float32
    assert scale == 2.0 and resized_hw == (200, 400)
    red_inside = tensor[:, 42:78, 102:178]  # rectangle at rows 40..80, cols 100..180, away from the blurred edge
    np.testing.assert_array_equal(red_inside[0], -MEAN_BGR[0])  # B
    np.testing.assert_array_equal(red_inside[1], -MEAN_BGR[1])  # G
    np.testing.assert_array_equal(red_inside[2], 255 - MEAN_BGR[2])  # R
    np.testing.assert_array_equal(tensor[:, 100:200, 250:400], -MEAN_BGR[:, None, None] * np.ones((1, 100, 150)))
    # red mass lands where the rectangle scales to (the bilinear edges are symmetric)
    red = tensor[2, :200] + MEAN_BGR[2]
    rows, cols = np.nonzero(red > 127.5)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (40, 80, 100, 180)
    assert not tensor[:, 200:, :].any()  # zero padding below the resized image


def test_seed_preprocess_non_integer_scale_pads_bottom_right():
    img = np.full((30, 50, 3), 200, np.uint8)
    tensor, scale, (rh, rw) = seed_preprocess(img, canvas_side=64)
    assert (rh, rw) == (38, 64) and scale == 64 / 50
    np.testing.assert_array_equal(tensor[:, :rh, :rw], (200 - MEAN_BGR)[:, None, None] * np.ones((1, rh, rw)))
    assert not tensor[:, rh:, :].any()


# --------------------------------------------------------------------------- image loading


def _save(path, img, **kwargs):
    img.save(path, **kwargs)
    return path


def test_load_colour_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 17, 3), dtype=np.uint8)
    out = load_image_rgb(_save(tmp_path / "rgb.png", Image.fromarray(rgb)))
    assert out.dtype == np.uint8 and out.shape == (12, 17, 3)
    np.testing.assert_array_equal(out, rgb)

    gray = _save(tmp_path / "gray.png", Image.fromarray(rgb[..., 0]))
    np.testing.assert_array_equal(load_image_rgb(gray), np.repeat(rgb[..., :1], 3, axis=2))

    rgba = np.dstack([rgb, np.zeros((12, 17), np.uint8)])  # fully transparent: alpha dropped, colour kept
    np.testing.assert_array_equal(load_image_rgb(_save(tmp_path / "rgba.png", Image.fromarray(rgba))), rgb)

    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 1
    np.testing.assert_array_equal(load_image_rgb(_save(tmp_path / "pal.png", pal)), np.full((3, 4, 3), (10, 20, 30)))

    sixteen = np.array([[0, 257 * 100, 65535, 128]], np.uint16)
    path16 = _save(tmp_path / "g16.png", Image.fromarray(sixteen))
    with Image.open(path16) as opened:
        assert opened.mode.startswith("I")
    np.testing.assert_array_equal(load_image_rgb(path16)[0, :, 0], [0, 100, 255, 0])

    cmyk = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # red
    out = load_image_rgb(_save(tmp_path / "cmyk.jpg", cmyk, quality=100))
    assert out.shape == (6, 8, 3)
    assert out[..., 0].min() > 230 and out[..., 1:].max() < 25


def test_exif_orientation_is_ignored(tmp_path):
    img = np.zeros((10, 30, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path / "rotated.jpg", Image.fromarray(img), exif=exif)
    assert load_image_rgb(path).shape == (10, 30, 3)


def test_unicode_and_spaces_in_path(tmp_path):
    folder = tmp_path / "dir with spaces ü"
    folder.mkdir()
    path = _save(folder / "café 猫.jpg", Image.new("RGB", (5, 4), (1, 2, 3)))
    assert load_image_rgb(path).shape == (4, 5, 3)


def _jpeg_bytes(size=(64, 48)):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _png_bytes(size=(64, 48)):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content, cause",
    [
        ("empty.jpg", b"", "empty file (0 bytes)"),
        ("truncated.jpg", _jpeg_bytes()[:600], "truncated"),
        ("truncated.png", _png_bytes()[: len(_png_bytes()) // 2], "truncated"),
        ("text.jpg", b"this is not an image\n", "not an image"),
    ],
)
def test_load_errors_name_file_and_cause(tmp_path, name, content, cause):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        load_image_rgb(path)
    assert info.value.path == str(path)
    assert cause in info.value.cause
    assert str(path) in str(info.value)


def test_load_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image_rgb(tmp_path / "missing.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(InputError, match="directory"):
        load_image_rgb(tmp_path / "dir.jpg")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_load_unreadable_file(tmp_path):
    path = _save(tmp_path / "locked.png", Image.new("RGB", (2, 2)))
    path.chmod(0)
    with pytest.raises(InputError, match="permission denied"):
        load_image_rgb(path)


@pytest.mark.parametrize("pixels", [30 * 30, 12 * 12])  # over 2x the limit (error) / over the limit (warning)
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, pixels):
    side = int(pixels**0.5)
    path = _save(tmp_path / "big.png", Image.new("RGB", (side, side)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputError, match="decompression bomb"):
        load_image_rgb(path)


def test_truncated_data_is_an_error_even_if_pillow_is_told_to_accept_it(tmp_path, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "t.jpg"
    path.write_bytes(_jpeg_bytes()[:600])
    with pytest.raises(InputError, match="truncated"):
        load_image_rgb(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_list_images_sorted_case_insensitive(tmp_path):
    for name in ["b.JPG", "a.png", "c.Jpeg", "d.bmp", "e.WEBP", "notes.txt", "f.gif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.Jpeg", "d.bmp", "e.WEBP"]
    with pytest.raises(InputError, match="not found"):
        list_images(tmp_path / "nope")
