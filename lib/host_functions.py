"""Shell functions that the steps' commands call on the hosts: a wait or a guard that would take a line of
shell reads as one named call, in what runs and in commands.sh alike.

A script that calls one is sent with the definitions it needs in front of it (`defined`), so the hosts need
nothing installed. commands.sh defines them all once (`ALL`), and its `on` sends them ahead of every script.
"""
from __future__ import annotations

import re
import shlex

from lib import by_hand

FUNCTIONS: dict[str, str] = {
    "wait_for": r'''# wait_for SECONDS WHAT TEST: up to SECONDS for the shell test TEST to succeed, else fail saying WHAT
wait_for() {
  local _
  for _ in $(seq $(($1 * 10))); do eval "$3" && return 0; sleep 0.1; done
  eval "$3" || { echo "$2 after $1 s" >&2; exit 1; }
}''',
    "cluster_is": r'''# cluster_is STATE...: pg_lsclusters gives the cluster ($PG_VERSION $PG_CLUSTER) one of the STATEs
cluster_is() {
  local state wanted
  state=$(pg_lsclusters --no-header "$PG_VERSION" "$PG_CLUSTER" | awk '{print $4}')
  for wanted; do [ "$state" = "$wanted" ] && return 0; done
  return 1
}''',
    "listens": r'''# listens PORT: a program accepts TCP connections on 127.0.0.1:PORT
listens() {
  timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null
}''',
    "stop_basebackup_into": r'''# stop_basebackup_into DIR: no pg_basebackup (one a killed run left) goes on writing into DIR. The pattern
# is anchored on the program's name, so that it matches no shell whose script holds it.
stop_basebackup_into() {
  local running="^([^ ]*/)?pg_basebackup .* -D ${1%/}/ "
  pkill -u postgres -f -- "$running"
  wait_for 10 'pg_basebackup still runs' '! pgrep -u postgres -f -- "$running" >/dev/null'
}''',
    "mark_cloning": r'''# mark_cloning BINDIR DATADIR MARKER: the stopped cluster's identity and last checkpoint, and the time,
# written to MARKER: a run killed before its clone finishes may resume it (the cluster has not run since)
mark_cloning() {
  cd / && {
    echo "system_id=$(LC_ALL=C runuser -u postgres -- "$1/pg_controldata" -D "$2" | sed -n 's/^Database system identifier: *//p')"
    echo "checkpoint=$(LC_ALL=C runuser -u postgres -- "$1/pg_controldata" -D "$2" | sed -n 's/^Latest checkpoint location: *//p')"
    echo "started=$(date -u +%FT%TZ)"
  } > "$3.tmp" && mv -f "$3.tmp" "$3"
}''',
    "write_file": r'''# write_file FILE OWNER MODE ORIGINAL: FILE replaced, atomically, by the text on stdin, which must end with
# the line `#pgguide: end of text` (a text cut short, as by a lost connection, is not written). OWNER and MODE
# "same": those of the file there. ORIGINAL "keep": the file as it was before our first change is kept beside
# it (.pgguide-orig), "private": kept with OWNER and MODE too, "none": there is no file yet.
write_file() {
  local f=$1 owner=$2 mode=$3 original=$4 t
  t=$(mktemp "$f.XXXXXX") && cat > "$t" &&
    [ "$(tail -c 22 "$t")" = '#pgguide: end of text' ] && truncate -s -22 "$t" &&
    if [ "$owner" = same ]; then chown --reference="$f" "$t" && chmod --reference="$f" "$t"
    else chown "$owner" "$t" && chmod "$mode" "$t"; fi &&
    if [ "$original" = none ] || [ -e "$f.pgguide-orig" ]; then :
    elif [ "$original" = private ]; then cp -p "$f" "$f.pgguide-orig" && chown "$owner" "$f.pgguide-orig" && chmod "$mode" "$f.pgguide-orig"
    else cp -p "$f" "$f.pgguide-orig"; fi &&
    mv -f "$t" "$f" ||
    { rm -f "$t"; echo "$f: not written (its text did not arrive whole)" >&2; exit 1; }
}''',
    "replace_line": r'''# replace_line FILE DROP OWNER MODE PREFIX: FILE without its lines that match the grep pattern DROP, and
# one line more: PREFIX, then the text on stdin (a key). Written whole, with OWNER and MODE.
replace_line() {
  local f=$1 k
  k=$(cat) && touch "$f" && { grep -v -- "$2" "$f" || true; echo "$5$k"; } > "$f.new" &&
    chown "$3" "$f.new" && chmod "$4" "$f.new" && mv "$f.new" "$f"
}''',
    "set_conf": r'''# set_conf FILE, `name = value` lines on stdin: each setting set in FILE as postgres and pgpool read it.
# The last line that sets the name is changed, else the first commented one is uncommented, else the
# setting goes at the end. The file as it was before our first change is kept beside it (.pgguide-orig).
# Settings that did not arrive whole (a cut connection leaves a last line without its newline) change nothing.
set_conf() {
  local f=$1 t settings
  settings=$(cat; echo .) && settings=${settings%.}
  case $settings in
    *$'\n') ;;
    *) echo "$f: left as it is: the settings did not arrive whole (no newline after the last)" >&2; return 1 ;;
  esac
  t=$(mktemp "$f.XXXXXX")
  printf '%s' "$settings" | awk 'function name_of(line) {
         if (!match(line, /^[ \t]*#?[ \t]*[A-Za-z_][A-Za-z0-9_.]*[ \t]*=/)) return ""
         line = substr(line, 1, RLENGTH - 1); gsub(/[ \t#]/, "", line); return line }
       NR == FNR { n = name_of($0); if (n == "") next; sub(/^[ \t]+/, ""); want[n] = $0; order[++count] = n; next }
       { line[FNR] = $0; n = name_of($0)
         if (n in want) { if ($0 ~ /^[ \t]*#/) { if (!(n in commented)) commented[n] = FNR } else active[n] = FNR } }
       END { for (i = 1; i <= count; i++) { n = order[i]
               if (n in active) line[active[n]] = want[n]
               else if (n in commented) line[commented[n]] = want[n]
               else extra = extra want[n] "\n" }
             for (i = 1; i <= FNR; i++) print line[i]; printf "%s", extra }' /dev/stdin "$f" > "$t" || { rm -f "$t"; return 1; }
  [ -e "$f.pgguide-orig" ] || cp -p "$f" "$f.pgguide-orig"
  chown --reference="$f" "$t" && chmod --reference="$f" "$t" && mv -f "$t" "$f"
}''',
    "edit_lines": r'''# edit_lines FILE OLD NEW, its edit on stdin: a file that is there changed line by line, as the run changed it.
# Each line of the edit is `N c TEXT` (line N becomes TEXT), `N d` (line N goes) or `N i TEXT` (TEXT goes before
# line N), numbered as the file was. OLD and NEW are the start of the file's SHA-256 before and after: a file that
# is not the text the edit was made from is left as it is.
edit_lines() {
  local f=$1 t
  [ "$(sha256sum < "$f" | cut -c1-16)" = "$2" ] || { echo "$f: not the text this edit was made from; left as it is" >&2; return 1; }
  t=$(mktemp "$f.XXXXXX")
  awk 'NR == FNR { n = $1 + 0; op = $2; text = substr($0, length($1) + length(op) + 3)
                   if (op != "i") gone[n] = 1
                   if (op != "d") before[n] = before[n] text "\n"
                   next }
       { if (FNR in before) printf "%s", before[FNR]; if (!(FNR in gone)) print }
       END { if ((FNR + 1) in before) printf "%s", before[FNR + 1] }' /dev/stdin "$f" > "$t"
  [ "$(sha256sum < "$t" | cut -c1-16)" = "$3" ] || { rm -f "$t"; echo "$f: the edit did not give the text the run wrote" >&2; return 1; }
  [ -e "$f.pgguide-orig" ] || cp -p "$f" "$f.pgguide-orig"
  chown --reference="$f" "$t" && chmod --reference="$f" "$t" && mv -f "$t" "$f"
}''',
}

_CALLED = {name: re.compile(rf"(?<![\w-]){name}(?![\w-])") for name in FUNCTIONS}


def called(script: str) -> list[str]:
    """The functions `script` calls, with those they call in turn, in the order of FUNCTIONS."""
    found, todo = set(), [script]
    while todo:
        text = todo.pop()
        for name, pattern in _CALLED.items():
            if name not in found and pattern.search(text):
                found.add(name)
                todo.append(FUNCTIONS[name])
    return [name for name in FUNCTIONS if name in found]


def defined(script: str, params=None) -> str:
    """`script` with the definitions of the functions it calls in front of it, and the variables they read
    (PG_VERSION, PG_CLUSTER and the paths: lib.by_hand.variables) set from `params`."""
    names = called(script)
    if not names:
        return script
    setting = "".join(f"{name}={shlex.quote(value)}\n" for name, value in by_hand.variables(params)) if params else ""
    return setting + "".join(FUNCTIONS[n] + "\n" for n in names) + script


#: every definition, for commands.sh
ALL = "\n".join(FUNCTIONS.values()) + "\n"


def wait_for(test: str, seconds: int, what: str) -> str:
    """A bounded wait: up to `seconds` for the shell test `test`, else fail naming `what` (and the time)."""
    return f"wait_for {int(seconds)} {shlex.quote(what)} {shlex.quote(test)}"


def cluster_is(*states: str) -> str:
    """The test: the cluster (PG_VERSION, PG_CLUSTER) is in one of `states` (pg_lsclusters' words)."""
    return "cluster_is " + " ".join(shlex.quote(s) for s in states)
