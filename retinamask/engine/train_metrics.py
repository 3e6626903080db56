"""The training curve: ``OUTPUT/metrics.jsonl`` (one JSON object per line) and ``OUTPUT/training_curve.png``.

Two kinds of lines, both keyed by ``iteration`` (iterations done):

- every ``log_period`` iterations: ``{"iteration", "lr", "loss", "loss_<name>"..., "it_per_s"}``, the losses
  averaged over the iterations since the previous line (not smoothed across lines);
- every ``eval_period`` iterations and at the end: ``{"iteration", "split", "images", "bbox_AP", "segm_AP"}``,
  COCO mAP@[.5:.95] of the eager model on ``DATA/<split>``.

A resumed run first drops the lines past its checkpoint's iteration, so the file always describes one run.
The PNG (loss on a log scale above, mAP below) is redrawn after every evaluation and at the end.
"""

import json
import logging
import math
from pathlib import Path

from retinamask.core.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
CURVE_NAME = "training_curve.png"


class MetricsLog:
    """Appends loss windows and evaluations to ``output_dir/metrics.jsonl``."""

    def __init__(self, output_dir, start_iteration=0):
        self.path = Path(output_dir) / METRICS_NAME
        self.curve_path = Path(output_dir) / CURVE_NAME
        self._window = {}
        self._count = 0
        kept = [r for r in read_metrics(self.path) if r["iteration"] <= start_iteration]
        if self.path.is_file():  # rewrite once: lines from beyond the resumed checkpoint go
            atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def add_losses(self, values):
        """Accumulate one iteration's losses (a dict of floats)."""
        for key, value in values.items():
            self._window[key] = self._window.get(key, 0.0) + value
        self._count += 1

    def write_losses(self, iteration, lr, it_per_s):
        """One line with the mean of the losses accumulated since the previous one."""
        if not self._count:
            return
        record = {"iteration": int(iteration), "lr": float(lr)}
        record.update({k: v / self._count for k, v in self._window.items()})
        record["it_per_s"] = round(float(it_per_s), 4)
        self._append(record)
        self._window, self._count = {}, 0

    def write_evaluation(self, iteration, split, images, report):
        record = {"iteration": int(iteration), "split": split, "images": int(images)}
        for iou_type in ("bbox", "segm"):
            if iou_type in report:
                record[f"{iou_type}_AP"] = float(report[iou_type]["AP"])
        self._append(record)
        return record

    def plot(self):
        """Redraw ``training_curve.png`` from the file; returns its path (None without matplotlib)."""
        return plot_curve(read_metrics(self.path), self.curve_path)

    def _append(self, record):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path):
    """The records of a ``metrics.jsonl`` (a missing file: none; a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        if isinstance(record, dict) and "iteration" in record:
            records.append(record)
    return records


def plot_curve(records, path):
    """Loss (log scale) and bbox/segm mAP against the iteration, written atomically as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install 'retinamask[torch]')", Path(path).name)
        return None
    import io

    losses = [r for r in records if "loss" in r]
    evals = [r for r in records if "bbox_AP" in r or "segm_AP" in r]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, dpi=100)
    names = sorted({k for r in losses for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    for name in names:
        points = [(r["iteration"], r[name]) for r in losses if name in r and r[name] > 0 and math.isfinite(r[name])]
        if points:
            top.plot(*zip(*points), label=name, linewidth=2.0 if name == "loss" else 1.0)
    top.set_yscale("log")
    top.set_ylabel("training loss")
    top.grid(True, which="both", alpha=0.3)
    if names:
        top.legend(fontsize=8, loc="upper right")
    for key, label in (("bbox_AP", "bbox mAP"), ("segm_AP", "segm mAP")):
        points = [(r["iteration"], r[key]) for r in evals if key in r]
        if points:
            bottom.plot(*zip(*points), marker="o", label=label)
            bottom.annotate(f"{points[-1][1]:.3f}", points[-1], textcoords="offset points", xytext=(4, 4))
    split = f" on {evals[-1]['split']} ({evals[-1]['images']} images)" if evals else ""
    bottom.set_ylabel(f"COCO mAP@[.5:.95]{split}")
    bottom.set_xlabel("iteration")
    bottom.set_ylim(0, 1)
    bottom.grid(True, alpha=0.3)
    if evals:
        bottom.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


__all__ = ["CURVE_NAME", "METRICS_NAME", "MetricsLog", "plot_curve", "read_metrics"]
