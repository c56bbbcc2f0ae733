"""The lab image: built once by ci/lab-image/build.sh, cached under CACHE by content."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from .sh import LabError

RECIPE = Path(__file__).resolve().parent.parent / "lab-image"
CACHE = Path(os.environ.get("LAB_IMAGE_CACHE", "/var/cache/pgpool-guide-lab"))


def cache_key() -> str:
    """What the image should contain: the recipe's files, hashed."""
    h = hashlib.sha256()
    for name in ("build.sh", "packages.txt"):
        h.update(name.encode() + b"\0" + (RECIPE / name).read_bytes())
    return h.hexdigest()[:16]


def ensure_image(log=print) -> Path:
    """The image directory for the current recipe, building it if it is missing."""
    path = CACHE / f"image-{cache_key()}"
    if (path / "base").is_dir() and (path / "db").is_dir():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob("image-*"):          # stale images and half-built ones
        shutil.rmtree(old, ignore_errors=True)
    building = CACHE / f"image-{cache_key()}.building"
    log(f"lab image {path.name} is not cached: building it (about a minute; once per recipe change)")
    start = time.monotonic()
    proc = subprocess.run(["bash", str(RECIPE / "build.sh"), str(building)], text=True)
    if proc.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise LabError(f"building the lab image failed (exit {proc.returncode}); "
                       "the output above says which command. Is the Debian mirror reachable?")
    building.rename(path)
    log(f"lab image built in {time.monotonic() - start:.0f} s: {path}")
    return path
