"""What an action becomes in commands.sh, the run's by-hand script: written for a person to read and type.

- A script's PostgreSQL version, cluster and directories are the variables the script's preamble sets
  (`variables`), wherever the host's shell expands them: on another host, change them there.
- A line of several commands is broken after each `&&` and `;` (`readable`).
- A change of settings in a configuration file is `set_conf FILE` with the settings on its stdin, one
  `name = value` a line (`conf_settings`); lib.host_functions defines set_conf. Another edit of a file that
  is there is its changed lines (`line_edits`, for edit_lines).
- A script is one bash word (`shell_word`), a text on stdin a here-document (`heredoc`), in which a secret is
  its `${PGGUIDE_…}` reference.
"""
from __future__ import annotations

import difflib
import hashlib
import re
import shlex
from typing import Iterable

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


# --- bash words, here-documents and line edits -------------------------------------------------------
HEREDOC_END = "PGGUIDE_EOF"


def delimiter(base: str, text: str) -> str:
    """A here-document's end word that is no line of `text` (a file may hold our own word): `base`,
    else `base_1`, `base_2`, …, so that the same text always gets the same word."""
    lines, word, n = set(text.splitlines()), base, 0
    while word in lines:
        n += 1
        word = f"{base}_{n}"
    return word


def heredoc(pieces: Iterable) -> str:
    """`<<…` redirection with `pieces` as its body. Without secrets the body is quoted and taken
    literally; with secrets it is unquoted, so literal text escapes \\, $ and `."""
    pieces = tuple(pieces)
    body = "".join(p if isinstance(p, str) else "" for p in pieces)
    end = delimiter(HEREDOC_END, body)
    if all(isinstance(p, str) for p in pieces):      # no secret (lib.plan_secrets.Secret) among them
        out = body
        mark = f"<<'{end}'"
    else:
        esc = lambda s: s.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")
        out = "".join(esc(p) if isinstance(p, str) else p.bash() for p in pieces)
        mark = f"<<{end}"
    return f"{mark}\n{out}{'' if out.endswith(chr(10)) else chr(10)}{end}"


def shell_word(script: str) -> str:
    """`script` as one bash word that reads as typed: '…' when it has no single quote, "…" when it is one line
    that bash would not change inside double quotes, else a literal here-document inside $(…)."""
    if "'" not in script:
        return shlex.quote(script)
    if "\n" not in script and not set(script) & set('$`"\\!'):
        return f'"{script}"'
    end = delimiter("SH", script)
    return f"\"$(cat <<'{end}'\n{script}\n{end}\n)\""


def text_sum(text: str) -> str:
    """What edit_lines checks a file against: the start of its SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def line_edits(old: str, new: str) -> str:
    """The edit that turns `old` into `new`, one line each, numbered by `old`'s lines: `N c TEXT` (line N becomes
    TEXT), `N d` (line N goes), `N i TEXT` (TEXT goes before line N; one past the last line appends)."""
    a, b = old.splitlines(), new.splitlines()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        if op == "replace" and i2 - i1 == j2 - j1:
            out += [f"{i1 + k + 1} c {b[j1 + k]}" for k in range(i2 - i1)]
            continue
        out += [f"{k + 1} d" for k in range(i1, i2)]
        out += [f"{i2 + 1} i {line}" for line in b[j1:j2]]
    return "".join(line + "\n" for line in out)
