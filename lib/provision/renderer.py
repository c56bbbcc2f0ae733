"""Fetch what draws the diagrams of the run records and the book (lib/diagrams.py): mermaid's browser
build, from the npm registry's tarball, checked against its published sha512 integrity before it is kept.

    python -m lib.provision.renderer DEST      (ci/bootstrap runs it once; a no-op when DEST exists)

Standard library only, so no node or npm is needed on the machine."""
from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "11.12.0"         # JupyterLab 4 and nbconvert's lab template use mermaid 11
TARBALL = f"https://registry.npmjs.org/mermaid/-/mermaid-{VERSION}.tgz"
INTEGRITY = "sha512-ZudVx73BwrMJfCFmSSJT84y6u5brEoV8DOItdHomNLz32uBjNrelm7mg95X7g+C6UoQH/W6mBLGDEDv73JdxBg=="
MEMBER = "package/dist/mermaid.min.js"


def fetch(dest: Path) -> None:
    if dest.is_file():
        return
    with urllib.request.urlopen(TARBALL, timeout=60) as response:
        data = response.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        raise SystemExit(f"renderer: {TARBALL} does not match its published integrity; not kept")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        script = tar.extractfile(MEMBER).read()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(script)
    tmp.replace(dest)


if __name__ == "__main__":
    fetch(Path(sys.argv[1]))
