"""A run record: runs/<environment>/<timestamp>/ with the executed notebooks, an HTML copy of
each that reads offline, summary.json (every step's status, changes and duration) and
provision.log (what ci/provision printed)."""
from __future__ import annotations

import datetime as dt
import html
import json
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from lib import by_hand, diagrams, host_functions
from lib.params import resolve_path

# A record must read offline and opening it must not send traffic anywhere: its pages carry no
# script at all (the notebooks use no LaTeX and no widgets), and their diagrams are drawn before,
# as inline SVG. external_references() is what the tests hold a page to.
SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>\s*", re.S)
EXTERNAL_LINK = re.compile(r'<link[^>]*\shref="https?://[^"]*"[^>]*>\s*', re.S)
# What in a script would load something: import(), fetch(), workers, sockets.
FETCH = re.compile(r"""(?:\bimport|\bfetch|\bimportScripts)\s*\(\s*["'`]((?:https?:)?//[^"'`]+)"""
                   r"""|\bnew\s+(?:Worker|SharedWorker|EventSource|WebSocket)\s*\(\s*["'`]([a-z]+://[^"'`]+)""")


@dataclass
class StepRecord:
    notebook: str
    step: int | None
    title: str
    status: str = "not run"          # changed | in place | failed | not run
    hosts: list[str] = field(default_factory=list)
    changes: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    actions: list[dict] = field(default_factory=list, repr=False)    # the applied actions, for commands.sh
    checks: list[dict] = field(default_factory=list, repr=False)     # the verifications that passed, ditto
    fact_reads: dict[str, int] = field(default_factory=dict)         # the round trips that read facts, per host

    def add_events(self, events: list[dict]) -> None:
        for e in events:
            if "verified" in e:
                self.checks.append(e)
                continue
            if e.get("facts_read"):
                self.fact_reads[e["host"]] = self.fact_reads.get(e["host"], 0) + 1
            if e["host"] not in self.hosts:
                self.hosts.append(e["host"])
            if e.get("applied"):
                self.changes.append({"host": e["host"], "what": e["what"]}
                                    | ({"original kept in": e["original"]} if e.get("original") else {}))
                self.actions.append(e)


@dataclass
class Summary:
    environment: str
    parameters: str
    mode: str = "provision"
    started: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    finished: str | None = None
    seconds: float = 0.0
    result: str = "running"          # succeeded | failed
    steps_changed: int = 0
    fact_reads: dict[str, int] = field(default_factory=dict)         # SSH round trips that read facts, per host
    steps: list[StepRecord] = field(default_factory=list)
    failure: dict | None = None

    def finish(self, result: str, seconds: float) -> None:
        self.result, self.seconds = result, round(seconds, 2)
        self.finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.steps_changed = sum(1 for s in self.steps if s.status == "changed")
        for s in self.steps:
            for host, n in s.fact_reads.items():
                self.fact_reads[host] = self.fact_reads.get(host, 0) + n

    def write(self, directory: Path) -> None:
        data = asdict(self)
        for s in data["steps"]:
            s["seconds"] = round(s["seconds"], 2)
            del s["actions"], s["checks"]
        (directory / "summary.json").write_text(json.dumps(data, indent=2) + "\n")


COMMANDS_PREAMBLE = r"""#!/usr/bin/env bash
# {title}
# Every action that changed something, in order, under the guide step that did it: the same
# commands, SQL and file contents the run applied. Read it, or run it from a machine with ssh to
# the hosts. Secrets are not in this file: export them first ({variables}).
set -euo pipefail
{required}
SSH_USER=${{SSH_USER:-{user}}}
SSH_KEY=${{SSH_KEY:-{key}}}
KNOWN_HOSTS=${{KNOWN_HOSTS:-{known_hosts}}}
SSH_PORT=${{SSH_PORT:-{port}}}
declare -A ADDRESS=({addresses})
# the new files the run wrote, as it wrote them: files/HOST/PATH beside this script
FILES=${{FILES:-$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)/files}}

q() {{ local s=${{1//\'/\'\\\'\'}}; printf "'%s'" "$s"; }}             # quoted for a shell
sql_literal() {{ local s=${{1//\'/\'\'}}; printf "'%s'" "$s"; }}          # an SQL string literal
md5_of() {{ printf '%s' "$1" | md5sum | cut -c1-32; }}
pgpass_field() {{ local s=${{1//\\/\\\\}}; printf '%s' "${{s//:/\\:}}"; }}     # a .pgpass field: \ and : escaped
# pg_verifier VARIABLE ROLE: the password verifier PostgreSQL stores ({auth_method}), as an SQL
# literal, computed here from the variable's value: the password itself never reaches a server.
pg_verifier() {{
  python3 - "$1" "$2" {auth_method} <<'PY'
import base64, hashlib, hmac, os, sys
password, role, method = os.environ[sys.argv[1]], sys.argv[2], sys.argv[3]
if method == "md5":
    print("'md5" + hashlib.md5((password + role).encode()).hexdigest() + "'")
else:
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 4096)
    key = lambda label: hmac.new(salted, label, "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode()
    print("'SCRAM-SHA-256$4096:" + b64(salt) + "$" + b64(hashlib.sha256(key(b"Client Key")).digest())
          + ":" + b64(key(b"Server Key")) + "'")
PY
}}

# The PostgreSQL version, cluster and directories on the hosts: every script below gets them (see `on`).
# shellcheck disable=SC2034  # host_setup reads them by name
{{
  PG_VERSION={pg_version}
  PG_CLUSTER={pg_cluster}
  {pg_paths}
}}

# The functions the scripts below call on the hosts (lib/host_functions.py): `on` sends them along.
HOST_FUNCTIONS=$(cat <<'FUNCTIONS'
{host_functions}FUNCTIONS
)

host_setup() {{    # what every script gets first: the variables and the functions above
  local v
  for v in PG_VERSION PG_CLUSTER PG_BIN PG_ETC PG_DATA; do printf '%s=%s\n' "$v" "$(q "${{!v}}")"; done
  printf '%s\n' "$HOST_FUNCTIONS"
}}

ssh_to() {{
  ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
      -o UserKnownHostsFile="$KNOWN_HOSTS" -i "$SSH_KEY" -p "$SSH_PORT" "$SSH_USER@${{ADDRESS[$1]}}" "$2"
}}

# on HOST USER [SCRIPT]: run SCRIPT (else the script on stdin) with bash on HOST as USER (through sudo; "-" is
# the SSH user).
# Its stdin is the command's stdin. With PGGUIDE_SUDO_PASSWORD set, the host's shell reads it first and hands it
# to sudo only where sudo asks, so that no command ever reads the password as its own input.
on() {{
  if [ $# -lt 3 ]; then on "$1" "$2" "$(cat)" </dev/null; return; fi     # the script on stdin
  local host=$1 user=$2 script
  script="$(host_setup)
$3"
  if [ "$user" = - ]; then
    ssh_to "$host" "bash -c $(q "$script")"
  elif [ -n "${{PGGUIDE_SUDO_PASSWORD:-}}" ]; then
    {{ printf '%s\n' "$PGGUIDE_SUDO_PASSWORD"; cat; }} |
      ssh_to "$host" "IFS= read -r p; if sudo -n -u $user true 2>/dev/null; then unset p; sudo -n -H -u $user bash -c $(q "cd ~ 2>/dev/null; $script"); else {{ printf '%s\n' \"\$p\"; unset p; cat; }} | sudo -S -p '' -H -u $user bash -c $(q "cd ~ 2>/dev/null; $script"); fi"
  else
    ssh_to "$host" "sudo -n -H -u $user bash -c $(q "cd ~ 2>/dev/null; $script")"
  fi
}}
"""


def record_files(summary: "Summary") -> dict[str, str]:
    """The new files the run wrote, by their name under files/ (host, then path): commands.sh writes them from there."""
    files: dict[str, str] = {}
    for step in summary.steps:
        for a in step.actions:
            _kept(a, files)
    return files


def _kept(action: dict, files: dict[str, str]) -> str:
    """The action's line in commands.sh; a new file's text goes to `files`, unless another text took its name
    (then it is written whole, in the script)."""
    kept = action.get("file")
    if not kept:
        return action["bash"]
    if files.setdefault(kept["name"], kept["text"]) != kept["text"]:
        return action["bash_whole"]
    return action["bash"]


def _path_variables(params) -> dict[str, str]:
    """The preamble's PG_VERSION, PG_CLUSTER and paths, each path in terms of the two where it follows Debian's
    layout."""
    values = dict(by_hand.variables(params))
    version, cluster = values["PG_VERSION"], values["PG_CLUSTER"]
    def layout(path: str) -> str:
        if shlex.quote(path) != path:
            return shlex.quote(path)
        return path.replace(f"/{version}/{cluster}", "/$PG_VERSION/$PG_CLUSTER").replace(f"/{version}/bin", "/$PG_VERSION/bin")
    paths = [f"{name}={layout(values[name])}" for name in ("PG_BIN", "PG_ETC", "PG_DATA")]
    return {"pg_version": version, "pg_cluster": shlex.quote(cluster), "pg_paths": "\n  ".join(paths)}


def _heading(action: dict) -> str:
    """The comment above an action: the command as the transcript showed it, where the script below wraps it in
    guards or waits (a person reads the guide's command on a line of its own); else what the action did, unless
    the line below says it in as many words."""
    who = f"{action['host']} ({action['user']})"
    if action.get("typed"):
        return f"# {who} $ {action['typed']}\n"
    if "path" in action:              # a file: the lines below show the settings, lines or text
        return f"# {who}: {'edit' if 'original' in action else 'create'} {action['path']}\n"
    return "" if action["what"] in action["bash"] else f"# {who}: {action['what']}\n"


#: the lines of a verification's evidence that commands.sh quotes; the notebook has them all
EXPECTED_LINES = 5


def _expected(check: dict) -> str:
    """A verification as a comment: what it checks, and its evidence as the run saw it."""
    lines = check["evidence"].splitlines()
    cut = len(lines) > EXPECTED_LINES + 1            # a line saying one more line is there would take as much room
    shown = lines[:EXPECTED_LINES] + [f"… {len(lines) - EXPECTED_LINES} more lines in the notebook"] if cut else lines
    return f"# check: {check['verified']}" + "".join(f"\n#   {line}".rstrip() for line in shown)


def commands_sh(summary: "Summary", params) -> str:
    """The run's applied actions as a plain bash script (see COMMANDS_PREAMBLE); the new files it writes are
    record_files(summary), kept in files/ beside it."""
    body, files = [], {}
    for step in summary.steps:
        if step.actions:
            label = f"Step {step.step} — {step.title}" if step.step is not None else step.title
            body.append(f"\n# {step.notebook}: {label}")
            body += [f"{_heading(a)}{_kept(a, files)}" for a in step.actions]
            body += [_expected(check) for check in step.checks]
    text = "\n".join(body)
    variables = sorted(set(re.findall(r"\$\{(PGGUIDE_[A-Z_]+)\}", text)))
    ssh = params.ssh
    head = COMMANDS_PREAMBLE.format(
        title=f"ci/provision on {summary.environment} ({summary.parameters}), {summary.started}",
        variables=", ".join(variables) or "none are used",
        required="\n".join(f': "${{{v}:?export {v} first}}"' for v in variables),
        user=ssh["user"], key=resolve_path(ssh["key_file"]), known_hosts=resolve_path(ssh["known_hosts"]),
        port=ssh["port"], addresses=" ".join(f"[{h.name}]={h.address}" for h in params.all_hosts),
        auth_method=params.postgres["auth_method"], host_functions=host_functions.ALL, **_path_variables(params))
    return head + text + ("\n" if text else "\n# nothing was changed\n")


#: the whole style of a record's page: its text, code and outputs readable, nothing fetched (nbconvert's lab
#: template inlines 270 KB of JupyterLab's theme into every page)
PAGE_STYLE = """
body { font: 16px/1.5 "Liberation Sans", Arial, Helvetica, sans-serif; color: #222; max-width: 62rem;
       margin: 2rem auto; padding: 0 1rem; }
h1, h2, h3 { line-height: 1.25; } a.anchor-link { display: none; }
pre, code { font: 13px/1.4 "DejaVu Sans Mono", "Liberation Mono", Menlo, monospace; }
pre { background: #f6f8fa; padding: .6rem .8rem; overflow-x: auto; border-radius: 4px; }
.input_area pre { background: #eef3fb; border-left: 3px solid #4a7bd0; }
.prompt { display: none; } .output_stderr pre { background: #fdf0f0; }
table { border-collapse: collapse; margin: 1rem 0; } th, td { border: 1px solid #ccc; padding: .25rem .5rem; }
figure.pgguide-diagram { margin: 1rem 0; } figure.pgguide-diagram svg { max-width: 100%; height: auto; }
img { max-width: 100%; }
"""


def render_html(notebook_path: Path) -> Path:
    """An HTML copy next to the notebook that reads offline and stands alone: a small style of its own,
    no scripts, and each diagram drawn as an inline SVG (lib.diagrams)."""
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.read(notebook_path, as_version=4)
    diagrams.drawn_in([c for c in nb.cells if c.cell_type == "markdown"], notebook_path.name, diagrams.figure)
    exporter = HTMLExporter(template_name="basic", embed_images=True)
    # the plumbing the notebooks hide (the parameters, the session's start) is hidden here too
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove-input"}), enabled=True)
    body, _ = exporter.from_notebook_node(nb)
    body = EXTERNAL_LINK.sub("", SCRIPT.sub("", body))
    title = next((line.lstrip("# ").strip() for c in nb.cells if c.cell_type == "markdown"
                  for line in c.source.splitlines() if line.startswith("# ")), notebook_path.stem)
    out = notebook_path.with_suffix(".html")
    out.write_text(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                   f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                   f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head>\n"
                   f"<body>\n{body}\n</body></html>\n")
    return out


def external_references(html: str) -> list[str]:
    """What would load something from the network: src= attributes, stylesheet links, and
    any address inside a script (an import)."""
    found = re.findall(r'\ssrc="(https?://[^"]+)"', html)
    found += [m for tag in re.findall(r"<link\b[^>]*>", html) for m in re.findall(r'href="(https?://[^"]+)"', tag)]
    found += [a or b for script in SCRIPT.findall(html) for a, b in FETCH.findall(script)]
    return list(dict.fromkeys(found))


# --- searching a record for secrets ---------------------------------------------------------------
def find_in_record(record: Path, needles: dict[str, str]) -> list[str]:
    """Every (file, what) where a needle occurs, in any file of the record."""
    hits = []
    for path in sorted(p for p in record.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        hits += [f"{path.name}: {what}" for what, needle in needles.items() if needle and needle in text]
    return hits
