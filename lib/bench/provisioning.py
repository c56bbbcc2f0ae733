"""How long the lab and provisioning take: lab up and down, a fresh provisioning (each step and each
notebook), a second run that changes nothing, and --check."""
from __future__ import annotations

import json
import subprocess
import time
from collections import defaultdict
from pathlib import Path

from lib import REPO
from lib.bench import spread

LAB, PROVISION = REPO / "ci" / "lab", REPO / "ci" / "provision"


def timed(*argv, env=None) -> tuple[float, str]:
    start = time.monotonic()
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def record_of(output: str) -> dict:
    path = REPO / output.strip().splitlines()[-1].split("Record: ")[1].strip().rstrip("/")
    return json.loads((Path(path) / "summary.json").read_text())


def measure(params_file: Path, rounds: int, say) -> dict:
    """`rounds` times: lab down, up, provision fresh, provision again, --check; the lab is left up
    and provisioned."""
    walls = defaultdict(list)
    steps: dict[str, list[float]] = defaultdict(list)
    second_steps: dict[str, list[float]] = defaultdict(list)
    notebooks: dict[str, list[float]] = defaultdict(list)
    changed_second, fact_reads = [], []
    for i in range(1, rounds + 1):
        timed(LAB, "down", params_file)
        walls["lab up"].append(timed(LAB, "up", params_file)[0])
        seconds, out = timed(PROVISION, params_file)
        walls["provision, fresh lab"].append(seconds)
        summary = record_of(out)
        per_notebook = defaultdict(float)
        for s in summary["steps"]:
            key = f"{s['notebook']} {('Step ' + str(s['step'])) if s['step'] else s['title']}"
            steps[key].append(s["seconds"])
            per_notebook[s["notebook"]] += s["seconds"]
        for name, total in per_notebook.items():
            notebooks[name].append(total)
        walls["steps' own time, fresh"].append(sum(s["seconds"] for s in summary["steps"]))
        seconds, out = timed(PROVISION, params_file)
        walls["provision again (nothing to change)"].append(seconds)
        summary = record_of(out)
        changed_second.append(summary["steps_changed"])
        fact_reads.append(summary.get("fact_reads", {}))
        for s in summary["steps"]:
            second_steps[f"{s['notebook']} {('Step ' + str(s['step'])) if s['step'] else s['title']}"].append(s["seconds"])
        walls["provision --check"].append(timed(PROVISION, "--check", params_file)[0])
        if i < rounds:
            walls["lab down"].append(timed(LAB, "down", params_file)[0])
        say(f"  round {i}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in walls.items()))
    slowest = sorted(steps, key=lambda k: -spread(steps[k])["median"])[:12]
    return {"wall": {k: spread(v) for k, v in walls.items()},
            "notebooks, fresh": {k: spread(v) for k, v in notebooks.items()},
            "slowest steps, fresh": {k: spread(steps[k]) for k in slowest},
            "slowest steps, second run": {k: spread(second_steps[k]) for k in
                                          sorted(second_steps, key=lambda k: -spread(second_steps[k])["median"])[:8]},
            "steps changed by the second run": changed_second,
            "fact round trips per host, second run": fact_reads,
            "commands": [f"ci/lab down|up {params_file.name}", f"ci/provision {params_file.name}   # fresh, then again",
                         f"ci/provision --check {params_file.name}"]}


def image(cold: bool, say) -> dict:
    """The lab image: looked up in the cache (what every `ci/lab up` does), and, with cold, built
    from nothing into an empty cache (apt downloads included)."""
    import os
    import tempfile
    import sys
    probe = [sys.executable, "-c", "import sys; sys.path.insert(0, 'ci'); from labctl import image; image.ensure_image(log=lambda *a: None)"]
    out = {"cached": spread([timed(*probe)[0] for _ in range(3)])}
    if cold:
        with tempfile.TemporaryDirectory(prefix="bench-image-") as cache:
            say("  building the lab image from nothing (a minute or more)")
            out["cold"] = spread([timed(*probe, env={**os.environ, "LAB_IMAGE_CACHE": cache})[0]])
    return out
