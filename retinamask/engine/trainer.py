"""Training loop with the original's solver (SGD, warm-up, multi-step schedule) and resumable checkpoints.

>>> Trainer(cfg, "data/shapes", "runs/shapes").run()   # the resumable run: engine.train_run.train

Output folder: ``config.yaml`` (the config used, CLASS_NAMES and RETINANET.NUM_CLASSES
filled from the dataset), ``model_<iteration:07d>.pth`` every ``SOLVER.CHECKPOINT_PERIOD``
iterations and ``model_final.pth`` at the end (``{"model", "optimizer", "scheduler",
"iteration"}`` as the original writes them, plus the loss statistics and RNG state needed
to resume exactly), ``last_checkpoint`` (the name of the newest one). Rerunning the same
command after an interruption continues from ``last_checkpoint`` with the same optimizer,
scheduler, data order and augmentations.
"""

import bisect
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from retinamask.core.errors import CheckpointError, ConfigError
from retinamask.core.fileio import atomic_write_text
from retinamask.formats.coco_layout import annotation_file
from retinamask.modeling.checkpoint import read_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
FINAL_CHECKPOINT = "model_final.pth"
CONFIG_NAME = "config.yaml"


def make_optimizer(cfg, model):
    """SGD with one parameter group per trainable tensor, as the original's ``make_optimizer``:
    biases get ``BASE_LR * BIAS_LR_FACTOR`` and ``WEIGHT_DECAY_BIAS``, the rest ``BASE_LR`` and
    ``WEIGHT_DECAY``."""
    s = cfg.SOLVER
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, weight_decay = s.BASE_LR, s.WEIGHT_DECAY
        if name.endswith("bias"):
            lr, weight_decay = s.BASE_LR * s.BIAS_LR_FACTOR, s.WEIGHT_DECAY_BIAS
        groups.append({"params": [param], "lr": lr, "weight_decay": weight_decay})
    return torch.optim.SGD(groups, lr=s.BASE_LR, momentum=s.MOMENTUM)


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """The original's schedule: at iteration i (0-based),
    ``lr = base_lr * warmup(i) * gamma ** (number of milestones <= i)`` where warmup(i) is
    ``factor`` ("constant") or ``factor * (1 - i / iters) + i / iters`` ("linear") for
    i < ``warmup_iters`` and 1 afterwards. Call ``step()`` after each iteration."""

    def __init__(
        self,
        optimizer,
        milestones,
        gamma=0.1,
        warmup_factor=1.0 / 3,
        warmup_iters=500,
        warmup_method="linear",
        last_epoch=-1,
    ):
        milestones = list(milestones)
        if milestones != sorted(milestones):
            raise ConfigError(f"SOLVER.STEPS must be increasing, got {milestones}")
        if warmup_method not in ("constant", "linear"):
            raise ConfigError(f"SOLVER.WARMUP_METHOD must be 'constant' or 'linear', got {warmup_method!r}")
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def factor(self, iteration):
        warmup = 1.0
        if iteration < self.warmup_iters:
            if self.warmup_method == "constant":
                warmup = self.warmup_factor
            else:
                alpha = iteration / self.warmup_iters
                warmup = self.warmup_factor * (1 - alpha) + alpha
        return warmup * self.gamma ** bisect.bisect_right(self.milestones, iteration)

    def get_lr(self):
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]


def make_scheduler(cfg, optimizer):
    s = cfg.SOLVER
    return WarmupMultiStepLR(optimizer, s.STEPS, s.GAMMA, s.WARMUP_FACTOR, s.WARMUP_ITERS, s.WARMUP_METHOD)


def seed_everything(seed):
    """Seed Python, NumPy and torch (the data pipeline draws from its own seeded generators)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def config_for_dataset(cfg, dataset, output_dir=None, max_iter=None):
    """A copy of ``cfg`` with CLASS_NAMES and CATEGORY_IDS = the dataset's categories (sorted by id),
    RETINANET.NUM_CLASSES = K + 1, and optionally OUTPUT_DIR and SOLVER.MAX_ITER."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.CLASS_NAMES = tuple(dataset.class_names)
    cfg.CATEGORY_IDS = tuple(int(i) for i in dataset.category_ids)
    cfg.RETINANET.NUM_CLASSES = len(dataset.class_names) + 1
    if output_dir is not None:
        cfg.OUTPUT_DIR = str(output_dir)
    if max_iter is not None:
        cfg.SOLVER.MAX_ITER = int(max_iter)
    cfg.freeze()
    return cfg


def last_checkpoint_path(output_dir):
    """The checkpoint named by ``output_dir/last_checkpoint``, or None."""
    pointer = Path(output_dir) / LAST_CHECKPOINT
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not name:
        return None
    path = Path(output_dir) / Path(name).name
    if not path.is_file():
        raise CheckpointError(f"{LAST_CHECKPOINT} names {name}, which does not exist", path=pointer)
    return path


class Trainer:
    """Model, loss, optimizer, scheduler and data of one training run in ``output_dir``."""

    def __init__(self, cfg, data_dir, output_dir, seed=0, num_workers=None, split="train"):
        from retinamask.data.coco_dataset import build_train_dataset
        from retinamask.modeling import build_model
        from retinamask.modeling.losses import attach_losses

        self.output_dir = Path(output_dir)
        self.data_dir = Path(data_dir)
        self.seed = int(seed)
        self.num_workers = num_workers
        seed_everything(self.seed)
        self.dataset = build_train_dataset(cfg, data_dir, split)
        self.cfg = config_for_dataset(cfg, self.dataset, self.output_dir)
        self.model = build_model(self.cfg).train()
        self.loss = attach_losses(self.model, self.cfg)
        self.optimizer = make_optimizer(self.cfg, self.model)
        self.scheduler = make_scheduler(self.cfg, self.optimizer)
        self.iteration = 0

    # -- checkpoints -----------------------------------------------------------------------

    def save(self, name):
        """Write ``output_dir/name`` atomically and point ``last_checkpoint`` at it."""
        path = self.output_dir / name
        save_checkpoint(
            path,
            self.model,
            self.optimizer,
            self.scheduler,
            self.iteration,
            loss_state=self.loss.state_dict(),
            rng_state=torch.get_rng_state(),
            seed=self.seed,
        )
        atomic_write_text(self.output_dir / LAST_CHECKPOINT, name + "\n")
        return path

    def resume(self, path):
        """Load model, optimizer, scheduler, iteration, loss statistics and RNG state from ``path``."""
        from retinamask.modeling.checkpoint import check_compatible

        checkpoint = read_checkpoint(path)
        missing = [k for k in ("model", "optimizer", "scheduler", "iteration") if k not in checkpoint]
        if missing:
            raise CheckpointError(f"cannot resume: the checkpoint lacks {', '.join(missing)}", path=path)
        check_compatible(self.model, checkpoint["model"], path)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.iteration = int(checkpoint["iteration"])
        if "loss_state" in checkpoint:
            self.loss.load_state_dict(checkpoint["loss_state"])
        if "rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["rng_state"])
        if checkpoint.get("seed", self.seed) != self.seed:
            log.warning("%s was trained with --seed %s; continuing with --seed %s", path, checkpoint["seed"], self.seed)

    def initialize(self, path):
        """Start from the model weights at ``path`` (``MODEL.WEIGHT``): the tensors whose name and
        shape fit are loaded, the others (e.g. a widened head) keep their fresh initialization;
        optimizer, schedule and iteration start afresh. Logs what was not loaded."""
        from retinamask.modeling.checkpoint import load_matching, read_state_dict

        loaded, new, reshaped = load_matching(self.model, read_state_dict(path), path)
        log.info("initialized %d of %d tensors from %s", len(loaded), len(loaded) + len(new) + len(reshaped), path)
        for title, names in (("not in the checkpoint", new), ("shape differs", reshaped)):
            if names:
                log.warning("%s, left at their initialization (%s): %s", path, title, ", ".join(names))
        return loaded, new, reshaped

    def write_config(self):
        atomic_write_text(self.output_dir / CONFIG_NAME, self.cfg.dump())

    # -- the loop --------------------------------------------------------------------------

    def train_step(self, images, image_sizes, targets):
        """One SGD step; returns the losses as floats (and "loss", their sum)."""
        losses = self.model(images, image_sizes, targets)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"non-finite loss at iteration {self.iteration}: "
                + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                + " (lower SOLVER.BASE_LR or lengthen the warm-up)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        values = {k: float(v.detach()) for k, v in losses.items()}
        values["loss"] = float(total.detach())
        return values

    def evaluate(self, split):
        """COCO evaluation of the current weights on ``data_dir/<split>``; the model is put back in
        training mode and torch's RNG state restored, so that evaluating does not change the run."""
        rng_state = torch.get_rng_state()
        try:
            return evaluate_split(self.model, self.cfg, self.data_dir, split)
        finally:
            self.model.train()
            torch.set_rng_state(rng_state)

    def run(self, progress=None, log_period=20, eval_period=0, eval_split="val"):
        """Train from ``self.iteration`` to SOLVER.MAX_ITER; returns the final checkpoint path.

        Writes the training curve (:mod:`retinamask.engine.train_metrics`): the mean losses every
        ``log_period`` iterations and, when ``eval_period`` > 0, the bbox/segm mAP on
        ``data_dir/<eval_split>`` every ``eval_period`` iterations and at the end.
        """
        from retinamask.data.coco_dataset import build_train_loader
        from retinamask.engine.train_metrics import MetricsLog

        max_iter = self.cfg.SOLVER.MAX_ITER
        period = self.cfg.SOLVER.CHECKPOINT_PERIOD
        self.model.train()
        loader = build_train_loader(
            self.cfg, self.dataset, max_iter, start_iter=self.iteration, seed=self.seed, num_workers=self.num_workers
        )
        if progress is None:
            progress = sys.stderr.isatty()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=max_iter, initial=self.iteration, desc="train", unit="it", dynamic_ncols=True)
        averages, start, start_iteration = {}, time.perf_counter(), self.iteration
        metrics = MetricsLog(self.output_dir, start_iteration)
        window_start, window_iteration = start, self.iteration
        try:
            for images, image_sizes, targets, _ in loader:
                values = self.train_step(images, image_sizes, targets)
                metrics.add_losses(values)
                for k, v in values.items():  # smoothed for display, like the original's meters
                    averages[k] = v if k not in averages else 0.9 * averages[k] + 0.1 * v
                lr = self.optimizer.param_groups[0]["lr"]
                if bar is not None:
                    bar.set_postfix_str(
                        " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in averages.items()) + f" lr={lr:.2e}",
                        refresh=False,
                    )
                    bar.update(1)
                elif self.iteration % log_period == 0 or self.iteration == max_iter:
                    rate = (self.iteration - start_iteration) / max(time.perf_counter() - start, 1e-9)
                    eta = (max_iter - self.iteration) / max(rate, 1e-9)
                    log.info(
                        "iter %d/%d  %s  lr %.2e  %.2f it/s  eta %s  max mem %.0f MB",
                        self.iteration,
                        max_iter,
                        "  ".join(f"{k} {v:.4f}" for k, v in averages.items()),
                        lr,
                        rate,
                        _hms(eta),
                        _max_rss_mb(),
                    )
                if self.iteration % log_period == 0 or self.iteration == max_iter:
                    now = time.perf_counter()
                    metrics.write_losses(
                        self.iteration, lr, (self.iteration - window_iteration) / max(now - window_start, 1e-9)
                    )
                    window_start, window_iteration = now, self.iteration
                if eval_period > 0 and (self.iteration % eval_period == 0 or self.iteration == max_iter):
                    self._evaluate_into(metrics, eval_split, bar)
                    window_start = time.perf_counter()  # the evaluation's time is not training speed
                if period > 0 and self.iteration % period == 0 and self.iteration < max_iter:
                    self.save(f"model_{self.iteration:07d}.pth")
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        done = self.iteration - start_iteration
        if done:
            log.info(
                "trained %d iterations in %s (%.3f s/it, %.2f it/s)",
                done,
                _hms(seconds),
                seconds / done,
                done / max(seconds, 1e-9),
            )
        return self.save(FINAL_CHECKPOINT)

    def _evaluate_into(self, metrics, split, bar=None):
        started = time.perf_counter()
        report = self.evaluate(split)
        record = metrics.write_evaluation(self.iteration, split, report["num_images"], report)
        metrics.plot()
        line = "  ".join(f"{k} {record[k]:.4f}" for k in ("bbox_AP", "segm_AP") if k in record)
        message = f"iter {self.iteration}: {split} {line}  ({time.perf_counter() - started:.0f} s)"
        if bar is not None:
            bar.write(message)
        else:
            log.info("%s", message)


def _max_rss_mb():
    try:
        import resource
    except ImportError:  # not on Windows
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _hms(seconds):
    seconds = round(seconds) if math.isfinite(seconds) else 0
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@torch.no_grad()
def evaluate_split(model, cfg, data_dir, split="val", batch_size=4, progress=False, resize=None):
    """COCO bbox/segm evaluation of the eager model on ``DIR/<split>``.

    ``resize``: a resize policy or its name (see :class:`~retinamask.engine.predictor.Predictor`);
    None: the original's test resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST); ``SeedResize(S)``: the
    deployment's fixed S x S canvas (long side resized to S).
    Returns ``retinamask.evaluation.evaluate_coco``'s report, plus ``num_images`` (the split's).
    """
    from retinamask.engine.predictor import Predictor
    from retinamask.evaluation import evaluate_coco, load_ground_truth
    from retinamask.ops.coco_results import results_from_detections
    from retinamask.ops.masks import encode_masks

    data_dir = Path(data_dir)
    ann_file = annotation_file(data_dir, split)
    dataset, _ = load_ground_truth(ann_file)
    category_ids = sorted(c["id"] for c in dataset["categories"])
    predictor = Predictor(model.eval(), cfg, resize=resize)
    images = sorted(dataset["images"], key=lambda im: im["id"])
    results = []
    iterator = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"eval {split}", unit="batch")
    for start in iterator:
        chunk = images[start : start + batch_size]
        predictions = predictor.predict_batch([data_dir / split / im["file_name"] for im in chunk])
        for im, detections in zip(chunk, predictions):
            results += results_from_detections(im["id"], detections, category_ids, encode_masks(detections.masks))
    report = evaluate_coco(dataset, results)
    report["num_images"] = len(images)
    return report


__all__ = [
    "Trainer",
    "WarmupMultiStepLR",
    "config_for_dataset",
    "evaluate_split",
    "last_checkpoint_path",
    "make_optimizer",
    "make_scheduler",
    "seed_everything",
]
