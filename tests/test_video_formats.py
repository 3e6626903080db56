"""The video formats layer: reading (files, URLs, cameras, timeouts, live reconnects), the annotated MP4
writer, and the result formats (JSONL, YouTube-VIS, MOT / MOTS). Clips are tiny and written by the tests
with PyAV; live sources are loopback servers the tests start and stop."""

import itertools
import json
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from retinamask.core.errors import InputError, OutputError
from retinamask.formats.video_read import is_video_file, open_video, source_kind
from retinamask.formats.video_results import JsonlWriter, mot_lines, mots_lines, read_jsonl, ytvis_results
from retinamask.formats.video_write import VideoWriter
from video_support import (
    MjpegServer,
    SilentServer,
    free_port,
    gradient_frames,
    make_audio_only,
    make_clip,
    probe,
    top_level_boxes,
)

# -- reading files -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "suffix", "rate"), [("ffv1", "mkv", Fraction(25, 2)), ("png", "mov", Fraction(30000, 1001))]
)
def test_lossless_clip_gives_back_its_images_with_exact_timestamps(tmp_path, codec, suffix, rate):
    images = gradient_frames(6, 63, 47)  # odd sides: no padding may leak into the frames
    clip = make_clip(tmp_path / f"clip.{suffix}", images, rate=rate, codec=codec)
    with open_video(clip) as reader:
        info = reader.info
        frames = list(reader)
    assert (info.width, info.height, info.codec, info.live, info.has_audio) == (63, 47, codec, False, False)
    assert info.frame_rate == rate
    assert info.frames == 6
    assert info.duration == pytest.approx(6 / rate, abs=1e-3)
    assert [f.index for f in frames] == list(range(6))
    for frame, image in zip(frames, images):
        assert frame.rgb.dtype == np.uint8 and frame.rgb.flags.c_contiguous
        np.testing.assert_array_equal(frame.rgb, image)
    assert frames[0].pts == 0
    assert [f.seconds for f in frames] == pytest.approx([i / rate for i in range(6)], abs=1e-3)
    assert all(f.seconds == pytest.approx(float(f.pts * info.time_base)) for f in frames)


def test_h264_clip_with_audio_info(tmp_path):
    clip = make_clip(tmp_path / "a.mp4", gradient_frames(10), rate=Fraction(25, 2), audio=True)
    with open_video(clip) as reader:
        info = reader.info
        frames = list(reader)
    assert (info.codec, info.has_audio, info.frames, info.frame_rate) == ("h264", True, 10, Fraction(25, 2))
    assert info.duration == pytest.approx(0.8)
    assert [f.seconds for f in frames] == pytest.approx([i * 0.08 for i in range(10)])
    assert [f.pts for f in frames] == [round(i * Fraction(2, 25) / info.time_base) for i in range(10)]


def test_variable_frame_rate_kept(tmp_path):
    ticks = [0, 1, 3, 4, 8, 9, 10, 15]
    clip = make_clip(tmp_path / "vfr.mkv", gradient_frames(8), rate=25, codec="ffv1", vfr_pts=ticks)
    with open_video(clip) as reader:
        seconds = [f.seconds for f in reader]
    assert seconds == pytest.approx([t / 25 for t in ticks])


def test_pts_relative_to_the_first_frame(tmp_path):
    clip = make_clip(tmp_path / "late.mkv", gradient_frames(3), rate=25, codec="ffv1", vfr_pts=[50, 51, 53])
    with open_video(clip) as reader:
        assert reader.info.duration == pytest.approx(0.16)  # not Matroska's 2.16 s, counted from 0
        assert [round(f.seconds, 3) for f in reader] == [0.0, 0.04, 0.12]  # and not reported as cut short


def test_probing_not_extensions(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", gradient_frames(3), rate=25)
    renamed = tmp_path / "clip.data"
    renamed.write_bytes(clip.read_bytes())
    still = tmp_path / "still.png"
    Image.fromarray(gradient_frames(1)[0]).save(still)
    still_renamed = tmp_path / "still.bin"
    still_renamed.write_bytes(still.read_bytes())
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    audio = make_audio_only(tmp_path / "sound.m4a")
    assert is_video_file(clip) and is_video_file(renamed)
    assert not any(is_video_file(p) for p in (still, still_renamed, text, audio, tmp_path, tmp_path / "none.mp4"))
    assert source_kind(str(renamed)) == "video"
    assert source_kind(str(still)) == source_kind(str(still_renamed)) == "image"
    assert source_kind(str(text)) == "video"  # open_video says what is wrong with it
    for live in (
        "rtsp://cam/stream",
        "RTMP://x/y",
        "udp://239.0.0.1:1234",
        "tcp://h:1",
        "http://h/x.mjpg",
        "0",
        "/dev/video2",
    ):
        assert source_kind(live) == "live", live


def _bad_file(folder, kind):
    if kind == "text named .mp4":
        (folder / "t.mp4").write_text("hello\n" * 100)
        return folder / "t.mp4"
    if kind == "audio only":
        return make_audio_only(folder / "sound.m4a")
    if kind == "empty":
        (folder / "empty.mp4").write_bytes(b"")
        return folder / "empty.mp4"
    return {"missing": folder / "missing.mp4", "folder": folder}[kind]


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("text named .mp4", "not a media file FFmpeg can read (Invalid data found when processing input)"),
        ("audio only", "no video stream (streams: audio aac)"),
        ("missing", "file not found"),
        ("empty", "empty file (0 bytes)"),
        ("folder", "is a directory, not a video file"),
    ],
)
def test_bad_files_are_one_input_error(tmp_path, kind, cause):
    path = _bad_file(tmp_path, kind)
    with pytest.raises(InputError) as caught:
        open_video(str(path))
    assert caught.value.cause == cause
    assert caught.value.path == str(path)


def test_truncated_file_yields_good_frames_then_names_the_frame(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(20)]  # noise: big packets
    clip = make_clip(tmp_path / "full.mp4", images, rate=25, faststart=True)
    full = probe(clip)["rgb"]
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    got = []
    with open_video(cut) as reader, pytest.raises(InputError) as caught:
        for frame in reader:
            got.append(frame)
    assert 0 < len(got) < 20
    assert f"decoding failed at frame {len(got)}" in caught.value.cause
    assert caught.value.path == str(cut)
    for frame, good in zip(got, full):
        np.testing.assert_array_equal(frame.rgb, good)


def test_mp4_cut_before_its_index_is_named_so(tmp_path):
    clip = make_clip(tmp_path / "camera.mp4", gradient_frames(10), rate=25)  # moov last, as cameras write
    cut = tmp_path / "unfinished.mp4"
    data = clip.read_bytes()
    cut.write_bytes(data[: data.index(b"moov") - 4])  # everything up to the index
    with pytest.raises(InputError) as caught:
        open_video(cut)
    assert "without its index (no moov box)" in caught.value.cause


def test_corrupt_file_yields_good_frames_then_names_the_frame(tmp_path):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(20)]
    clip = make_clip(tmp_path / "full.mp4", images, rate=25, faststart=True)
    data = bytearray(clip.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    got = []
    with open_video(bad) as reader, pytest.raises(InputError) as caught:
        for frame in reader:
            got.append(frame)
    assert 0 < len(got) < 20
    assert f"decoding failed at frame {len(got)} (" in caught.value.cause


def test_missing_camera_is_named():
    if Path("/dev/video9").exists():
        pytest.skip("this machine has a /dev/video9")
    with pytest.raises(InputError) as caught:
        open_video("9")
    assert caught.value.path == "9" and "/dev/video9" in caught.value.cause


# -- URLs: refused, silent, timeouts -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url", [f"http://127.0.0.1:{free_port()}/x", "http://127.0.0.1:1/x", f"rtsp://127.0.0.1:{free_port()}/s"]
)
def test_refused_url_fails_at_once(url):
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        open_video(url, timeout=2)
    assert time.monotonic() - started < 2
    assert caught.value.path == url
    assert "refused" in caught.value.cause


def test_silent_server_fails_within_the_timeout():
    with SilentServer() as server:
        url = f"http://127.0.0.1:{server.port}/x"
        started = time.monotonic()
        with pytest.raises(InputError) as caught:
            open_video(url, timeout=0.5)
        assert time.monotonic() - started < 2.5
    assert "no answer within the timeout (0.5 s)" in caught.value.cause


def test_http_file_with_a_duration_is_not_live(tmp_path):
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    make_clip(tmp_path / "c.mp4", gradient_frames(5), rate=25)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with open_video(f"http://127.0.0.1:{server.server_address[1]}/c.mp4", timeout=5) as reader:
            assert not reader.info.live and reader.info.frames == 5
            assert len(list(reader)) == 5
    finally:
        server.shutdown()
        server.server_close()


def test_hls_playlist_with_an_end_is_a_file(tmp_path):
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    hls = av.open(str(tmp_path / "index.m3u8"), "w", format="hls", options={"hls_time": "0.4", "hls_list_size": "0"})
    stream = hls.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt, stream.options = 64, 48, "yuv420p", {"g": "5"}
    for i, rgb in enumerate(gradient_frames(25)):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, 25)
        hls.mux(stream.encode(frame))
    hls.mux(stream.encode(None))
    hls.close()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with open_video(f"http://127.0.0.1:{server.server_address[1]}/index.m3u8", timeout=5) as reader:
            info = reader.info
            frames = list(reader)
    finally:
        server.shutdown()
        server.server_close()
    assert (info.live, info.frames, info.duration) == (False, 25, pytest.approx(1.0))
    assert [f.index for f in frames] == list(range(25))
    assert [f.seconds for f in frames] == pytest.approx([i / 25 for i in range(25)])


# -- live: MJPEG over HTTP, drops and reconnects -----------------------------------------------------


def _level(frame):
    return round(float(frame.rgb.mean()) / 8) * 8


def test_live_stream_reconnects_at_a_new_size_and_then_gives_up():
    lines = []
    server = MjpegServer(size=(64, 48), fps=50).start()
    try:
        reader = open_video(server.url, timeout=2, reconnect=2, log=lines.append)
        assert reader.info.live and reader.info.time_base == Fraction(1, 1000)
        assert (reader.info.frames, reader.info.duration) == (None, None)
        got, small = [], 0
        with reader, pytest.raises(InputError) as caught:
            for frame in reader:
                got.append(frame)
                small += frame.rgb.shape == (24, 32, 3)
                if frame.index == 5:
                    server.stop()
                    threading.Timer(0.2, server.start, kwargs={"size": (32, 24)}).start()
                elif small == 5:
                    server.stop()
    finally:
        server.stop()
    assert [f.index for f in got] == list(range(len(got)))  # indices keep counting across the reconnect
    big = len(got) - small
    assert big >= 6 and small >= 5  # (frames the sockets held when the server stopped still come)
    assert [f.rgb.shape for f in got] == [(48, 64, 3)] * big + [(24, 32, 3)] * small
    levels = [_level(f) for f in got]
    assert levels == sorted(set(levels))  # every frame a sent one, none repeated or made up
    pts = [f.pts for f in got]
    assert pts[0] == 0 and all(b > a for a, b in itertools.pairwise(pts))
    assert pts[big] - pts[big - 1] >= 400  # the reconnect's wait (0.5 s) shows in the timestamps
    assert (reader.reconnects, reader.dropped_reconnects, reader.drops) == (1, 2, 2)
    assert f"stream dropped after frame {big - 1} (" in lines[0] and "attempt 1/2 in 0.5 s" in lines[0]
    assert any("reconnected at 32x24 (was 64x48)" in line for line in lines)
    assert f"after frame {len(got) - 1}" in caught.value.cause
    assert caught.value.cause.endswith("2 reconnect attempts failed (the last: connection refused)")
    assert lines[-1].endswith("attempt 2/2 in 1 s (attempt 1: connection refused)")


def test_live_stream_that_hangs_is_reopened_after_the_read_timeout():
    lines = []
    with MjpegServer(fps=50) as server:
        reader = open_video(server.url, timeout=0.5, reconnect=5, log=lines.append)
        got = []
        with reader:
            for frame in reader:
                got.append(frame)
                if frame.index == 3:
                    server.stalled.set()
                    threading.Timer(1.2, server.stalled.clear).start()
                if reader.reconnects and len(got) >= 8:
                    break
    assert [f.index for f in got] == list(range(len(got)))
    assert "(no data within the timeout (0.5 s)); reconnecting, attempt 1/5" in lines[0]
    levels = [_level(f) for f in got]
    assert levels == sorted(set(levels))


def test_live_undecodable_parts_are_skipped_not_a_drop():
    with MjpegServer(fps=50, garbage={4, 5}) as server:
        reader = open_video(server.url, timeout=2, reconnect=0)
        with reader:
            levels = [_level(f) for f, _ in zip(reader, range(10))]
    assert levels == [0, 8, 16, 24, 48, 56, 64, 72, 80, 88]  # frames 4 and 5 left out, nothing in their place
    assert (reader.skipped_packets, reader.drops) == (2, 0)


def test_live_close_from_another_thread_ends_the_iteration():
    with MjpegServer(fps=50) as server:
        reader = open_video(server.url, timeout=2)
        count = 0
        for frame in reader:
            count += 1
            if frame.index == 2:
                threading.Thread(target=reader.close).start()
            assert count < 100
    assert count >= 3


def test_live_without_reconnects_fails_at_the_first_drop():
    server = MjpegServer(fps=50, max_frames=4).start()
    try:
        with open_video(server.url, timeout=2, reconnect=0) as reader, pytest.raises(InputError) as caught:
            frames = []
            for frame in reader:
                frames.append(frame)
    finally:
        server.stop()
    assert len(frames) == 4
    assert "0 reconnect attempts failed" in caught.value.cause


# -- writing the annotated MP4 -----------------------------------------------------------------------


def _copy(source, target, frames=None, **kwargs):
    with open_video(source) as reader:
        info = reader.info
        with VideoWriter(target, info.width, info.height, info.time_base, info.frame_rate, **kwargs) as writer:
            for frame in reader:
                if frames is not None and frame.index >= frames:
                    break
                writer.write(frame.rgb, frame.pts)
    return writer


@pytest.mark.parametrize(
    ("rate", "time_base", "audio"), [(Fraction(25, 2), None, True), (Fraction(30000, 1001), Fraction(1, 30000), False)]
)
def test_writer_h264_faststart_rate_and_audio(tmp_path, rate, time_base, audio):
    # 60 frames: past x264's lookahead, after which the MP4 muxer has changed the stream's time base
    source = make_clip(tmp_path / "src.mp4", gradient_frames(60), rate=rate, audio=audio, time_base=time_base)
    out = tmp_path / "out.mp4"
    writer = _copy(source, out, audio_from=source)
    assert writer.audio_copied is audio
    seen, original = probe(out), probe(source)
    assert (seen["video"], seen["pix_fmt"], seen["width"], seen["height"]) == ("h264", "yuv420p", 64, 48)
    assert seen["frames"] == 60
    assert seen["rate"] == rate
    assert seen["pts"] == pytest.approx(original["pts"], abs=1e-6)
    assert seen["audio"] == ("aac" if audio else None)
    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "src.mp4"]  # no temporary file left


def test_writer_keeps_variable_timestamps(tmp_path):
    ticks = [0, 1, 3, 4, 8, 9, 10, 15, 16, 20]
    source = make_clip(tmp_path / "vfr.mkv", gradient_frames(10), rate=25, codec="ffv1", vfr_pts=ticks)
    _copy(source, tmp_path / "out.mp4")
    assert probe(tmp_path / "out.mp4")["pts"] == pytest.approx([t / 25 for t in ticks], abs=1e-6)
    with av.open(str(tmp_path / "out.mp4")) as container:  # as long as the source: last frame + one
        assert container.duration / av.time_base == pytest.approx(21 / 25, abs=1e-3)
        packets = [p for p in container.demux(container.streams.video[0]) if p.pts is not None]
        assert all(p.dts == p.pts for p in packets)  # no B-frames: decode times are the frames' times


def test_writer_cuts_the_audio_at_the_end_of_a_stopped_run(tmp_path):
    source = make_clip(tmp_path / "src.mp4", gradient_frames(20), rate=25, audio=True)
    _copy(source, tmp_path / "out.mp4", frames=5, audio_from=source)
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.audio[0]
        ends = [float((p.pts + p.duration) * p.time_base) for p in container.demux(stream) if p.pts is not None]
    assert 0.15 < max(ends) <= 0.2 + 1024 / 16000  # the video's 5 frames: 0.2 s, within one audio packet


def test_writer_aligns_the_audio_with_the_first_video_frame(tmp_path):
    # the video starts 1 s into the file, the audio at 0: the output's audio starts with the first frame
    source = make_clip(tmp_path / "src.mp4", gradient_frames(10), rate=25, audio=True, vfr_pts=range(25, 35))
    _copy(source, tmp_path / "out.mp4", audio_from=source)
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.audio[0]
        spans = [
            (p.pts * p.time_base, (p.pts + p.duration) * p.time_base)
            for p in container.demux(stream)
            if p.pts is not None
        ]
    assert min(start for start, _ in spans) > -Fraction(1024, 16000)  # nothing from the second before
    assert max(end for _, end in spans) == pytest.approx(0.4, abs=1024 / 16000)


def test_rotation_is_kept_as_a_display_matrix(tmp_path):
    images = gradient_frames(3)
    source = make_clip(tmp_path / "phone.mp4", images, rate=25, rotation=90, audio=True)
    with open_video(source) as reader:
        matrix = reader.info.display_matrix
        assert [f.rgb.shape for f in reader] == [(48, 64, 3)] * 3  # stored orientation, as images
    assert matrix == (0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30)
    _copy(source, tmp_path / "out.mp4", audio_from=source, display_matrix=matrix)
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert next(container.decode(video=0)).rotation == 90
    with open_video(make_clip(tmp_path / "plain.mp4", images, rate=25)) as reader:
        assert reader.info.display_matrix is None


def test_writer_odd_size_is_padded_with_edge_pixels(tmp_path):
    image = np.zeros((47, 63, 3), np.uint8)
    image[:, -1] = (250, 250, 250)  # a white last column and a red last row
    image[-1, :] = (250, 0, 0)
    with VideoWriter(tmp_path / "odd.mp4", 63, 47, Fraction(1, 25), Fraction(25), crf=0) as writer:
        for i in range(3):
            writer.write(image, i)
    seen = probe(tmp_path / "odd.mp4")
    assert (seen["width"], seen["height"], seen["frames"]) == (64, 48, 3)
    rgb = seen["rgb"][0].astype(int)
    assert np.abs(rgb[:46, 63] - 250).max() < 40  # the padding column repeats the white edge
    assert np.abs(rgb[47, :62] - (250, 0, 0)).max() < 60  # the padding row repeats the red edge


def test_writer_resizes_frames_of_another_size_and_bumps_repeated_pts(tmp_path):
    with VideoWriter(tmp_path / "o.mp4", 64, 48, Fraction(1, 1000)) as writer:
        writer.write(np.full((48, 64, 3), 100, np.uint8), 0)
        writer.write(np.full((24, 32, 3), 100, np.uint8), 40)  # a live source re-opened smaller
        writer.write(np.full((24, 32, 3), 100, np.uint8), 40)  # a repeated timestamp
    seen = probe(tmp_path / "o.mp4")
    assert (seen["width"], seen["height"], seen["frames"]) == (64, 48, 3)
    assert seen["pts"] == pytest.approx([0, 0.04, 0.041])


def test_writer_is_atomic(tmp_path):
    target = tmp_path / "v.mp4"
    writer = VideoWriter(target, 64, 48, Fraction(1, 25), Fraction(25))
    writer.write(gradient_frames(1)[0], 0)
    assert not target.exists()
    temps = [p.name for p in tmp_path.iterdir()]
    assert len(temps) == 1 and temps[0].startswith(".v.mp4.") and temps[0].endswith(".tmp")
    writer.abort()
    assert list(tmp_path.iterdir()) == []

    target.write_bytes(b"old")
    with VideoWriter(target, 64, 48, Fraction(1, 25)) as writer:
        pass  # no frame: nothing written, the old file kept
    assert writer.close() is None and target.read_bytes() == b"old"

    with pytest.raises(RuntimeError), VideoWriter(target, 64, 48, Fraction(1, 25), Fraction(25)) as writer:
        writer.write(gradient_frames(1)[0], 0)
        raise RuntimeError("the frame loop failed")
    assert probe(target)["frames"] == 1  # what was written before the failure is kept, playable
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_writer_without_audio_in_the_source(tmp_path):
    silent = make_clip(tmp_path / "silent.mp4", gradient_frames(3), rate=25)
    writer = _copy(silent, tmp_path / "out.mp4", audio_from=silent)
    assert (writer.audio_copied, writer.audio_note) == (False, None)
    writer = _copy(silent, tmp_path / "out2.mp4", audio_from=tmp_path / "gone.mp4")
    assert writer.audio_copied is False and "gone.mp4" in writer.audio_note
    assert probe(tmp_path / "out2.mp4")["frames"] == 3 and probe(tmp_path / "out2.mp4")["audio"] is None


def test_writer_h264_encoder_choice(tmp_path, monkeypatch):
    from retinamask.formats import video_write

    monkeypatch.setattr(av, "codecs_available", {"libopenh264", "aac"})
    assert video_write.h264_encoder() == "libopenh264"
    monkeypatch.setattr(av, "codecs_available", {"mpeg4"})
    with pytest.raises(OutputError) as caught:
        VideoWriter(tmp_path / "v.mp4", 64, 48, Fraction(1, 25))
    assert "no H.264 encoder" in caught.value.cause
    assert list(tmp_path.iterdir()) == []


def test_writer_unwritable_folder_is_an_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        VideoWriter(blocker / "v.mp4", 64, 48, Fraction(1, 25))


# -- result formats ----------------------------------------------------------------------------------


def _rle(mask):
    encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def _mask(rows, cols, shape=(6, 8)):
    mask = np.zeros(shape, np.uint8)
    mask[rows, cols] = 1
    return mask


def _detection(track_id, label, score, box, mask, category_id=None):
    detection = {
        "label": label,
        "class_name": f"c{label}",
        "score": score,
        "box_xyxy": box,
        "mask_rle": _rle(mask),
        "track_id": track_id,
    }
    if category_id is not None:
        detection["category_id"] = category_id
    return detection


def _records():
    a, b, c = _mask(slice(0, 2), slice(0, 2)), _mask(slice(3, 5), slice(4, 8)), _mask(slice(1, 4), slice(1, 3))
    return [
        {
            "frame": 0,
            "pts": 0.0,
            "detections": [_detection(1, 1, 0.9, [0, 0, 2, 2], a), _detection(None, 2, 0.8, [0, 0, 1, 1], b)],
        },
        {
            "frame": 2,
            "pts": 0.08,
            "detections": [_detection(1, 2, 0.5, [0.5, 1, 2.25, 3], a), _detection(2, 2, 0.6, [4, 3, 8, 5], b)],
        },
        {"frame": 4, "pts": 0.16, "detections": [_detection(2, 3, 0.4, [1, 1, 3, 4], c)]},
    ]


def test_jsonl_lines_are_complete_and_readable_as_written(tmp_path):
    path = tmp_path / "sub" / "v.jsonl"
    with JsonlWriter(path) as writer:
        writer.write({"frame": np.int64(0), "pts": np.float32(0.5), "detections": [], "m": np.arange(2)})
        assert path.read_text() == '{"frame":0,"pts":0.5,"detections":[],"m":[0,1]}\n'  # on disk at once
        writer.write({"frame": 1, "pts": 0.54, "detections": [{"mask_rle": {"size": [1, 1], "counts": b"01"}}]})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 1]
    assert json.loads(lines[1])["detections"][0]["mask_rle"]["counts"] == "01"
    with JsonlWriter(path):  # a rerun starts the log again
        pass
    assert path.read_text() == ""


def test_jsonl_killed_writer_leaves_complete_lines(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    path = tmp_path / "v.jsonl"
    code = (
        "import sys\n"
        "from retinamask.formats.video_results import JsonlWriter\n"
        "w = JsonlWriter(sys.argv[1])\n"
        "i = 0\n"
        "while True:\n"
        "    w.write({'frame': i, 'detections': [{'mask_rle': {'counts': 'x' * 5000}}]})\n"
        "    i += 1\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env)
    try:
        deadline = time.monotonic() + 30
        while (not path.exists() or path.stat().st_size < 200_000) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # SIGKILL can stop the kernel inside the last write (between pages, these lines are 5 KiB): every line
    # before it is complete, and read_jsonl leaves the unfinished one out
    complete = path.read_text().split("\n")[:-1]  # [-1]: "" or the unfinished line
    frames = [json.loads(line)["frame"] for line in complete]
    assert frames == list(range(len(frames))) and len(frames) >= 40
    assert [record["frame"] for record in read_jsonl(path)] == frames


def test_read_jsonl(tmp_path):
    path = tmp_path / "v.jsonl"
    path.write_text('{"frame": 0}\n\n{"frame": 1}\n{"frame": 2, "detec')  # a last line cut mid-way
    assert read_jsonl(path) == [{"frame": 0}, {"frame": 1}]
    path.write_text('{"frame": 0}\nnot json\n')
    with pytest.raises(InputError, match="line 2 is not JSON"):
        read_jsonl(path)


def test_jsonl_bad_record_leaves_only_complete_lines(tmp_path):
    path = tmp_path / "v.jsonl"
    with JsonlWriter(path) as writer:
        writer.write({"frame": 0})
        with pytest.raises(TypeError):
            writer.write({"frame": 1, "bad": object()})
    assert path.read_text() == '{"frame":0}\n'


def test_ytvis_results_hand_computed():
    results = ytvis_results(_records(), video_id=7, category_ids=[10, 20, 30])
    assert [r["video_id"] for r in results] == [7, 7]
    one, two = results
    # track 1: label 1 (0.9) against label 2 (0.5) -> category 10; score (0.9 + 0.5) / 2
    assert one["category_id"] == 10 and one["score"] == pytest.approx(0.7)
    assert one["segmentations"][2] is None and one["segmentations"][0] == _records()[0]["detections"][0]["mask_rle"]
    # track 2: label 2 (0.6) against label 3 (0.4) -> 20; absent from the first record
    assert two["category_id"] == 20 and two["score"] == pytest.approx(0.5)
    assert two["segmentations"][0] is None and all(s is not None for s in two["segmentations"][1:])
    # without category ids: labels; a detection's own category_id wins
    records = _records()
    records[2]["detections"][0]["category_id"] = 99
    records[2]["detections"][0]["score"] = 0.7
    assert [r["category_id"] for r in ytvis_results(records, 1)] == [1, 99]


def test_ytvis_results_placed_by_source_frame():
    one, two = ytvis_results(_records(), video_id=3, frame_count=6)  # records of frames 0, 2, 4 (stride 2)
    assert [s is not None for s in one["segmentations"]] == [True, False, True, False, False, False]
    assert [s is not None for s in two["segmentations"]] == [False, False, True, False, True, False]
    with pytest.raises(ValueError, match="outside"):
        ytvis_results(_records(), video_id=3, frame_count=4)


def test_mot_lines_hand_computed():
    assert mot_lines(_records()) == [  # MOTChallenge's boxes are 1-based: x1 + 1, y1 + 1
        "1,1,1,1,2,2,0.9,-1,-1,-1",
        "3,1,1.5,2,1.75,2,0.5,-1,-1,-1",
        "3,2,5,4,4,2,0.6,-1,-1,-1",
        "5,2,2,2,2,3,0.4,-1,-1,-1",
    ]


@pytest.mark.filterwarnings("ignore:Operation with tuple is deprecated")  # py-motmetrics 1.4 with pandas 3
def test_mot_lines_load_in_py_motmetrics(tmp_path):
    mm = pytest.importorskip("motmetrics", reason="the track-eval extra is not installed")
    path = tmp_path / "v.mot.txt"
    path.write_text("\n".join(mot_lines(_records())) + "\n")
    table = mm.io.loadtxt(str(path), fmt="mot15-2D")
    assert list(table.index) == [(1, 1), (3, 1), (3, 2), (5, 2)]
    # py-motmetrics makes them 0-based again: our box_xyxy [0.5, 1, 2.25, 3] back
    assert table.loc[(3, 1)][["X", "Y", "Width", "Height", "Confidence"]].tolist() == [0.5, 1, 1.75, 2, 0.5]


def test_mots_lines_are_decodable_rle_without_overlaps():
    lines = mots_lines(_records())
    assert [line.split(" ")[:5] for line in lines] == [
        ["1", "1", "1", "6", "8"],
        ["3", "2", "2", "6", "8"],  # the higher score first: track 2 (0.6), then track 1 (0.5)
        ["3", "1", "2", "6", "8"],
        ["5", "2", "3", "6", "8"],
    ]
    decoded = [mask_util.decode({"size": [6, 8], "counts": line.split(" ")[5].encode()}) for line in lines]
    np.testing.assert_array_equal(decoded[0], _mask(slice(0, 2), slice(0, 2)))
    np.testing.assert_array_equal(decoded[3], _mask(slice(1, 4), slice(1, 3)))
    # overlapping masks in one frame: the pixel goes to the higher score
    big, small = _mask(slice(0, 4), slice(0, 4)), _mask(slice(2, 6), slice(2, 6))
    records = [
        {
            "frame": 0,
            "detections": [_detection(1, 1, 0.5, [0, 0, 4, 4], big), _detection(2, 1, 0.9, [2, 2, 6, 6], small)],
        }
    ]
    first, second = mots_lines(records)
    assert first.split(" ")[1] == "2" and second.split(" ")[1] == "1"
    kept = mask_util.decode({"size": [6, 8], "counts": second.split(" ")[5].encode()})
    np.testing.assert_array_equal(kept, big & (1 - small))


# -- live: RTSP (GStreamer's server, where Debian's packages are installed) ----------------------------


@pytest.fixture(scope="module")
def rtsp_available():
    from video_support import require_rtsp_server

    require_rtsp_server()


def test_rtsp_opens_without_stale_frames_and_reconnects(rtsp_available):
    from video_support import RtspServer

    lines = []
    with RtspServer(size=(160, 120), fps=10) as server:
        started = time.monotonic()
        reader = open_video(server.url, timeout=3, reconnect=3, log=lines.append)
        opened = time.monotonic() - started
        got = []
        with reader:
            for frame in reader:
                got.append((frame, time.monotonic()))
                if frame.index == 4:
                    server.stop()
                    server.start(size=(96, 64))
                if frame.rgb.shape == (64, 96, 3) and len(got) >= 10:
                    break
    assert reader.info.live and reader.info.codec == "h264" and (reader.info.width, reader.info.height) == (160, 120)
    assert opened < 2  # FFmpeg's default probing would hold ~3 s of frames here, then release them in a burst
    arrivals = [t for _, t in got[:5]]
    assert arrivals[-1] - arrivals[0] > 0.25  # 10 fps: frames come as they are made, not in a burst
    assert [f.index for f, _ in got] == list(range(len(got)))
    assert reader.reconnects >= 1 and any("reconnected at 96x64 (was 160x120)" in line for line in lines)


def test_tcp_mpegts_stream_is_live_and_ends_as_a_drop():
    from video_support import tcp_stream_process

    port = free_port()
    server = tcp_stream_process(port, container="mpegts", frames=20, fps=25)
    try:
        deadline = time.monotonic() + 10
        while True:  # until the child listens
            try:
                reader = open_video(f"tcp://127.0.0.1:{port}", timeout=3, reconnect=1, log=lambda line: None)
                break
            except InputError as error:
                if "refused" not in error.cause or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        got = []
        with reader, pytest.raises(InputError) as caught:
            for frame in reader:
                got.append(frame)
    finally:
        server.kill()
        server.wait()
    assert reader.info.live and reader.info.codec == "h264" and reader.info.time_base == Fraction(1, 1000)
    assert len(got) == 20 and [f.index for f in got] == list(range(20))
    assert (
        "after frame 19 (end of stream)" in caught.value.cause and "1 reconnect attempts failed" in caught.value.cause
    )
