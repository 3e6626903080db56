"""yacs configs compatible with the original RetinaMask YAML files.

>>> cfg = load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms.yaml")   # shipped name or path
>>> cfg = load_config("my.yaml", opts=["MODEL.DEVICE", "cpu"])
"""

from pathlib import Path

import yaml
from yacs.config import CfgNode

from retinamask.config.defaults import _C
from retinamask.core.errors import ConfigError, one_line

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def get_default_config():
    """A fresh copy of the defaults (upstream defaults + this project's additions)."""
    return _C.clone()


def shipped_configs():
    """Names of the YAML files shipped with the package."""
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path):
    """A path as given, or the name of a shipped config (with or without ``.yaml``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no such config file (shipped configs: {', '.join(shipped_configs())})", path=name_or_path)


def load_config(name_or_path=None, opts=()):
    """Defaults, merged with a YAML file (if given) and ``KEY VALUE`` overrides; frozen.

    Raises ConfigError naming the file and the key for unknown keys, wrong value
    types and unparsable YAML.
    """
    cfg = get_default_config()
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read YAML: {one_line(e)}", path=path) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("not a config: the top level must be a mapping of KEY: value", path=path)
        _merge_checked(cfg, CfgNode(loaded), source=path)
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"overrides must be KEY VALUE pairs, got {list(opts)}", path="command line")
        _merge_checked(cfg, _opts_to_cfg(opts), source="command line")
    cfg.freeze()
    return cfg


def _opts_to_cfg(opts):
    tree = CfgNode()
    for key, value in zip(opts[0::2], opts[1::2]):
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, CfgNode())
        node[parts[-1]] = CfgNode._decode_cfg_value(value)
    return tree


def _merge_checked(cfg, other, source, prefix=""):
    """Merge ``other`` into ``cfg`` like yacs, but name the key and the source on error."""
    for key, value in other.items():
        full = f"{prefix}{key}"
        if key not in cfg:
            hint = _close_keys(cfg, key)
            raise ConfigError(f"unknown config key {full}{hint}", path=source)
        current = cfg[key]
        if isinstance(current, CfgNode):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} must be a section (mapping), got {value!r}", path=source)
            _merge_checked(current, CfgNode(value), source, prefix=f"{full}.")
            continue
        cfg[key] = _coerce(full, current, value, source)


def _coerce(key, current, value, source):
    if isinstance(value, str) and not isinstance(current, str):
        value = CfgNode._decode_cfg_value(value)
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, (int, float)) and not isinstance(current, bool):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return type(current)(value) if isinstance(current, float) else value
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
    elif isinstance(current, (tuple, list)):
        if isinstance(value, (tuple, list)):
            return type(current)(value)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return type(current)([value])
    raise ConfigError(
        f"{key} expects {type(current).__name__} (default {current!r}), got {type(value).__name__} {value!r}",
        path=source,
    )


def _close_keys(cfg, key):
    import difflib

    close = difflib.get_close_matches(key, list(cfg.keys()), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


__all__ = ["CONFIG_DIR", "get_default_config", "load_config", "resolve_config_path", "shipped_configs"]
