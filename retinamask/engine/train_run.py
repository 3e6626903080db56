"""``retinamask train`` as library calls: a resumable training run in an output folder, and the
COCO evaluation of its final checkpoint.

>>> final = train(load_config("retinamask_shapes_small"), "data/shapes", "runs/shapes")
>>> report = evaluate_checkpoint(final, "runs/shapes", "data/shapes")   # DIR/val -> eval_val.json

Output folder: see :mod:`retinamask.engine.trainer` (``config.yaml``, ``model_<iteration>.pth``,
``model_final.pth``, ``last_checkpoint``).
"""

import logging
from pathlib import Path

import torch

from retinamask.core.errors import ConfigError, InputError
from retinamask.engine.trainer import (
    CONFIG_NAME,
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    Trainer,
    evaluate_split,
    last_checkpoint_path,
)
from retinamask.formats.coco_layout import annotation_file

log = logging.getLogger(__name__)


def train(
    cfg,
    data_dir,
    output_dir,
    *,
    resume=True,
    max_iter=None,
    num_workers=None,
    seed=0,
    progress=None,
    threads=2,
    log_period=20,
    split="train",
    eval_period=0,
    eval_split="val",
):
    """Train (or continue training) a RetinaMask on the COCO-format dataset under ``data_dir``.

    cfg: a config (``retinamask.config.load_config``); max_iter overrides SOLVER.MAX_ITER;
    a fresh run starts from the weights named by ``MODEL.WEIGHT`` (a path, or the shipped
    model's name) where it is set -- those whose name and shape fit; a resumed run ignores it.
    resume: continue from ``output_dir/last_checkpoint`` when there is one; False starts afresh.
    eval_period: evaluate on ``data_dir/<eval_split>`` every N iterations and at the end (0: never);
    the losses and these mAPs go to ``output_dir/metrics.jsonl`` and ``training_curve.png``.
    Returns the path of ``model_final.pth``.
    """
    torch.set_num_threads(threads)
    if max_iter is not None:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.MAX_ITER = int(max_iter)
        cfg.freeze()
    eval_annotations = annotation_file(data_dir, eval_split)
    if eval_period > 0 and not eval_annotations.is_file():  # found now, not after the first N iterations
        raise InputError(
            f"the evaluation split {eval_split!r} has no annotation file (--eval-period)", eval_annotations
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, data_dir, output_dir, seed=seed, num_workers=num_workers, split=split)
    checkpoint = last_checkpoint_path(output_dir) if resume else None
    if not resume:  # a stale pointer would make a later resume continue the old run
        (output_dir / LAST_CHECKPOINT).unlink(missing_ok=True)
    if checkpoint is not None:
        _warn_if_config_changed(output_dir / CONFIG_NAME, trainer.cfg)
        trainer.resume(checkpoint)
        log.info("resumed from %s at iteration %d", checkpoint, trainer.iteration)
    elif trainer.cfg.MODEL.WEIGHT:
        trainer.initialize(_weights_file(trainer.cfg.MODEL.WEIGHT))
    trainer.write_config()
    if (
        trainer.iteration >= trainer.cfg.SOLVER.MAX_ITER
        and checkpoint is not None
        and checkpoint.name == FINAL_CHECKPOINT
    ):
        log.info("already trained to iteration %d: %s", trainer.iteration, checkpoint)
        return checkpoint
    return trainer.run(progress=progress, log_period=log_period, eval_period=eval_period, eval_split=eval_split)


def _weights_file(weights):
    """MODEL.WEIGHT as a file: the shipped model's name, or a path."""
    from retinamask.config.shipped import SHIPPED_WEIGHTS, is_shipped_name

    return SHIPPED_WEIGHTS if is_shipped_name(weights) else Path(weights)


def _warn_if_config_changed(path, cfg):
    from retinamask.config import load_config

    if not path.is_file():
        return
    try:
        previous = load_config(path)
    except ConfigError:
        return
    changed = _diff(previous, cfg)
    if changed:
        log.warning("the config differs from the one the checkpoints were trained with: %s", ", ".join(changed[:8]))


def _diff(a, b, prefix=""):
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if hasattr(va, "items") and hasattr(vb, "items"):
            out += _diff(va, vb, f"{prefix}{key}.")
        elif (list(va) if isinstance(va, (list, tuple)) else va) != (list(vb) if isinstance(vb, (list, tuple)) else vb):
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


def evaluate_checkpoint(checkpoint, output_dir, data_dir, split="val"):
    """COCO bbox/segm evaluation of a trained ``checkpoint`` (with the ``config.yaml`` of
    ``output_dir``) on ``data_dir/<split>``; the report is also written to
    ``output_dir/eval_<split>.json``. Returns ``retinamask.evaluation.evaluate_coco``'s report."""
    from retinamask.config import load_config
    from retinamask.evaluation import write_stats_json
    from retinamask.modeling import build_model
    from retinamask.modeling.checkpoint import load_checkpoint

    cfg = load_config(Path(output_dir) / CONFIG_NAME)
    model = build_model(cfg)
    load_checkpoint(model, checkpoint)
    report = evaluate_split(model, cfg, data_dir, split)
    write_stats_json(Path(output_dir) / f"eval_{split}.json", report)
    return report


__all__ = ["evaluate_checkpoint", "train"]
