"""Refreshing the stored notebooks in place with nbclient (ci/refresh-outputs), and reading
per-step times from a run record (python -m lib.provision.notebooks times RECORD)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat

from lib import REPO

NOTEBOOKS = REPO / "notebooks"
# ipykernel 7 warns on stderr that its local TCP sockets are unencrypted: noise in a
# headless run on one machine. Errors still show.
QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]
# Cell and notebook metadata that changes on every run and documents nothing.
VOLATILE_CELL_METADATA = ("execution", "papermill", "collapsed", "scrolled")


#: notebooks that stop servers on purpose: run by hand, by nbval and by the tests, never by provisioning
DRILLS = ("04-failover-drills.ipynb",)
#: the read-only diagnosis: it provisions nothing, so provisioning does not run it either
DIAGNOSIS = ("05-troubleshooting.ipynb",)


def all_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))


def guide_notebooks() -> list[Path]:
    """What provisioning runs, in order."""
    return [p for p in all_notebooks() if p.name not in DRILLS + DIAGNOSIS]


def first_error(nb) -> str | None:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{out['ename']}: {out['evalue']}"
    return None


def refresh() -> int:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    for nb_path in all_notebooks():
        start = time.monotonic()
        nb = nbformat.read(nb_path, as_version=4)
        print(f"  {nb_path.name:<34}", end="", flush=True)
        client = NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False, extra_arguments=QUIET_KERNEL,
                                resources={"metadata": {"path": str(NOTEBOOKS)}})
        try:
            client.execute()
        except CellExecutionError:
            print(f"FAILED: {first_error(nb)}\nThe stored notebook was not changed.")
            return 1
        strip_volatile(nb)
        nbformat.write(nb, nb_path)
        print(f"saved ({time.monotonic() - start:.1f} s)")
    return 0


def strip_volatile(nb) -> None:
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = merged_streams(cell.outputs)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    nb.metadata["language_info"] = {"name": "python"}   # the patch version is noise


def merged_streams(outputs: list) -> list:
    """One output per run of stdout (or stderr) text: how print() calls were split into
    messages depends on timing, and would otherwise change the stored file run to run."""
    merged = []
    for out in outputs:
        if (out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                and merged[-1]["name"] == out["name"]):
            merged[-1]["text"] += out["text"]
        else:
            merged.append(out)
    return merged


def step_times(record: Path) -> None:
    """Seconds per guide step, from papermill's per-cell durations in a run record."""
    for nb_path in sorted(record.glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        totals: dict[str, float] = {}
        heading = "(start)"
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                titles = [l.lstrip("#").strip() for l in cell.source.splitlines() if l.startswith("#")]
                heading = titles[-1] if titles else heading
            elif cell.metadata.get("papermill", {}).get("duration") is not None:
                totals[heading] = totals.get(heading, 0) + cell.metadata["papermill"]["duration"]
        print(f"{nb_path.name}: {sum(totals.values()):.1f} s in cells")
        for title, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"  {seconds:6.2f} s  {title}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("refresh")
    p = sub.add_parser("times", help="seconds per step of a run record (runs/<env>/<timestamp>)")
    p.add_argument("record", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "times":
        step_times(args.record)
        return 0
    return refresh()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
