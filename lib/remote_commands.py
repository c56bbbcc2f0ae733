"""What postgres of the pgpool host may run on a database server (Step 41's key, `command=`): exactly the
commands failover.sh, follow_primary.sh and failback.sh send, each matched whole, and nothing else.

The list is read from the scripts themselves (every `on "$HOST" "…"` in them), so it cannot drift from
them. A script's shell variables ($best_host, $name, …) are expanded on the pgpool host before the
command is sent: each may stand for a value of letters, digits and `._:-` only, so no quote, space, `;`
or `$` can ride in on one. The key still runs these commands as postgres, the superuser of the server;
what it no longer gives is a shell.
"""
from __future__ import annotations

import re

#: on every database server, the program sshd runs for that key instead of the command it was sent
PROGRAM = "/usr/local/lib/pgguide/pgpool-commands"
#: what a shell variable of the scripts may expand to
VALUE = "[A-Za-z0-9._:-]*"
#: the exit status of a refused command (bash's "cannot execute")
REFUSED = 126
_ERE_SPECIAL = set("\\.[]()*+?{}|^$")
_SENT = re.compile(r'\bon "\$\w+" "')


def _ere(char: str) -> str:
    return "\\" + char if char in _ERE_SPECIAL else char


def sent_bodies(script: str) -> list[str]:
    """The second argument of every `on "$HOST" "…"` in `script`, as written (bash double-quoted text)."""
    bodies = []
    for m in _SENT.finditer(script):
        i = m.end()
        while script[i] != '"':
            i += 2 if script[i] == "\\" else 1
        if "\n" in script[m.end():i]:
            raise ValueError(f"a command sent on two lines cannot be matched: {script[m.end():i]!r}")
        bodies.append(script[m.end():i])
    return bodies


def pattern(body: str) -> str:
    """An ERE that matches, whole, what bash makes of the double-quoted `body` on the pgpool host."""
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and body[i + 1:i + 2] in ('$', '`', '"', '\\'):
            out.append(_ere(body[i + 1]))
            i += 2
        elif c == "$" and (m := re.match(r"\w+|\{\w+\}", body[i + 1:])):
            out.append(VALUE)
            i += 1 + len(m.group())
        elif c in "$`":
            raise ValueError(f"a command substitution expanded on the pgpool host cannot be matched: {body!r}")
        else:
            out.append(_ere(c))
            i += 1
    return "".join(out)


def literal(command: str) -> str:
    return "".join(_ere(c) for c in command)


def patterns(scripts: list[str], literals: list[str]) -> list[str]:
    """Every command the scripts send, and the `literals` sent as they are (ssh … 'command')."""
    found = [pattern(b) for s in scripts for b in sent_bodies(s)] + [literal(c) for c in literals]
    return list(dict.fromkeys(found))


def program(allowed: list[str]) -> str:
    """The program: runs the command sshd was sent (SSH_ORIGINAL_COMMAND) if one of `allowed` matches it
    whole, else refuses it, saying so on stderr (the scripts append that to their log)."""
    listed = "\n".join(allowed)
    return f"""#!/bin/bash
# What postgres of the pgpool host may run here: the commands failover.sh, follow_primary.sh and
# failback.sh send (Steps 41-42), each matched whole. Written by the guide's provisioning.
sent=$SSH_ORIGINAL_COMMAND
while IFS= read -r allowed; do
    re="^($allowed)\\$"
    if [[ $sent =~ $re ]]; then
        exec bash -c "$sent"
    fi
done <<'ALLOWED'
{listed}
ALLOWED
echo "pgpool-commands on $(hostname): refused: $sent" >&2
exit {REFUSED}
"""
