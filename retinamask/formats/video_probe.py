"""What a video source is, before and around decoding it: the kind of an ``--input`` item (URL schemes,
cameras, image or video by probing the container with PyAV), and facts read from a container that
FFmpeg's errors do not say (an MP4 without its index, a display rotation). Used by
:mod:`retinamask.formats.video_read`, which offers :func:`source_kind` and :func:`is_video_file`."""

import re
import struct
from pathlib import Path

import av

from retinamask.core.contract import IMAGE_EXTENSIONS

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt", "rtp", "http", "https")

_URL = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://")
_CAMERA_INDEX = re.compile(r"^\d$")
_CAMERA_DEVICE = re.compile(r"^/dev/video\d+$")
_IDENTITY_MATRIX = (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)


def url_scheme(item):
    """The lower-case scheme of a URL ("rtsp"), None for a path."""
    match = _URL.match(item)
    return match["scheme"].lower() if match else None


def camera_device(item):
    """'0'..'9' or /dev/videoN -> the device path; None for anything else."""
    if _CAMERA_INDEX.match(item):
        return f"/dev/video{item}"
    return item if _CAMERA_DEVICE.match(item) else None


def source_kind(item):
    """ "image", "video" or "live" for one ``--input`` item, without decoding it.

    URLs of the stream schemes and cameras are "live" (an http(s) URL whose container reports a duration
    is read as a file by ``video_read.open_video``: ``info.live`` False); a path with an image extension, or a
    file that probes as a still image, is "image"; any other path is "video" (``open_video`` says
    what is wrong with it when it is not).
    """
    item = str(item)
    if url_scheme(item) in LIVE_SCHEMES or camera_device(item):
        return "live"
    path = Path(item)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return "image"
    if _probe(path) == "image":
        return "image"
    return "video"


def is_video_file(path):
    """True when ``path`` is a file whose container (probed with PyAV, whatever its extension) has a
    video stream and is not a still image; files with an image extension are never video (they go the
    image route). Never raises."""
    path = Path(path)
    return path.suffix.lower() not in IMAGE_EXTENSIONS and _probe(path) == "video"


def _probe(path):
    """ "video", "image" (a still image) or None (no file, no video stream, not media) for a file."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return None
        with av.open(str(path), timeout=10.0) as container:
            if not container.streams.video:
                return None
            return "image" if _still_image(container) else "video"
    except Exception:
        return None


def _still_image(container):
    """Image demuxers: "image2" and the "*_pipe" ones (png_pipe, jpeg_pipe, webp_pipe...)."""
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


def display_matrix(frame):
    """The frame's display matrix side data as 9 ints, None when absent or the identity."""
    for side_data in frame.side_data:
        if getattr(side_data.type, "name", "") == "DISPLAYMATRIX":
            matrix = struct.unpack("=9i", bytes(side_data))
            return None if matrix == _IDENTITY_MATRIX else matrix
    return None


def mp4_without_index(path):
    """True for a file whose top-level boxes start as an MP4's (ftyp) but hold no moov."""
    kinds = []
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            offset = 0
            while offset + 8 <= size and len(kinds) < 1000:
                f.seek(offset)
                head = f.read(16)
                box_size, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if box_size == 1 and len(head) == 16:
                    box_size = int.from_bytes(head[8:16], "big")
                elif box_size == 0:
                    box_size = size - offset
                if box_size < 8:
                    break
                kinds.append(kind)
                offset += box_size
    except OSError:
        return False
    return bool(kinds) and kinds[0] == b"ftyp" and b"moov" not in kinds
