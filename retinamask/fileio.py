"""Atomic file writes: a reader never sees a half-written output (temp file + rename)."""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_open(path, mode="wb"):
    """Open a temp file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give outputs the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path, data):
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text):
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save_npy(path, array):
    import numpy as np

    with atomic_open(path, "wb") as f:
        np.save(f, array)
