"""The synthetic shapes clips: determinism, exact pixels and masks, motion in and out, frame rates, CLI."""

import dataclasses
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from retinamask.cli import main
from retinamask.core.errors import RetinaMaskError
from retinamask.data.shapes_render import CATEGORIES
from retinamask.data.shapes_video import generate_shapes_videos, parse_frame_rate, parse_size, video_parameters
from retinamask.data.shapes_video_render import plan_clip, render_frame

SIZE = (128, 96)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _all_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _decode(path):
    """(stream, [(pts as seconds Fraction, rgb)]) of a clip, read back with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [
            (frame.pts * stream.time_base, frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)
        ]
        return stream.average_rate, stream.codec_context.name, stream.codec_context.pix_fmt, frames


@pytest.fixture(scope="module")
def lossless(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    paths = generate_shapes_videos(root, 2, 3, size=SIZE, frames=12, fps="12.5", lossless=True, frames_png=True)
    return paths, json.loads(paths["annotations"].read_text())


def test_same_arguments_give_identical_files_other_seed_or_split_other_clips(tmp_path):
    kwargs = dict(size=SIZE, frames=6, fps=Fraction(30000, 1001))
    generate_shapes_videos(tmp_path / "a", 2, 5, **kwargs)
    generate_shapes_videos(tmp_path / "b", 2, 5, **kwargs)
    files = _all_files(tmp_path / "a")
    assert sorted(files) == ["annotations/instances_val.json", "val/000000.mp4", "val/000001.mp4"]
    assert files == _all_files(tmp_path / "b")
    generate_shapes_videos(tmp_path / "c", 2, 6, **kwargs)
    generate_shapes_videos(tmp_path / "d", 2, 5, split="test", **kwargs)
    assert _all_files(tmp_path / "c")["val/000000.mp4"] != files["val/000000.mp4"]
    assert _all_files(tmp_path / "d")["test/000000.mp4"] != files["val/000000.mp4"]


def test_youtube_vis_document(lossless):
    paths, doc = lossless
    assert paths["annotations"] == paths["root"] / "annotations" / "instances_val.json"
    assert doc["categories"] == [{k: c[k] for k in ("id", "name", "supercategory")} for c in CATEGORIES]
    assert [v["id"] for v in doc["videos"]] == [1, 2]
    video = doc["videos"][0]
    assert (video["width"], video["height"], video["length"]) == (128, 96, 12)
    assert video["file_name"] == "val/000000.mkv" and video["frame_rate"] == "25/2"
    assert video["file_names"][3] == "val/000000/000003.png"
    assert all((paths["root"] / name).is_file() for name in video["file_names"])
    assert [a["id"] for a in doc["annotations"]] == list(range(1, len(doc["annotations"]) + 1))
    for ann in doc["annotations"]:
        assert ann["iscrowd"] == 0 and (ann["width"], ann["height"]) == (128, 96)
        assert len(ann["segmentations"]) == len(ann["bboxes"]) == len(ann["areas"]) == 12
        assert any(s is not None for s in ann["segmentations"])
        for rle, box, area in zip(ann["segmentations"], ann["bboxes"], ann["areas"]):
            assert (rle is None) == (box is None) == (area is None)
            if rle is not None:
                assert rle["size"] == [96, 128] and area == int(mask_utils.area(rle)) > 0
                assert box == pytest.approx(mask_utils.toBbox(rle).tolist())


def test_lossless_pixels_and_masks_agree_with_the_rendering(lossless):
    paths, doc = lossless
    params = doc["info"]["generator_parameters"]
    for video, clip in zip(doc["videos"], paths["clips"]):
        rate, codec, _, frames = _decode(clip)
        assert codec == "ffv1" and rate == Fraction(25, 2) and len(frames) == 12
        plan = plan_clip(params, "val", video["id"] - 1)
        rendered = [render_frame(plan, index) for index in range(12)]
        # The annotations are the shapes seen at least once, in drawing order.
        seen = [k for k in range(len(plan.shapes)) if any((labels == k + 1).any() for _, labels in rendered)]
        anns = [a for a in doc["annotations"] if a["video_id"] == video["id"]]
        assert [a["category_id"] for a in anns] == [plan.shapes[k].category_id for k in seen]
        for index, ((_, rgb), (expected_rgb, labels)) in enumerate(zip(frames, rendered)):
            np.testing.assert_array_equal(rgb, expected_rgb)  # lossless: the decoded pixels are the rendered ones
            assert (labels > 0).sum() == sum(a["areas"][index] or 0 for a in anns)
            for k, ann in zip(seen, anns):
                mask = labels == k + 1
                if ann["segmentations"][index] is None:
                    assert not mask.any()
                    continue
                np.testing.assert_array_equal(mask_utils.decode(ann["segmentations"][index]), mask)
                if mask.sum() >= 30:  # the mask's pixels are the shape's colour (shading and noise aside)
                    assert np.abs(rgb[mask].mean(axis=0) - plan.shapes[k].colour).max() < 25


def test_objects_enter_leave_and_occlude(tmp_path):
    paths = generate_shapes_videos(tmp_path, 3, 1, size=(160, 120), frames=20, fps=10)
    doc = json.loads(paths["annotations"].read_text())
    present = [[s is not None for s in a["segmentations"]] for a in doc["annotations"]]
    assert any(not p[0] and p[-1] for p in present)  # entering
    assert any(p[0] and not p[-1] for p in present)  # leaving

    occluded = 0
    params = doc["info"]["generator_parameters"]
    for index in range(3):
        plan = plan_clip(params, "val", index)
        for k, shape in enumerate(plan.shapes):
            alone = dataclasses.replace(plan, shapes=[shape])
            for frame in range(0, 20, 2):
                visible = (render_frame(plan, frame)[1] == k + 1).sum()
                occluded += visible < (render_frame(alone, frame)[1] == 1).sum()
    assert occluded > 0


@pytest.mark.parametrize("fps, rate", [("12.5", Fraction(25, 2)), ("30000/1001", Fraction(30000, 1001))])
def test_mp4_frame_count_rate_and_timestamps(tmp_path, fps, rate):
    # More frames than x264's lookahead: frames after the muxer has written its header keep their timing.
    paths = generate_shapes_videos(tmp_path, 1, 0, size=(64, 64), frames=60, fps=fps)
    average_rate, codec, pix_fmt, frames = _decode(paths["clips"][0])
    assert (codec, pix_fmt, average_rate) == ("h264", "yuv420p", rate)
    assert [t for t, _ in frames] == [Fraction(i) / rate for i in range(60)]
    doc = json.loads(paths["annotations"].read_text())
    assert Fraction(str(doc["videos"][0]["frame_rate"])) == rate


def test_rerun_skips_a_current_split_and_force_rewrites(tmp_path):
    first = generate_shapes_videos(tmp_path, 1, 0, size=SIZE, frames=3)
    assert not first["skipped"]
    assert generate_shapes_videos(tmp_path, 1, 0, size=SIZE, frames=3)["skipped"]
    assert not generate_shapes_videos(tmp_path, 1, 0, size=SIZE, frames=4)["skipped"]
    assert not generate_shapes_videos(tmp_path, 1, 0, size=SIZE, frames=4, force=True)["skipped"]


def test_parsers_and_bad_parameters():
    assert parse_frame_rate("12.5") == Fraction(25, 2)
    assert parse_frame_rate("30000/1001") == Fraction(30000, 1001)
    assert parse_frame_rate(25) == 25
    assert parse_size("320x240") == (320, 240)
    for bad in ("0", "-5", "x", "1/0", "1000"):
        with pytest.raises(RetinaMaskError):
            parse_frame_rate(bad)
    with pytest.raises(RetinaMaskError):
        parse_size("320")
    with pytest.raises(RetinaMaskError, match="even"):
        video_parameters(0, (129, 96), 5, 25)
    assert video_parameters(0, (129, 96), 5, 25, lossless=True)["width"] == 129
    with pytest.raises(RetinaMaskError):
        video_parameters(-1, SIZE, 5, 25)


def test_cli(tmp_path, capsys):
    out = tmp_path / "clips"
    argv = ["data", "shapes", "--video", "--out", str(out), "--num-videos", "1", "--frames", "4"]
    argv += ["--fps", "30000/1001", "--size", "128x96", "--split-name", "test"]
    assert main(argv) == 0
    assert "written" in capsys.readouterr().out
    doc = json.loads((out / "annotations" / "instances_test.json").read_text())
    assert doc["videos"][0]["frame_rate"] == "30000/1001" and (out / "test" / "000000.mp4").is_file()
    assert main(argv) == 0
    assert "up to date" in capsys.readouterr().out
    for extra in (["--fps", "zero"], ["--size", "127x96"], ["--num-videos", "0"], ["--train-images", "3"]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "shapes", "--video", "--out", str(out)])  # --num-videos is required
    assert exit_info.value.code == 2
