"""Resize policies (retinamask/core/geometry.py): the canvases, the per-image geometry, the mapping back
and the metadata round trip. Torch-free."""

import json

import numpy as np
import pytest

from retinamask.core.geometry import boxes_to_image
from retinamask.core.resize import (
    BucketResize,
    OriginalResize,
    SeedResize,
    default_buckets,
    make_policy,
    parse_canvases,
    policy_from_dict,
    policy_from_metadata,
    policy_named,
)
from retinamask.data.transforms import policy_preprocess, seed_preprocess, upstream_preprocess

SIZES = [
    (480, 640),
    (640, 480),
    (256, 320),
    (224, 352),
    (300, 300),
    (500, 1400),
    (1400, 500),
    (37, 1000),
    (800, 1066),
    (1333, 800),
    (427, 640),
    (612, 612),
]


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("hw", [(480, 640), (256, 320), (224, 352), (97, 131)])
def test_original_policy_is_the_original_transform_bit_exact(hw):
    image = _image(*hw)
    expected, resized = upstream_preprocess(image, 800, 1333)
    tensor, geometry = policy_preprocess(image, OriginalResize(800, 1333))
    assert geometry.resized_hw == resized and geometry.canvas_hw == expected.shape[1:]
    assert tensor.dtype == expected.dtype and np.array_equal(tensor, expected)


@pytest.mark.parametrize("hw", [(480, 640), (256, 320), (570, 300), (1344, 1344)])
def test_seed_policy_is_the_seed_transform_bit_exact(hw):
    image = _image(*hw, seed=1)
    expected, scale, resized = seed_preprocess(image, 1344)
    tensor, geometry = policy_preprocess(image, SeedResize(1344))
    assert geometry.resized_hw == resized and geometry.canvas_hw == (1344, 1344)
    assert geometry.seed_scale == scale and np.array_equal(tensor, expected)


def test_original_canvas_is_the_resized_image_padded_to_32():
    policy = OriginalResize(800, 1333)
    assert policy.geometry(480, 640).resized_hw == (800, 1066)
    assert policy.geometry(480, 640).canvas_hw == (800, 1088)
    assert policy.geometry(256, 320).canvas_hw == (800, 1024)  # the reference image: 800 x 1000
    for h, w in SIZES:
        g = policy.geometry(h, w)
        assert all(c % 32 == 0 and 0 <= c - r < 32 for c, r in zip(g.canvas_hw, g.resized_hw))
        assert min(g.resized_hw) <= 800 and max(g.resized_hw) <= 1333


def test_default_buckets_cover_every_aspect_with_the_smallest_canvas():
    canvases = default_buckets(800, 1333)
    # landscape classes: up to 4:3 -> 800 x ceil32(1066.7); up to 16:9 -> 800 x ceil32(1333);
    # wider -> ceil32(1333 * 9 / 16 = 749.8) x 1344; and each one's portrait mirror
    assert set(canvases) == {(800, 1088), (1088, 800), (800, 1344), (1344, 800), (768, 1344), (1344, 768)}
    policy = BucketResize(800, 1333)
    original = OriginalResize(800, 1333)
    rng = np.random.default_rng(0)
    sizes = SIZES + [tuple(int(v) for v in rng.integers(16, 3000, 2)) for _ in range(300)]
    for h, w in sizes:
        g, exact = policy.geometry(h, w), original.geometry(h, w)
        assert g.resized_hw == exact.resized_hw  # the same resize: only the padding differs
        holding = [c for c in canvases if c[0] >= g.resized_hw[0] and c[1] >= g.resized_hw[1]]
        if not holding:  # beyond ~20:1 the original's rounding passes max_size: the exact canvas
            assert max(g.resized_hw) > 1344 and g.canvas_hw == exact.canvas_hw
            continue
        assert g.canvas_hw in canvases
        assert g.canvas_hw[0] * g.canvas_hw[1] == min(c[0] * c[1] for c in holding)
    # a 4:3 image gets its exact canvas; a square one the 4:3 bucket
    assert policy.geometry(480, 640).canvas_hw == (800, 1088)
    assert policy.geometry(500, 500).canvas_hw in ((800, 1088), (1088, 800))


def test_shipped_model_sizes_give_square_and_narrower_buckets():
    assert set(default_buckets(448, 448)) == {(448, 448), (352, 448), (448, 352), (256, 448), (448, 256)}


def test_buckets_refuse_canvases_that_cannot_hold_an_image_or_are_not_multiples_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        BucketResize(800, 1333, canvases=[(800, 1000)])
    # an image no bucket holds gets its exact canvas
    assert BucketResize(800, 1333, canvases=[(800, 1088)]).geometry(1000, 300).canvas_hw == (1344, 416)
    assert parse_canvases("800x1088, 1088x800") == ((800, 1088), (1088, 800))
    with pytest.raises(ValueError, match="HxW"):
        parse_canvases("800*1088")


def test_boxes_map_back_per_axis_as_the_original():
    g = OriginalResize(800, 1333).geometry(480, 640)  # resized 800 x 1066: scales 1.6667 / 1.6656
    boxes = np.array([[10.0, 20.0, 1065.0, 799.0], [-3.0, 5.5, 30.25, 40.0]], np.float32)
    # BoxList.resize: float32 boxes times the float32 of (original / resized) per axis
    ratios = np.array([640 / 1066, 480 / 800] * 2, np.float32)
    expected = boxes * ratios
    assert expected.dtype == np.float32
    assert np.array_equal(g.boxes_to_image(boxes, clip=False), expected)
    clipped = expected.copy()
    clipped[:, 0::2] = expected[:, 0::2].clip(0, 639)  # [0, w - 1] x [0, h - 1]
    clipped[:, 1::2] = expected[:, 1::2].clip(0, 479)
    assert np.array_equal(g.boxes_to_image(boxes), clipped)
    assert np.array_equal(boxes_to_image(boxes, (480, 640), (800, 1066)), clipped)  # the one function
    assert g.boxes_to_image(boxes)[0].tolist() == [np.float32(10 * ratios[0]), np.float32(20 * ratios[1]), 639, 479]
    assert g.boxes_to_image(boxes, clip=False)[0, 3] > 479  # the original does not clip again
    assert SeedResize().clip_to_image and not OriginalResize().clip_to_image


def test_policies_round_trip_through_onnx_metadata():
    for policy in (
        SeedResize(1344),
        OriginalResize(800, 1333),
        BucketResize(448, 448),
        BucketResize(800, 1333, canvases=[(800, 1088), (1088, 800)]),
    ):
        metadata = policy.to_metadata()
        assert list(metadata) == ["retinamask.resize"]
        json.loads(metadata["retinamask.resize"])
        assert policy_from_metadata(metadata) == policy
        assert policy_from_dict(policy.to_dict()) == policy
    # square models exported before resize policies: input_size only, or nothing
    assert policy_from_metadata({"retinamask.input_size": "1344"}) == SeedResize(1344)
    assert policy_from_metadata({}) is None
    with pytest.raises(ValueError, match="not a resize policy"):
        policy_from_metadata({"retinamask.resize": '{"policy": "stretch"}'})


def test_a_dynamic_models_policy_runs_as_any_other_with_the_same_sizes():
    original = OriginalResize(800, 1333)
    assert policy_named(original, "buckets") == BucketResize(800, 1333)
    assert policy_named(original, "seed") == SeedResize(1344)
    assert policy_named(BucketResize(448, 448), "original") == OriginalResize(448, 448)
    assert policy_named(original, None) is original
    with pytest.raises(ValueError):
        policy_named(SeedResize(1344), "original")
    assert make_policy("seed", 800, 1333) == SeedResize(1344)
    with pytest.raises(ValueError, match="one of"):
        make_policy("stretch")
