"""A notebook read as the guide's list of steps: which code cells make up which step.

A markdown heading `### Step 5 — Restart Master PostgreSQL` starts step 5; the code cells up
to the next heading belong to it. Code under another heading (the parameters, a section's
preparation, the closing cell) forms an unnumbered unit named by that heading, so every
code cell belongs to exactly one unit and every unit gets one progress line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

STEP_HEADING = re.compile(r"^#+\s*Step\s+(\d+)\s*[—:–-]\s*(.+?)\s*$")
HEADING = re.compile(r"^#+\s*(.+?)\s*$")


@dataclass
class Unit:
    notebook: str            # file name without .ipynb
    number: int | None       # the guide's step number; None for other units
    title: str
    cell_ids: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"Step {self.number:>2}  {self.title}" if self.number is not None else f"·        {self.title}"


def units(nb, notebook: str) -> list[Unit]:
    """The notebook's units in order, each with the ids of its code cells (units without
    code, such as a step that is only prose, are left out)."""
    found: list[Unit] = []
    current = Unit(notebook, None, "start")
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            headings = [line for line in cell.source.splitlines() if HEADING.match(line)]
            if headings:
                last = headings[-1]
                step = STEP_HEADING.match(last)
                current = (Unit(notebook, int(step.group(1)), step.group(2)) if step
                           else Unit(notebook, None, HEADING.match(last).group(1)))
        elif cell.cell_type == "code":
            if not found or found[-1] is not current:
                found.append(current)
            current.cell_ids.append(cell.get("id"))
    return found


def unit_of_cell(unit_list: list[Unit]) -> dict[str, Unit]:
    return {cid: u for u in unit_list for cid in u.cell_ids}
