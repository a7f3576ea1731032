"""Test-wide settings: the local JSB file when the project's machines have one."""

import os

from dmm_fixtures import JSB_PATH

# .ci/test sets this too; here it also holds when pytest is run by hand.
# Notebook kernels and subprocesses inherit it.
if "DMM_JSB_PATH" not in os.environ and JSB_PATH.is_file():
    os.environ["DMM_JSB_PATH"] = str(JSB_PATH)
os.environ.setdefault("MPLBACKEND", "Agg")
