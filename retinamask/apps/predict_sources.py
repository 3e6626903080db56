"""What ``predict --input`` names, sorted into images, video files and live sources (torch-free).

An input is a file, a folder, a URL, a camera or a list file:

* a file with an image extension is an image; any other file is probed (PyAV opens the container):
  with a video stream it is a video, whatever its extension; otherwise one error names it;
* a folder: its images and its videos (other files are skipped, counted in one line), by name;
* ``rtsp://``, ``rtmp://``, ``udp://``, ``tcp://``, ``http(s)://`` URLs and cameras (``0``, ``/dev/video0``)
  are opened when their turn comes (an ``http(s)`` URL that turns out to be a file is read as one);
* a ``.txt`` or ``.streams`` file lists sources, one per line (blank lines and ``#`` comments skipped;
  relative paths are relative to the list).

Each source gets a ``stem``, the base name of its outputs; two sources of one stem would overwrite each
other's outputs, so the second is refused (as ``predict`` does for images).
"""

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from retinamask.core.contract import IMAGE_EXTENSIONS
from retinamask.core.errors import InputError
from retinamask.formats.video_read import is_video_file, source_kind

log = logging.getLogger(__name__)

LIST_EXTENSIONS = (".txt", ".streams")


@dataclass(frozen=True)
class Source:
    """One thing to predict: ``kind`` "image", "video" (a file) or "live" (a URL or camera, opened later)."""

    kind: str
    location: str
    stem: str


@dataclass
class Sources:
    """The sources of a run, by kind, in input order, and the inputs refused (``{"file", "cause"}``)."""

    images: list
    videos: list
    failed: list
    skipped: int = 0


def collect_sources(inputs):
    """``predict --input`` items -> :class:`Sources`. A missing path raises InputError (nothing to run)."""
    sources = Sources(images=[], videos=[], failed=[])
    stems = {}
    for item in _expanded(inputs, sources):
        source = _classified(item, sources)
        if source is None:
            continue
        key = (source.stem, "image" if source.kind == "image" else "video")
        if key in stems and stems[key] != source.location:
            sources.failed.append(
                {"file": source.location, "cause": f"same name as {stems[key]}: its outputs would be overwritten"}
            )
            continue
        if key in stems:
            continue  # the same source named twice
        stems[key] = source.location
        (sources.images if source.kind == "image" else sources.videos).append(source)
    if sources.skipped:
        log.info("skipped %d file(s) in the input folders that are neither images nor videos", sources.skipped)
    return sources


def _expanded(inputs, sources):
    """Input items with list files read and folders listed (sorted by name); a folder's non-media files
    are flagged so that they are skipped rather than reported."""
    for item in inputs:
        text = str(item)
        if source_kind(text) == "live":
            yield text, False
            continue
        path = Path(text)
        if path.is_dir():
            for entry in sorted(path.iterdir(), key=lambda p: p.name):
                if entry.is_file() and not entry.name.startswith("."):
                    yield str(entry), True
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
            yield from ((line, False) for line in _listed(path))
        elif path.exists() or path.is_symlink():
            yield text, False
        else:
            raise InputError("no such file, folder, URL or camera", path=text)


def _listed(list_file):
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the list of sources: {e}", path=list_file) from None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if source_kind(line) == "live" or os.path.isabs(line):
            yield line
        else:
            yield str(list_file.parent / line)


def _classified(item, sources):
    location, in_folder = item
    if source_kind(location) == "live":
        return Source("live", location, live_stem(location))
    path = Path(location)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return Source("image", location, path.stem)
    if not path.exists():
        sources.failed.append({"file": location, "cause": "no such file"})
        return None
    if is_video_file(path):
        return Source("video", location, path.stem)
    if in_folder:
        sources.skipped += 1
        return None
    sources.failed.append({"file": location, "cause": "neither an image nor a video PyAV can open (no video stream)"})
    return None


def live_stem(location):
    """Output base name of a URL or camera: ``rtsp://cam.local:8554/live`` -> ``cam.local_8554_live``,
    ``0`` and ``/dev/video0`` -> ``video0``."""
    if location.isdigit():
        return f"video{location}"
    text = re.sub(r"^[a-z0-9+.-]+://", "", location, flags=re.IGNORECASE)
    text = re.sub(r"^[^@/]*@", "", text)  # no credentials in file names
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "stream"
