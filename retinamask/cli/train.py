"""retinamask train: train a RetinaMask on a COCO-format dataset (resumable)."""

import argparse
import logging

log = logging.getLogger(__name__)

EPILOG = """\
DIR holds DIR/train/*, DIR/annotations/instances_train.json (and, for --eval,
DIR/val + instances_val.json), e.g. as written by 'retinamask data shapes'.
OUTPUT receives config.yaml, model_<iter>.pth every SOLVER.CHECKPOINT_PERIOD
iterations, model_final.pth, last_checkpoint and the training curve: metrics.jsonl
(mean losses every --log-period iterations, bbox/segm mAP every --eval-period)
and training_curve.png. Rerunning the same command after
an interruption continues from last_checkpoint (use --no-resume to start over).
--init-weights fine-tunes: a fresh run starts from another run's weights.

example:
  retinamask train --config retinamask_shapes_small --data data/shapes --output runs/shapes
  retinamask train --config retinamask_shapes_small --data data/shapes --output runs/tuned \\
      --init-weights retinamask_shapes_small --opts SOLVER.BASE_LR 0.01"""


def add_arguments(parser):
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--config", required=True, help="config: shipped name or YAML path")
    parser.add_argument("--data", required=True, metavar="DIR", help="COCO-format dataset folder")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for checkpoints and config.yaml")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides")
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from OUTPUT/last_checkpoint if present (default: yes)",
    )
    parser.add_argument(
        "--init-weights",
        default=None,
        metavar="PTH",
        help="start a fresh run from these weights (MODEL.WEIGHT: a checkpoint or the shipped model's name); "
        "tensors whose name or shape differ keep their initialization and are listed",
    )
    parser.add_argument("--max-iter", type=int, default=None, metavar="N", help="override SOLVER.MAX_ITER")
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="data loader processes (default: DATALOADER.NUM_WORKERS)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--split", default="train", help="training split name (default: train)")
    parser.add_argument(
        "--eval",
        action="store_true",
        help="after training, evaluate the eager model on DIR/val (bbox/segm mAP -> OUTPUT/eval_val.json)",
    )
    parser.add_argument(
        "--eval-period",
        type=int,
        default=0,
        metavar="N",
        help="evaluate on DIR/<--eval-split> every N iterations and at the end (default: 0 = never); the mAPs and "
        "the losses go to OUTPUT/metrics.jsonl and OUTPUT/training_curve.png",
    )
    parser.add_argument(
        "--eval-split", default="val", metavar="NAME", help="split for --eval-period and --eval (default: val)"
    )
    parser.add_argument(
        "--log-period",
        type=int,
        default=20,
        metavar="N",
        help="iterations between metrics.jsonl loss lines, and log lines when stderr is not a terminal (default: 20)",
    )


def run(args):
    from retinamask.config import load_config
    from retinamask.core.errors import ConfigError
    from retinamask.engine.train_run import evaluate_checkpoint, train

    if args.max_iter is not None and args.max_iter < 0:
        raise ConfigError(f"--max-iter must be >= 0, got {args.max_iter}", path="command line")
    if args.eval_period < 0 or args.log_period < 1:
        raise ConfigError("--eval-period must be >= 0 and --log-period >= 1", path="command line")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}", path="command line")
    opts = list(args.opts) + (["MODEL.WEIGHT", args.init_weights] if args.init_weights else [])
    cfg = load_config(args.config, opts)
    final = train(
        cfg,
        args.data,
        args.output,
        resume=args.resume,
        max_iter=args.max_iter,
        num_workers=args.workers,
        seed=args.seed,
        threads=args.threads,
        log_period=args.log_period,
        split=args.split,
        eval_period=args.eval_period,
        eval_split=args.eval_split,
    )
    print(f"final checkpoint: {final}")
    if args.eval:
        from retinamask.evaluation import format_stats_text

        report = evaluate_checkpoint(final, args.output, args.data, args.eval_split)
        print(format_stats_text(report), end="")
    return 0
