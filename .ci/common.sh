# Shared set-up for .ci/test and .ci/build-book; sourced, not run.
# Usage: source .ci/common.sh EXTRA   (EXTRA is "book" or "test")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"

# torch first, and only when it is missing: an installed torch (Colab's, a CUDA
# build, a conda one) is never replaced. TORCH_SPEC picks another release.
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PYTHON" -m pip install --quiet -e ".[$1]"

# The canonical JSB chorales: a local copy beside the repository (as on the
# project's own machines) is used when present; otherwise the loader downloads
# the pinned file and checks its SHA-256.
if [ -z "${DMM_JSB_PATH:-}" ] && [ -f ../shared/data/jsb-chorales-quarter.json ]; then
    DMM_JSB_PATH="$(cd ../shared/data && pwd)/jsb-chorales-quarter.json"
    export DMM_JSB_PATH
fi
export MPLBACKEND="${MPLBACKEND:-Agg}"
