"""``retinamask predict`` on video files, as a user runs it: the answers equal the image path's on the
same pixels, the annotated MP4 is what browsers play, audio and timing are the source's, folders resume,
damaged and non-video files are reported and the run goes on. Clips are written by the tests (PyAV)."""

import contextlib
import http.server
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import CHROMIUM_FLAGS, chromium_path
from retinamask.cli import main
from retinamask.config.shipped import shipped_onnx_path
from video_support import gradient_frames, make_clip, predict_cli, probe, read_jsonl, top_level_boxes


def shape_frames(tmp_path, count, size=(224, 192), seed=11):
    """``count`` frames of the shapes dataset (what the shipped model knows), cropped to ``size`` (w, h)."""
    from retinamask.data.shapes import generate_shapes_dataset

    data = generate_shapes_dataset(tmp_path / "shapes", num_train=0, num_val=count, seed=seed)
    width, height = size
    frames = []
    for path in sorted(Path(data["val_images"]).iterdir()):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        canvas = np.full((height, width, 3), 127, np.uint8)
        h, w = min(height, rgb.shape[0]), min(width, rgb.shape[1])
        canvas[:h, :w] = rgb[:h, :w]
        frames.append(canvas)
    return frames


def without_track(detections):
    return [{k: v for k, v in d.items() if k != "track_id"} for d in detections]


def test_a_lossless_clip_gives_the_image_path_answers_and_a_browser_playable_mp4(tmp_path):
    frames = shape_frames(tmp_path, 6)
    images = tmp_path / "images"
    images.mkdir()
    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(images / f"frame{i}.png")
    clip = make_clip(tmp_path / "clip.mkv", frames, rate=Fraction(25, 2), codec="ffv1")

    # the clip runs on 2 sessions at once (a frame each), the images one by one on one session
    assert predict_cli("--input", images, clip, "--output", tmp_path / "out", "--sessions", "2") == 0

    records = read_jsonl(tmp_path / "out" / "clip.jsonl")
    assert [r["frame"] for r in records] == list(range(6))
    assert [r["pts"] for r in records] == pytest.approx([i / 12.5 for i in range(6)])
    found = 0
    for i, record in enumerate(records):
        image_json = json.loads((tmp_path / "out" / f"frame{i}.json").read_text())
        assert without_track(record["detections"]) == image_json["detections"]  # boxes, scores, labels, RLE
        assert all(d["track_id"] is None for d in record["detections"])
        found += len(record["detections"])
    assert found > 6  # the model saw the shapes

    video = tmp_path / "out" / "clip.mp4"
    info = probe(video)
    assert info["video"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["frames"] == 6 and Fraction(info["rate"]) == Fraction(25, 2)
    assert (info["width"], info["height"]) == (224, 192)
    boxes = top_level_boxes(video)
    assert boxes.index("moov") < boxes.index("mdat")  # +faststart: playable while downloading


def test_audio_is_copied_the_stride_divides_the_rate_and_odd_sizes_are_encoded(tmp_path):
    clip = make_clip(tmp_path / "talk.mp4", gradient_frames(20, 64, 48), rate=Fraction(25, 2), audio=True)

    assert predict_cli("--input", clip, "--output", tmp_path / "all") == 0
    assert predict_cli("--input", clip, "--output", tmp_path / "half", "--vid-stride", "2", "--no-audio") == 0

    full, half = probe(tmp_path / "all" / "talk.mp4"), probe(tmp_path / "half" / "talk.mp4")
    assert full["audio"] == "aac" and half["audio"] is None
    assert full["frames"] == 20 and half["frames"] == 10
    assert Fraction(full["rate"]) == Fraction(25, 2) and Fraction(half["rate"]) == Fraction(25, 4)
    assert abs(full["pts"][-1] + 1 / 12.5 - 20 / 12.5) <= 1 / 12.5  # as long as the source, to within a frame
    assert [r["frame"] for r in read_jsonl(tmp_path / "half" / "talk.jsonl")] == list(range(0, 20, 2))

    odd = make_clip(tmp_path / "odd.mkv", gradient_frames(5, 63, 47), codec="ffv1", rate=10)
    assert predict_cli("--input", odd, "--output", tmp_path / "odd") == 0
    info = probe(tmp_path / "odd" / "odd.mp4")  # H.264 in yuv420p needs even sides: padded by one pixel
    assert (info["width"], info["height"]) == (64, 48) and info["frames"] == 5


def test_variable_frame_rate_timestamps_are_kept_exactly(tmp_path):
    ticks = [0, 3, 4, 10, 11, 19, 30]  # in 1/30 s
    clip = make_clip(tmp_path / "vfr.mov", gradient_frames(7), codec="png", vfr_pts=ticks, time_base=Fraction(1, 30))
    source = probe(clip)["pts"]
    assert source == pytest.approx([t / 30 for t in ticks])

    assert predict_cli("--input", clip, "--output", tmp_path / "out") == 0

    assert [r["pts"] for r in read_jsonl(tmp_path / "out" / "vfr.jsonl")] == [round(s, 6) for s in source]
    assert probe(tmp_path / "out" / "vfr.mp4")["pts"] == pytest.approx(source, abs=1e-4)


def test_a_folder_of_images_videos_and_bad_files_runs_what_it_can_and_resumes(tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    make_clip(folder / "a.mov", gradient_frames(5), rate=10)  # any extension: found by probing
    make_clip(folder / "b.mkv", gradient_frames(4), codec="ffv1", rate=10)
    Image.fromarray(gradient_frames(1)[0]).save(folder / "c.png")
    (folder / "notes.txt").write_text("not media\n")  # a folder's other files are skipped
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is text, not a video\n")
    out = tmp_path / "out"

    assert predict_cli("--input", folder, fake, "--output", out) == 1
    err = capsys.readouterr().err
    assert f"{fake}:" in err and "Traceback" not in err
    assert {p.name for p in out.iterdir()} >= {"a.mp4", "a.jsonl", "b.mp4", "b.jsonl", "c.png", "c.json"}
    first = (out / "a.jsonl").stat().st_mtime_ns

    assert predict_cli("--input", folder, "--output", out) == 0  # the rerun skips complete videos
    assert "2 complete from an earlier run kept" in capsys.readouterr().out
    assert (out / "a.jsonl").stat().st_mtime_ns == first
    state = json.loads((out / "videos.json").read_text())
    assert state["a"]["complete"] and state["a"]["frames"] == 5
    # other options make other outputs: the rerun redoes the videos
    assert predict_cli("--input", folder / "a.mov", "--output", out, "--vid-stride", "2") == 0
    assert len(read_jsonl(out / "a.jsonl")) == 3


def test_a_truncated_video_keeps_the_frames_before_the_damage(tmp_path, capsys):
    clip = make_clip(tmp_path / "whole.mp4", gradient_frames(40, 64, 48), rate=20)
    # an MKV cut in the middle (a download or a copy that stopped): the frames before the cut decode
    cut = make_clip(tmp_path / "cut.mkv", gradient_frames(40, 64, 48), codec="ffv1", rate=20)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])

    code = predict_cli("--input", cut, clip, "--output", tmp_path / "out")

    err = capsys.readouterr().err
    assert code == 1 and str(cut) in err and "Traceback" not in err
    records = read_jsonl(tmp_path / "out" / "cut.jsonl")
    assert 5 < len(records) < 40 and [r["frame"] for r in records] == list(range(len(records)))
    assert probe(tmp_path / "out" / "cut.mp4")["frames"] == len(records)  # a valid MP4 of those frames
    assert len(read_jsonl(tmp_path / "out" / "whole.jsonl")) == 40  # the next source still ran


def test_results_only_writes_the_same_jsonl_without_the_mp4_and_resumes(tmp_path, capsys):
    clip = make_clip(tmp_path / "clip.mp4", shape_frames(tmp_path, 6), rate=10)
    full, results = tmp_path / "full", tmp_path / "results"
    assert predict_cli("--input", clip, "--output", full, "--track") == 0
    assert predict_cli("--input", clip, "--output", results, "--track", "--no-video") == 0
    assert "JSONL results of 1 videos (6 frames)" in capsys.readouterr().out
    assert sorted(p.name for p in results.iterdir()) == ["clip.jsonl", "videos.json"]  # no MP4, no temporary
    assert read_jsonl(results / "clip.jsonl") == read_jsonl(full / "clip.jsonl")  # the same results, tracks too
    first = (results / "clip.jsonl").stat().st_mtime_ns
    assert predict_cli("--input", clip, "--output", results, "--track", "--no-video") == 0
    assert "1 complete from an earlier run kept" in capsys.readouterr().out
    assert (results / "clip.jsonl").stat().st_mtime_ns == first
    # asked for the annotated MP4 now: the video is redone with it
    assert predict_cli("--input", clip, "--output", results, "--track") == 0
    assert probe(results / "clip.mp4")["frames"] == 6


def test_strict_stops_at_the_first_bad_input_of_any_kind(tmp_path, capsys):
    cut = make_clip(tmp_path / "cut.mkv", gradient_frames(40, 64, 48), codec="ffv1", rate=20)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    clip = make_clip(tmp_path / "whole.mp4", gradient_frames(6, 64, 48), rate=20)
    out = tmp_path / "out"
    code = predict_cli("--input", cut, clip, "--output", out, "--strict")
    err = capsys.readouterr().err
    assert code not in (0, 1) and str(cut) in err and "Traceback" not in err
    assert not (out / "whole.jsonl").exists()  # stopped there: the next video did not run
    state = json.loads((out / "videos.json").read_text())
    assert state["cut"]["error"] and not state["cut"]["complete"]
    assert probe(out / "cut.mp4")["frames"] == len(read_jsonl(out / "cut.jsonl")) > 5  # what it did is kept
    # a source that is not media at all stops it before anything runs
    fake = tmp_path / "fake.mp4"
    fake.write_text("text\n")
    assert predict_cli("--input", fake, clip, "--output", tmp_path / "out2", "--strict") not in (0, 1)
    assert f"{fake}:" in capsys.readouterr().err and not (tmp_path / "out2" / "whole.jsonl").exists()


def test_the_annotated_mp4_plays_in_chromium_and_shows_the_overlay(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    chromium = chromium_path()
    frames = shape_frames(tmp_path, 8)
    clip = make_clip(tmp_path / "shapes.mp4", frames, rate=10)
    out = tmp_path / "out"
    assert predict_cli("--input", clip, "--output", out, "--track") == 0
    (out / "index.html").write_text(
        '<body style="margin:0"><video id="v" src="shapes.mp4" muted playsinline style="width:224px;height:192px">'
        "</video></body>"
    )
    flags = [flag for flag in CHROMIUM_FLAGS if flag != "--headless"] + ["--autoplay-policy=no-user-gesture-required"]
    with static_server(out) as base, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags)
        try:
            page = browser.new_page(viewport={"width": 224, "height": 192})
            page.goto(base + "/index.html")
            page.evaluate(
                "() => new Promise((done, fail) => { const v = document.getElementById('v');"
                " v.onerror = () => fail('video error ' + (v.error && v.error.code));"
                " v.onended = () => done(); v.play().catch(fail); })"
            )
            played = page.evaluate("document.getElementById('v').currentTime")
            page.evaluate(
                "() => new Promise(done => { const v = document.getElementById('v');"
                " v.onseeked = () => requestAnimationFrame(() => requestAnimationFrame(done)); v.currentTime = 0.01; })"
            )
            page.locator("#v").screenshot(path=str(tmp_path / "shown.png"))
        finally:
            browser.close()
    assert played == pytest.approx(0.8, abs=0.11)  # 8 frames at 10 fps played to the end
    shown = np.asarray(Image.open(tmp_path / "shown.png").convert("RGB")).astype(np.int16)
    annotated = probe(out / "shapes.mp4")["rgb"][0].astype(np.int16)
    source = frames[0].astype(np.int16)
    assert np.abs(shown - annotated).mean() < 8  # the page shows the annotated frame ...
    assert np.abs(shown - source).mean() > 2 * np.abs(shown - annotated).mean()  # ... not the source's


@contextlib.contextmanager
def static_server(folder):
    """The folder over HTTP on 127.0.0.1, in a thread (no range requests: a +faststart MP4 plays without)."""
    import functools
    import threading

    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_the_python_generator_gives_the_image_path_answers_with_either_predictor(tmp_path):
    from retinamask import OnnxPredictor, predict_video

    frames = shape_frames(tmp_path, 3)
    clip = make_clip(tmp_path / "c.mkv", frames, codec="ffv1", rate=5)
    predictors = [OnnxPredictor(shipped_onnx_path(), backend="onnxruntime")]
    try:
        from retinamask.config.shipped import SHIPPED_CONFIG, SHIPPED_WEIGHTS
        from retinamask.engine.predictor import Predictor

        predictors.append(Predictor.from_config(SHIPPED_CONFIG, SHIPPED_WEIGHTS))
    except ImportError:  # no torch here: the torch-free predictor alone
        pass
    for predictor in predictors:
        results = predict_video(predictor, str(clip), track=True)
        assert not isinstance(results, list)  # a generator: one frame at a time
        for i, (result, rgb) in enumerate(zip(results, frames, strict=True)):
            alone = predictor(rgb)
            assert result.index == i and result.seconds == pytest.approx(i / 5)
            assert np.array_equal(result.detections.boxes, alone.boxes)
            assert np.array_equal(result.detections.scores, alone.scores)
            assert np.array_equal(result.detections.masks, alone.masks)
            assert result.track_ids.shape == (len(alone),)


def test_generated_clips_tracked_from_the_command_line_keep_their_identities(tmp_path):
    from pycocotools import mask as mask_api

    from retinamask.evaluation.tracking import evaluate_tracking
    from retinamask.formats.video_results import read_jsonl

    data = tmp_path / "clips"
    made = ["data", "shapes", "--video", "--out", str(data), "--num-videos", "2", "--frames", "30", "--fps", "12.5"]
    assert main(made) == 0
    out = tmp_path / "out"
    assert predict_cli("--input", data / "val", "--output", out, "--track", "--save-ytvis", "--save-mot") == 0

    truth = json.loads((data / "annotations" / "instances_val.json").read_text())
    ids = {Path(v["file_name"]).stem: v["id"] for v in truth["videos"]}
    scores = evaluate_tracking(truth, {ids[s]: read_jsonl(out / f"{s}.jsonl") for s in ids})["overall"]
    assert scores["switches_per_gt_track"] <= 0.5 and scores["idf1"] >= 0.7  # identities stay with their objects

    tracks = json.loads((out / "results_ytvis.json").read_text())
    assert {t["video_id"] for t in tracks} == set(ids.values()) and all(len(t["segmentations"]) == 30 for t in tracks)
    mask = next(s for t in tracks for s in t["segmentations"] if s)
    assert mask_api.decode({"size": mask["size"], "counts": mask["counts"].encode()}).sum() > 0
    rows = [line.split(",") for line in (out / "000000.mot.txt").read_text().splitlines()]
    records = read_jsonl(out / "000000.jsonl")
    tracked = sum(d["track_id"] is not None for r in records for d in r["detections"])
    assert len(rows) == tracked and all(1 <= int(r[0]) <= 30 and int(r[1]) >= 1 for r in rows)
    assert (out / "000000.mots.txt").read_text().strip()
