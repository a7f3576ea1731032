"""What several test files share: the JSB file's location, small models, random batches."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dmm_helpers.data import Batch, make_batch
from dmm_helpers.dmm import DMM, DMMConfig

# The canonical JSB chorales: $DMM_JSB_PATH when set (conftest sets it to the
# project machines' copy), else ../shared/data/ seen from the project root.
JSB_PATH = Path(
    os.environ.get("DMM_JSB_PATH")
    or Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "jsb-chorales-quarter.json"
)

SMALL = DMMConfig(
    input_dim=88, z_dim=3, emission_dim=5, transition_dim=6, rnn_dim=7, iaf_dim=4
)


def random_batch(
    lengths: list[int], seed: int = 0, dtype: torch.dtype = torch.float64
) -> Batch:
    """Sparse random piano rolls (about 10 notes of 88 on) of the given lengths."""
    generator = torch.Generator().manual_seed(seed)
    rolls = [
        torch.bernoulli(torch.full((length, 88), 0.1, dtype=dtype), generator=generator)
        for length in lengths
    ]
    return make_batch(rolls)


def small_dmm(num_iafs: int = 0, seed: int = 0) -> DMM:
    """A tiny float64 DMM whose learned starts are away from zero, so they matter."""
    torch.manual_seed(seed)
    dmm = DMM(DMMConfig(**{**SMALL.to_dict(), "num_iafs": num_iafs})).double()
    with torch.no_grad():
        for start in (dmm.z_0, dmm.z_q_0, dmm.rnn.h_0):
            start.normal_()
    return dmm
