"""The model shipped inside the package, reachable by one name.

``retinamask_shapes_small`` (see retinamask/assets/README.md) is accepted wherever a checkpoint
is: ``--weights`` / ``--weight_path`` take the name, and the config then defaults to the one
saved with it. Commands that need a model and are given none use it, and say so.
"""

from pathlib import Path

SHIPPED_NAME = "retinamask_shapes_small"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED_WEIGHTS = ASSETS / f"{SHIPPED_NAME}.pth"
SHIPPED_CONFIG = ASSETS / f"{SHIPPED_NAME}.yaml"  # the fully resolved config the training run saved

# the same model exported (end2end, --resize original, dynamic batch), verified against PyTorch; made by
# SHIPPED_ONNX_COMMAND and checked against a fresh export in CI (tests/test_shipped_onnx.py)
SHIPPED_ONNX = ASSETS / f"{SHIPPED_NAME}.onnx"
# export_onnx's options of that command (the demo's export makes the same model: one model, one set of figures)
SHIPPED_ONNX_OPTIONS = {"layout": "end2end", "resize": "original", "dynamic_batch": True}
SHIPPED_ONNX_COMMAND = (
    f"retinamask export --weight_path {SHIPPED_NAME} --save_path retinamask/assets/{SHIPPED_NAME}.onnx "
    "--resize original --dynamic-batch"
)


def shipped_onnx_path():
    """The shipped model's ONNX (ConfigError if this install lacks it)."""
    from retinamask.core.errors import ConfigError

    if not SHIPPED_ONNX.is_file():
        raise ConfigError(f"the shipped ONNX model is missing from this install; make it with: {SHIPPED_ONNX_COMMAND}")
    return SHIPPED_ONNX


def is_shipped_name(text):
    """True for the shipped model's name (with or without .pth), unless a file of that name exists."""
    if text is None or Path(text).exists():
        return False
    return Path(str(text)).name.removesuffix(".pth") == SHIPPED_NAME


def resolve_model_files(config=None, weights=None):
    """(config, weights, note) for a command given a config and/or weights, or neither.

    - neither: the shipped model (the note says so);
    - weights = the shipped name: its file, and its config unless one is given;
    - weights without a config: the config saved with them (:func:`config_beside`; the note
      says so), else ConfigError;
    - otherwise: as given (note None).
    """
    from retinamask.core.errors import ConfigError

    if config is None and weights is None:
        return (
            SHIPPED_CONFIG,
            SHIPPED_WEIGHTS,
            (
                f"no model named: using the shipped model {SHIPPED_NAME} ({SHIPPED_WEIGHTS.name}, 6 shape classes; "
                "retinamask/assets/README.md)"
            ),
        )
    if is_shipped_name(weights):
        return (SHIPPED_CONFIG if config is None else config), SHIPPED_WEIGHTS, None
    if config is None:
        beside = config_beside(weights)
        if beside is None:
            raise ConfigError(
                f"a config is needed with the weights {weights} (none is saved beside them)", path="command line"
            )
        return beside, weights, f"no config named: using {beside}, saved with the weights"
    return config, weights, None


def config_beside(weights_path):
    """The config saved with a checkpoint, if any: ``{stem}.yaml`` next to it, or the
    ``config.yaml`` that ``retinamask train`` writes into its output folder."""
    if weights_path is None:
        return None
    path = Path(weights_path)
    for candidate in (path.with_suffix(".yaml"), path.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    return None
