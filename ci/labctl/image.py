"""The lab image: built once by ci/lab-image/build.sh, cached under CACHE by content."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from lib.params import LAB_RELEASES

from .sh import LabError

RELEASES = [name for name, _ in LAB_RELEASES.values()]

RECIPE = Path(__file__).resolve().parent.parent / "lab-image"
CACHE = Path(os.environ.get("LAB_IMAGE_CACHE", "/var/cache/pgpool-guide-lab"))


def cache_key(release: str) -> str:
    """What the image should contain: the recipe's files and the release, hashed."""
    h = hashlib.sha256(release.encode() + b"\0")
    for name in ("build.sh", "packages.txt"):
        h.update(name.encode() + b"\0" + (RECIPE / name).read_bytes())
    return h.hexdigest()[:16]


def ensure_image(release: str = "bookworm", log=print) -> Path:
    """The image directory for the current recipe and this Debian release, building it if
    it is missing. Each release keeps its own cached image, so two labs can differ."""
    path = CACHE / f"image-{release}-{cache_key(release)}"
    if (path / "base").is_dir() and (path / "db").is_dir():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    # stale images of this release, half-built ones, and those named before releases were
    stale = [p for p in CACHE.glob("image-*") if p.name.startswith(f"image-{release}-")
             or not any(p.name.startswith(f"image-{r}-") for r in RELEASES)]
    for old in stale:
        shutil.rmtree(old, ignore_errors=True)
    building = CACHE / f"{path.name}.building"
    log(f"lab image {path.name} is not cached: building it (1-2 minutes; once per recipe change)")
    start = time.monotonic()
    proc = subprocess.run(["bash", str(RECIPE / "build.sh"), str(building), release], text=True)
    if proc.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise LabError(f"building the lab image failed (exit {proc.returncode}); "
                       "the output above says which command. Is the Debian mirror reachable?")
    building.rename(path)
    log(f"lab image built in {time.monotonic() - start:.0f} s: {path}")
    return path
