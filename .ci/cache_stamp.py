"""Keep a Jupyter Book execution cache honest about what the notebooks import.

jupyter-cache re-runs a notebook only when the notebook changes. The chapters
also depend on the code of ``dmm_helpers`` and on the shipped models, so a
cached output could show numbers from old code or an old model. This stamps
the cache with a digest of those inputs and empties it when they change.

    python .ci/cache_stamp.py check _build   # before a build: drop a stale cache
    python .ci/cache_stamp.py write _build   # after a successful build
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def digest() -> str:
    inputs = sorted((ROOT / "dmm_helpers").glob("*.py")) + [
        ROOT / "dmm_helpers" / "pretrained.json"
    ]
    inputs += sorted((ROOT / "pretrained").glob("*/*"))
    h = hashlib.sha256()
    for path in inputs:
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def main() -> None:
    command, build_dir = sys.argv[1], Path(sys.argv[2])
    cache = build_dir / ".jupyter_cache"
    stamp = build_dir / ".jupyter_cache.inputs"
    if command == "check":
        built = cache.exists() or (build_dir / ".doctrees").exists()
        if built and (not stamp.exists() or stamp.read_text() != digest()):
            # Sphinx's own environment would skip the unchanged notebooks, so
            # it goes too, with the pages it wrote.
            print(f"dmm_helpers or the shipped models changed: emptying {build_dir}")
            for stale in (
                cache,
                build_dir / ".doctrees",
                build_dir / "html",
                build_dir / "jupyter_execute",
            ):
                shutil.rmtree(stale, ignore_errors=True)
    elif command == "write":
        build_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest())
    else:
        sys.exit(f"unknown command {command!r}: use check or write")


if __name__ == "__main__":
    main()
