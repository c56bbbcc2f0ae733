"""Running host commands for the lab, with errors that say what failed."""
from __future__ import annotations

import subprocess


class LabError(RuntimeError):
    pass


def run(*argv: str, check: bool = True, quiet: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def ok(*argv: str) -> bool:
    """Run a clean-up command whose failure only means there was nothing to clean."""
    return subprocess.run(argv, capture_output=True).returncode == 0
