"""Atomic file writes: a reader never sees a half-written output (temp file + rename).

A temp file is named ``.{name}.{host}-{pid}.{random}.tmp`` beside its target, so that
the temp files a killed process left behind can be told from those of a live writer
(:func:`remove_stale_temp_files`).
"""

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from retinamask.core.errors import InputError, OutputError


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
_HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[^.]+\.tmp$")


def _cannot_write(error, path):
    return OutputError(f"cannot write: {error.strerror or error}", path)


@contextmanager
def atomic_open(path, mode="wb"):
    """Open a temp file beside ``path``; rename it onto ``path`` only if the block succeeds.

    Text modes write UTF-8 whatever the locale (file names in .info lists may be non-ASCII).
    A failure to create, write or rename the file (disk full, permission denied...)
    raises :class:`~retinamask.core.errors.OutputError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the pid is read per call: worker processes write too
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST_TAG}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _cannot_write(e, path) from None
    try:
        try:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give outputs the usual permissions
            f = os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding="utf-8")
        except OSError as e:
            os.close(fd)
            raise _cannot_write(e, path) from None
        with f:
            try:
                yield f
            except OSError as e:
                if e.filename is None:  # a write to f failed; errors naming a file concern some other file
                    raise _cannot_write(e, path) from None
                raise
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise _cannot_write(e, path) from None
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise _cannot_write(e, path) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def temp_path_beside(path):
    """Create an empty temporary file beside ``path``, named as :func:`atomic_open` names its own (so that
    :func:`remove_stale_temp_files` knows it), with the usual permissions; returns its Path. For a
    writer that cannot write through a file object (a video muxer): it writes there, then renames it
    onto ``path`` with ``os.replace``. Raises OutputError naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST_TAG}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)
    except OSError as e:
        raise _cannot_write(e, path) from None
    return Path(tmp)


def remove_stale_temp_files(directory, other_hosts=False):
    """Delete the temp files that writers on this host which are no longer running left in
    ``directory`` (a process killed mid-write cannot remove its own); returns their names.

    Temp files of live processes, of other hosts and of other naming schemes are kept;
    ``other_hosts``: those of other hosts go too (for a caller that knows that every writer
    on another host has finished, e.g. a distributed run whose workers are done).
    """
    removed = []
    try:
        with os.scandir(directory) as entries:
            candidates = [e.name for e in entries if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for name in candidates:
        match = _TEMP_NAME.match(name)
        if match is None or (match["host"] == _HOST_TAG and _process_alive(int(match["pid"]))):
            continue
        if match["host"] != _HOST_TAG and not other_hosts:
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except FileNotFoundError:
            pass
        except OSError:
            continue
    return removed


def _process_alive(pid):
    if pid == os.getpid():
        return True
    try:  # a killed process stays a zombie until its parent reaps it: it writes nothing any more
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                return False
    except (OSError, IndexError):
        pass  # no such process, or no /proc: the kernel answers below
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return True
    return True


def atomic_write_bytes(path, data):
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text):
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def json_default(value):
    """``json.dumps(default=...)`` for results: numpy scalars and arrays, bytes RLE counts."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def check_input_file(path, kind):
    """One InputError naming ``path`` for an input that cannot be a ``kind`` ("an image file", "a video
    file"): missing, a broken link, unreadable, a folder, or empty."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError("broken symbolic link" if path.is_symlink() else "file not found", path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path) from None
    if path.is_dir():
        raise InputError(f"is a directory, not {kind}", path)
    if size == 0:
        raise InputError("empty file (0 bytes)", path)
