"""The resume store of ``evaluate``: per-image COCO results kept while an evaluation runs."""

import logging
from pathlib import Path

from retinamask.core.errors import InputError

logger = logging.getLogger(__name__)


class PartStore:
    """Per-image COCO results of an evaluation in progress: ``{folder}/{basename}.json``, each
    written atomically with the key it was made under (the job's settings, the output files'
    sizes and modification times), and used again only under the same key."""

    def __init__(self, folder, enabled=True):
        self.folder = Path(folder)
        self.enabled = enabled
        if enabled and self.folder.is_dir():
            from retinamask.core.fileio import remove_stale_temp_files

            remove_stale_temp_files(self.folder)

    def _path(self, job):
        return self.folder / f"{job.basename}.json"

    def key(self, job):
        return _part_key(job) if self.enabled else None

    def load(self, job, key):
        """The stored (results, mask areas or None) of ``job``, or None if there are none for ``key``."""
        if key is None:
            return None
        import json

        try:
            stored = json.loads(self._path(job).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("key") != key:
            return None
        results, areas = stored.get("results"), stored.get("areas")
        if not isinstance(results, list) or not (
            areas is None or (isinstance(areas, list) and len(areas) == len(results))
        ):
            return None
        return results, areas

    def save(self, job, key, results, areas=None):
        if key is None:
            return
        import json

        from retinamask.core.fileio import atomic_write_text, json_default

        atomic_write_text(
            self._path(job), json.dumps({"key": key, "results": results, "areas": areas}, default=json_default)
        )

    def count(self):
        return len(list(self.folder.glob("*.json"))) if self.enabled and self.folder.is_dir() else 0

    def remove(self):
        if self.enabled and self.folder.is_dir():
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)


def _part_key(job):
    """JSON-comparable identity of one image's evaluation (an :class:`~.evaluate_jobs.EvaluateJob`):
    the job's fields and its output files' (name, size, mtime)."""
    import dataclasses
    import json

    from retinamask.formats.outputs import find_output_files
    from retinamask.formats.run_sidecar import CANVAS_SIDE_KEY

    try:
        files = find_output_files(job.results_dir, job.basename)
        stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files.paths]
    except (InputError, OSError):
        return None
    # S under its file key, as stored parts have it (fields in order: the stored keys stay byte-identical)
    fields = {
        CANVAS_SIDE_KEY if name == "canvas_side" else name: value for name, value in dataclasses.asdict(job).items()
    }
    # through JSON, so that the key compares equal to one read back (tuples become lists)
    return json.loads(json.dumps({"job": fields, "files": stats}))
