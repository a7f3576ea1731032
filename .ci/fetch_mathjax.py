"""Put MathJax 3 into book/_static/mathjax, so the website typesets math offline.

The book serves its own copy of MathJax (the version Jupyter Book 1 loads from
a CDN by default) instead of a CDN's: pages then render without a network, as
in the browser tests. The npm registry's tarball is downloaded once (or read
from $MATHJAX_TARBALL), checked against its SHA-256 and unpacked to a
temporary folder that is renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "3.2.2"
URL = f"https://registry.npmjs.org/mathjax/-/mathjax-{VERSION}.tgz"
SHA256 = "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"
TARGET = Path(__file__).resolve().parents[1] / "book" / "_static" / "mathjax"
# The combined TeX/MathML -> HTML component and the fonts it loads.
MEMBERS = ("package/es5/tex-mml-chtml.js", "package/es5/output/chtml/fonts/woff-v2/")
STAMP = TARGET / f"VERSION-{VERSION}"


def main() -> None:
    if STAMP.exists():
        return
    local = os.environ.get("MATHJAX_TARBALL")
    if local:
        raw = Path(local).read_bytes()
    else:
        with urllib.request.urlopen(URL, timeout=120) as response:
            raw = response.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        sys.exit(
            f"MathJax tarball from {local or URL} has SHA-256 {digest}, "
            f"expected {SHA256}"
        )
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mathjax-", dir=TARGET.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as archive:
            for member in archive.getmembers():
                if not member.isfile() or not member.name.startswith(MEMBERS):
                    continue
                relative = Path(member.name).relative_to("package/es5")
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(archive.extractfile(member).read())
        (staging / STAMP.name).write_text(f"MathJax {VERSION} from {URL}\n")
        shutil.rmtree(TARGET, ignore_errors=True)
        os.replace(staging, TARGET)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"MathJax {VERSION} installed in {TARGET}")


if __name__ == "__main__":
    main()
