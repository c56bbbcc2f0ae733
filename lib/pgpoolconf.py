"""Editing pgpool.conf idempotently. pgtoolkit cannot read it (it rejects names with
digits, such as backend_hostname0), so this small editor does what Step 30 needs: set
`name = value`, uncommenting the shipped line where there is one, appending otherwise."""
from __future__ import annotations

import re

from lib.pgconf import changed_lines


def render(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def set_settings(text: str, settings: dict) -> tuple[str, list[str]]:
    lines = text.splitlines(True)
    for name, value in settings.items():
        wanted = f"{name} = {render(value)}"
        active = [i for i, l in enumerate(lines) if re.match(rf"\s*{re.escape(name)}\s*=", l)]
        commented = [i for i, l in enumerate(lines) if re.match(rf"\s*#\s*{re.escape(name)}\s*=", l)]
        if active:
            keep = active[-1]                      # the last one wins in pgpool.conf too
            comment = _trailing_comment(lines[keep])
            new = wanted + (f"\t\t# {comment}" if comment else "") + "\n"
            if _setting(lines[keep]) != wanted:
                lines[keep] = new
        elif commented:
            comment = _trailing_comment(lines[commented[0]].lstrip().lstrip("#"))
            lines[commented[0]] = wanted + (f"\t\t# {comment}" if comment else "") + "\n"
        else:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.append(wanted + "\n")
    new_text = "".join(lines)
    return new_text, changed_lines(text, new_text)


def _setting(line: str) -> str:
    """`name = value` of a line, normalised, without its comment."""
    name, _, rest = line.partition("=")
    value = rest.strip()
    if value.startswith("'"):
        end = value.find("'", 1)
        while end != -1 and value[end + 1:end + 2] == "'":
            end = value.find("'", end + 2)
        value = value[:end + 1]
    else:
        value = value.split("#")[0].strip()
    return f"{name.strip()} = {value}"


def _trailing_comment(line: str) -> str:
    setting = _setting(line)
    rest = line.split("=", 1)[1] if "=" in line else ""
    value = setting.split(" = ", 1)[1] if " = " in setting else ""
    after = rest.strip()[len(value):]
    return after.split("#", 1)[1].strip() if "#" in after else ""


def active_settings(text: str) -> dict[str, str]:
    """name -> value (unquoted) of every uncommented `name = value` line; the last one wins, as
    in pgpool itself."""
    found = {}
    for line in text.splitlines():
        if re.match(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            name, value = _setting(line).split(" = ", 1)
            found[name] = value[1:-1].replace("''", "'") if value.startswith("'") else value
    return found
