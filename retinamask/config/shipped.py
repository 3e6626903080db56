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
