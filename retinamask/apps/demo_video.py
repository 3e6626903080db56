"""The demo's video step: generated clips the model was never tuned on -> ``predict`` with tracking ->
annotated MP4s, per-frame JSONL and YouTube-VIS results -> tracking figures (MOTA, IDF1, ID switches).

The same library code as ``retinamask predict --track --save-ytvis`` and ``retinamask data shapes --video``;
finished clips are kept on a rerun (the video job resumes).
"""

import importlib.util
import json
from fractions import Fraction
from pathlib import Path

CLIPS = 3
FRAMES = 60
FRAME_RATE = Fraction(25, 2)  # 12.5 fps: not a rate a tracker built for 30 fps gets right
SIZE = (320, 240)


def run_video_demo(model_path, backend, output_dir, seed, log=print, clips=CLIPS):
    """Generate ``clips`` clips (``seed``), track them with the model and score the tracks; returns a dict
    with the figures and paths (tracking figures are None without py-motmetrics, and a line says so)."""
    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.apps.predict_sources import Source
    from retinamask.apps.predict_videos import STATE_FILE, VideoJobOptions, predict_videos
    from retinamask.data.shapes_video import generate_shapes_videos

    out = Path(output_dir)
    data = generate_shapes_videos(out / "video_data", clips, seed, frames=FRAMES, fps=FRAME_RATE, size=SIZE)
    predictor = OnnxPredictor(model_path, backend=backend)
    sources = [Source("video", str(path), path.stem) for path in data["clips"]]
    options = VideoJobOptions(track=True, save_ytvis=True, category_ids=tuple(predictor.info.category_ids))
    videos_dir = out / "video"
    summary = predict_videos(predictor, sources, videos_dir, options, progress=False)
    state = json.loads((videos_dir / STATE_FILE).read_text(encoding="utf-8"))
    frames = sum(entry["frames"] for entry in state.values())
    seconds = sum(entry.get("seconds", 0.0) for entry in state.values())
    result = {
        "clips": clips,
        "frames": frames,
        "frame_rate": str(FRAME_RATE),
        "fps": frames / seconds if seconds else None,
        "videos": str(videos_dir),
        "failed": summary["failed"],
        "tracking": _tracking_scores(data["annotations"], videos_dir, sources),
    }
    line = (
        f"video: {clips} generated clips ({frames} frames at {float(FRAME_RATE):g} fps) tracked at "
        f"{result['fps']:.1f} frames/s -> annotated MP4 + JSONL in {videos_dir}"
    )
    tracking = result["tracking"]
    if tracking is None:
        line += "; tracking figures need py-motmetrics: pip install 'retinamask[track-eval]'"
    else:
        line += (
            f"; tracking MOTA {tracking['mota']:.3f}, IDF1 {tracking['idf1']:.3f}, "
            f"{tracking['id_switches']} ID switches over {tracking['gt_tracks']} objects"
        )
    log(line)
    return result


def _tracking_scores(annotations, videos_dir, sources):
    """The overall tracking metrics of the clips' JSONL against their ground truth, or None without
    py-motmetrics."""
    from retinamask.evaluation.tracking import evaluate_tracking, load_ytvis_ground_truth
    from retinamask.formats.video_results import read_jsonl

    if importlib.util.find_spec("motmetrics") is None:
        return None
    document = load_ytvis_ground_truth(annotations)
    video_ids = {Path(video["file_name"]).stem: video["id"] for video in document["videos"]}
    predictions = {}
    for source in sources:
        predictions[video_ids[source.stem]] = read_jsonl(videos_dir / f"{source.stem}.jsonl")
    return evaluate_tracking(document, predictions)["overall"]
