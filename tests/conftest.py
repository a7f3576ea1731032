"""Test-wide settings: the local JSB file when the project's machines have one."""

import os
from pathlib import Path

_SHARED_JSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsb-chorales-quarter.json"

# .ci/test sets this too; here it also holds when pytest is run by hand.
# Notebook kernels and subprocesses inherit it.
if "DMM_JSB_PATH" not in os.environ and _SHARED_JSB.is_file():
    os.environ["DMM_JSB_PATH"] = str(_SHARED_JSB)
os.environ.setdefault("MPLBACKEND", "Agg")
