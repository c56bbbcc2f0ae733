"""What the lab holds in memory: each host's processes (its container's cgroup), summed as PSS
(shared pages split between the processes that share them), idle and at its peak under load."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

from lib import REPO


def _cgroup_dirs(lab: str, host: str) -> list[Path]:
    if str(REPO / "ci") not in sys.path:
        sys.path.insert(0, str(REPO / "ci"))
    from labctl import machines
    return machines.cgroup_dirs(lab, host)


def _cgroup_dir(lab: str, host: str) -> Path:
    return _cgroup_dirs(lab, host)[0]


def cpu_seconds(params, host: str) -> float:
    """CPU time used by everything in a host's container so far (cgroup v2's cpu.stat, which the
    unified hierarchy keeps whatever controllers are enabled)."""
    for d in _cgroup_dirs(params.lab["name"], host):
        stat = d / "cpu.stat"
        if stat.exists():
            usage = dict(line.split() for line in stat.read_text().splitlines())
            return int(usage["usage_usec"]) / 1e6
    raise RuntimeError(f"no cpu.stat for {host}: is the lab up?")


def _pids(cgroup: Path) -> list[int]:
    pids = []
    for procs in cgroup.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except OSError:
            continue
    return pids


def pss_mib(cgroup: Path) -> float:
    total_kib = 0
    for pid in _pids(cgroup):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
                    break
        except OSError:                  # the process ended meanwhile
            continue
    return total_kib / 1024


def now(params) -> dict[str, float]:
    return {h.name: round(pss_mib(_cgroup_dir(params.lab["name"], h.name)), 1) for h in params.all_hosts}


class Peak:
    """Samples every host's memory twice a second while a with-block runs; keeps the largest."""

    def __init__(self, params):
        self.params, self.peak, self._stop = params, {}, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            for name, mib in now(self.params).items():
                self.peak[name] = max(self.peak.get(name, 0.0), mib)
            self._stop.wait(0.5)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False
