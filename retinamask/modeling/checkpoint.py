"""Checkpoints in the original's format: ``{"model": state_dict, "optimizer": ..., "iteration": ...}``.

Loading never unpickles arbitrary objects (``torch.load(weights_only=True)``). A bare
state dict and ``module.``-prefixed keys (DataParallel/DDP) are accepted.
"""

import io
import pickle
from pathlib import Path

import torch

from retinamask.core.errors import CheckpointError, one_line
from retinamask.core.fileio import atomic_write_bytes


def read_state_dict(path):
    """The model state dict stored at ``path`` (wrapped or bare), without ``module.`` prefixes.

    Raises CheckpointError naming the file for a missing file, a file that is not a torch
    checkpoint, or one that holds arbitrary pickled objects (refused, never executed).
    """
    obj = read_checkpoint(path)
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("no model state dict found (expected {'model': state_dict} or a state dict)", path=path)
    return {_strip_module(k): v for k, v in state.items()}


def load_checkpoint(model, path):
    """Load the weights at ``path`` into ``model`` strictly; returns the state dict it loaded.

    Any mismatch -> one CheckpointError listing missing keys, unexpected keys and shape conflicts.
    """
    state = read_state_dict(path)
    check_compatible(model, state, path)
    model.load_state_dict(state, strict=True)
    return state


def load_matching(model, state, path=None):
    """Load the tensors of ``state`` whose name and shape fit ``model`` (fine-tuning, the
    original's ``MODEL.WEIGHT``); the rest of ``model`` keeps its initialization.

    Returns ``(loaded, new, reshaped)``: the names loaded, the model's names absent from
    ``state``, and ``"name: checkpoint (..) vs model (..)"`` for those whose shape differs.
    Raises CheckpointError if no tensor fits (another architecture altogether).
    """
    expected = model.state_dict()
    loaded = [k for k, v in expected.items() if k in state and tuple(state[k].shape) == tuple(v.shape)]
    new = [k for k in expected if k not in state]
    reshaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not loaded:
        raise CheckpointError("no tensor of the checkpoint fits the model built from the config", path=path)
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return loaded, new, reshaped


def check_compatible(model, state, path=None):
    """Raise CheckpointError if ``state`` does not fit ``model`` exactly (keys and shapes)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    conflicts = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or conflicts:
        parts = []
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape conflicts", conflicts),
        ):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{title}: {shown}")
        from retinamask.config.shipped import config_beside

        beside = config_beside(path)
        hint = f" -- the config saved with these weights is {beside}" if beside is not None else ""
        raise CheckpointError(
            "checkpoint does not match the model built from the config (wrong config for these weights?) -- "
            + "; ".join(parts)
            + hint,
            path=path,
        )


def save_checkpoint(path, model, optimizer=None, scheduler=None, iteration=None, **extra):
    """Write ``{"model", "optimizer", "scheduler", "iteration", ...}`` atomically (original layout)."""
    payload = {"model": model.state_dict()}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    if iteration is not None:
        payload["iteration"] = int(iteration)
    payload.update(extra)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path):
    """The whole checkpoint object (e.g. to resume training), loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("no such checkpoint file", path=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), None)
        if detail is None:  # not a pickle at all (e.g. "Unsupported operand" on a text file)
            raise CheckpointError(f"not a readable PyTorch checkpoint ({_weights_only_reason(e)})", path=path) from None
        raise CheckpointError(
            "refused: the file holds pickled Python objects beyond tensors and plain containers "
            f"(loading it would run arbitrary code); {detail}",
            path=path,
        ) from None
    except Exception as e:  # torch raises many types for files that are not checkpoints
        raise CheckpointError(
            f"not a readable PyTorch checkpoint ({type(e).__name__}: {one_line(e, 200)})", path=path
        ) from None


def _strip_module(key):
    return key[len("module.") :] if key.startswith("module.") else key


def _weights_only_reason(e):
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if "WeightsUnpickler error" in line]
    return after[0] if after else one_line(e, 200)
