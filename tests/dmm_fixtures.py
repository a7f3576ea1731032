"""What several test files share: the JSB file, small models, random batches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
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


def require_jsb() -> Path:
    """:data:`JSB_PATH`, for a test that needs the canonical file.

    When the file is missing the test fails if ``CI`` is set (a CI run that
    skipped the real data would pass without testing it) and is skipped
    otherwise, saying where the file should be.
    """
    if JSB_PATH.is_file():
        return JSB_PATH
    message = (
        f"the canonical JSB file is not at {JSB_PATH}; set DMM_JSB_PATH to a copy "
        "(see ../shared/data/README.md)"
    )
    if "CI" in os.environ:
        pytest.fail(f"{message}. CI is set, so a missing file fails the test")
    pytest.skip(message)


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


def small_dmm(
    num_iafs: int = 0, seed: int = 0, guide: str = "st-r", **options: str
) -> DMM:
    """A tiny float64 DMM whose learned starts are away from zero, so they matter.

    ``options``: other :class:`DMMConfig` choices, e.g. ``scale="variance"``.
    """
    torch.manual_seed(seed)
    values = {**SMALL.to_dict(), "num_iafs": num_iafs, "guide": guide, **options}
    config = DMMConfig(**values)
    dmm = DMM(config).double()
    with torch.no_grad():
        for name, start in dmm.named_parameters():
            if name in ("z_0", "z_q_0") or name.endswith("h_0"):
                start.normal_()
    return dmm
