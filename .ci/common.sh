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
"$PYTHON" .ci/fetch_mathjax.py

# Debian packages that make the book better but are not Python packages:
# FluidSynth and a General MIDI soundfont (real instruments in the audio
# players; without them the book synthesises its own sound) and LilyPond (score
# images). Installed where this runs as root with apt-get (CI, containers,
# Colab); elsewhere the chapters fall back and this says how to install them.
install_debian_packages() {
    local missing=()
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "Note: not installing ${missing[*]} (needs root and apt-get); the book falls back without them." >&2
    fi
}
