"""Whether torch can be used here, and why not: the one check behind the commands that run the shipped model's
PyTorch weights where torch works and its exported ONNX where it does not (predict with no model named, demo).

Not in ``config`` beside the shipped model's paths: ``serve`` reads those and never imports torch
(the torch-free contract of pyproject.toml), while this check imports it.
"""

import importlib.util
from functools import lru_cache

from retinamask.core.errors import one_line


@lru_cache(maxsize=1)
def torch_unavailable():
    """None when ``import torch`` works here, else why not, in a few words: "no torch", or for a torch that is
    installed but fails to import (a broken or mismatched wheel) the exception it raised, in one line. Imports
    torch where it is found: the commands that ask go on to use it."""
    if importlib.util.find_spec("torch") is None:
        return "no torch"
    try:
        import torch  # noqa: F401
    except Exception as error:  # an ImportError of a missing library, or anything a broken wheel raises
        return f"torch is installed but cannot be imported ({type(error).__name__}: {one_line(error, 300)})"
    return None
