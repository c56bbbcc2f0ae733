"""What an action becomes in commands.sh, the run's by-hand script: written for a person to read and type.

- A script's PostgreSQL version, cluster and directories are the variables the script's preamble sets
  (`variables`), wherever the host's shell expands them: on another host, change them there.
- A line of several commands is broken after each `&&` and `;` (`readable`).
- A change of settings in a configuration file is `set_conf FILE` with the settings on its stdin, one
  `name = value` a line (`conf_settings`); lib.host_functions defines set_conf.
"""
from __future__ import annotations

import re

from lib import pgpoolconf
from lib.pgconf import changed_lines

#: a line that sets a configuration parameter (postgresql.conf, pgpool.conf)
SETTING = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_.]*\s*=")


def variables(params) -> list[tuple[str, str]]:
    """(name, value) of the variables commands.sh sets for the hosts' paths, longest value first where one
    holds another, so that each path is named by the variable that says most."""
    p = params.postgres
    version, cluster = str(int(p["version"])), p["cluster"]
    return [("PG_BIN", f"/usr/lib/postgresql/{version}/bin"), ("PG_ETC", p["conf_dir"].rstrip("/")),
            ("PG_DATA", p["data_dir"].rstrip("/")), ("PG_VERSION", version), ("PG_CLUSTER", cluster)]


def for_people(script: str, params) -> str:
    """`script` as commands.sh shows it: its paths named by `variables` where the shell expands them (not
    inside single quotes), one command a line."""
    named = [(value, name) for name, value in variables(params) if name not in ("PG_VERSION", "PG_CLUSTER")]
    out, i, quote = [], 0, ""
    while i < len(script):
        c = script[i]
        if quote != "'":
            hit = next(((v, n) for v, n in named if script.startswith(v, i) and _ends_path(script, i + len(v))), None)
            if hit:
                value, name = hit
                follows = script[i + len(value):i + len(value) + 1]
                out.append(f"${{{name}}}" if re.match(r"\w", follows) else f"${name}")
                i += len(value)
                continue
        if c == "\\" and quote != "'":
            out.append(script[i:i + 2])
            i += 2
            continue
        if c in "'\"" and (not quote or quote == c):
            quote = "" if quote else c
        out.append(c)
        i += 1
    return "\n".join(readable(line) for line in "".join(out).split("\n"))


def _ends_path(text: str, at: int) -> bool:
    """A path ends at `at`: what follows cannot make it a longer name (…/main2)."""
    return at >= len(text) or not re.match(r"[\w-]", text[at])


def conf_settings(old: str, new: str) -> list[str] | None:
    """The `name = value` lines with which set_conf turns `old` into a file that sets what `new` sets; None
    when the change is not only settings (a line removed, a comment changed)."""
    changed = changed_lines(old, new)
    added = [line[1:] for line in changed if line.startswith("+")]
    removed = [line[1:] for line in changed if line.startswith("-")]
    if not added or not all(SETTING.match(line) for line in added):
        return None
    wanted = [pgpoolconf._setting(line) for line in added]
    names = {w.split(" = ", 1)[0] for w in wanted}
    if not all(_name(line) in names for line in removed):      # a line set_conf would leave
        return None
    if pgpoolconf.active_settings(set_conf(old, wanted)) != pgpoolconf.active_settings(new):
        return None
    return wanted


def _name(line: str) -> str | None:
    """The name a line sets, commented or not."""
    m = re.match(r"[ \t]*#?[ \t]*([A-Za-z_][A-Za-z0-9_.]*)[ \t]*=", line)
    return m.group(1) if m else None


def set_conf(text: str, settings: list[str]) -> str:
    """What the shell function set_conf makes of `text`: each `name = value` replaces the last line that
    sets the name, else its first commented line, else goes at the end."""
    lines = text.splitlines()
    extra = []
    for wanted in settings:
        name = wanted.split("=", 1)[0].strip()
        active = [i for i, l in enumerate(lines) if re.match(rf"[ \t]*{re.escape(name)}[ \t]*=", l)]
        commented = [i for i, l in enumerate(lines) if re.match(rf"[ \t]*#[ \t]*{re.escape(name)}[ \t]*=", l)]
        if active:
            lines[active[-1]] = wanted
        elif commented:
            lines[commented[0]] = wanted
        else:
            extra.append(wanted)
    return "".join(line + "\n" for line in lines + extra)


#: a command line longer than this is shown one command a line
READABLE_WIDTH = 120


OPENING, CLOSING = {"if", "for", "while", "until", "case"}, {"fi", "done", "esac"}


def _keyword(line: str, at: int) -> str:
    """The word of the shell's grammar that starts at `at`, if one does: an if … fi is one command."""
    m = re.match(r"(if|for|while|until|case|fi|done|esac)(?=[\s;]|$)", line[at:])
    return m.group(1) if m and (at == 0 or line[at - 1] in " \t;({") else ""


def readable(line: str) -> str:
    """A long shell command line as a person would write it: broken after each `&&` and `;` that joins two
    commands (outside quotes, braces and substitutions), the next command indented. Bash reads it the same
    way, so it can still be copied and run. A trailing `    # comment` stays on the last line."""
    if len(line) <= READABLE_WIDTH:
        return line
    pieces, start, depth, quote, i = [], 0, 0, "", 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = ""
        elif c == "\\":
            i += 1
        elif c in "'\"":
            quote = c
        elif c in "({":
            depth += 1
        elif c in ")}":
            depth -= 1
        elif (word := _keyword(line, i)) in OPENING:
            depth += 1
            i += len(word)
            continue
        elif word in CLOSING:
            depth -= 1
            i += len(word)
            continue
        elif depth == 0 and line.startswith(" && ", i):
            pieces.append(line[start:i] + " &&")
            start, i = i + 4, i + 4
            continue
        elif depth == 0 and line.startswith("; ", i):
            pieces.append(line[start:i])
            start, i = i + 2, i + 2
            continue
        elif depth == 0 and line.startswith("    # ", i):
            break
        i += 1
    pieces.append(line[start:])
    return "\n    ".join(pieces)
