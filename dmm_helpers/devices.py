"""Where a model runs: the ``--device`` flag of the training and evaluation commands.

Its own module so that :mod:`dmm_helpers.train` and :mod:`dmm_helpers.evaluate`
both read the flag the same way without one importing the other.
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")  # the values --device accepts


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; ``"cuda"`` needs a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f'--device must be "auto", "cpu" or "cuda", got {name!r}')
    return torch.device(name)
