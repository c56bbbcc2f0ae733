"""Steps as plans of literal actions: one definition serves applying, checking and the record.

A step function reads facts from the hosts, then returns a `Step`: the actions that would
bring the hosts to what the guide wants (none when everything is in place), notes on what
was found already in place, and verifications of live state. Each action is literal: a
shell command, an SQL statement, a file change with its diff, or a service restart, on a
named host as a named user.

- `Step.apply()` runs the actions (service actions are handlers: deduplicated and run once,
  last), prints a transcript that a person could type, then runs the verifications, which
  print the evidence the guide shows and raise CheckFailed with the likely fix.
- `ci/provision --check` builds the same steps on read-only hosts and reports each non-empty
  plan as drift, and each failing verification.
- Each applied action is written to the step journal as data: the run record's summary and
  its by-hand script `commands.sh` are made from it.

Secrets are `Secret` pieces, never plain text in a plan: shown as `********`, sent to the
host on stdin, and written into commands.sh as `${PGGUIDE_...}` references.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import shlex
from dataclasses import dataclass, field
from typing import Callable, Iterable, Union

from lib import journal, roles, secrets
from lib.pgconf import changed_lines
from lib.show import CheckFailed

MASK = "********"
#: beside a file we edit: the file as it was before our first change
ORIGINAL_SUFFIX = ".pgguide-orig"
#: ends the text a FileChange sends; stripped on the host, which writes nothing without it
WRITE_COMPLETE = "#pgguide: end of text\n"


# --- secrets inside plans ---------------------------------------------------------------------
@dataclass(frozen=True)
class Secret:
    """A secret's value in some form: `plain`, `sql` (an SQL string literal), `pgpass` (a .pgpass
    field: \\ and : escaped), `md5` (md5 of the
    value, as pcp.conf holds it), `md5:<user>` (md5 of value+user, as pg_md5 writes it) or
    `verifier:<role>` (an SQL literal of the verifier PostgreSQL stores for the role, SCRAM or md5
    as postgres.auth_method says: the server never sees the password)."""
    name: str
    form: str = "plain"

    @property
    def variable(self) -> str:
        return secrets.SECRETS[self.name][0]

    def value(self, params) -> str:
        v = secrets.secret(self.name, params)
        if self.form == "sql":
            return "'" + v.replace("'", "''") + "'"
        if self.form == "pgpass":
            return v.replace("\\", "\\\\").replace(":", "\\:")
        if self.form == "md5":
            return hashlib.md5(v.encode()).hexdigest()
        if self.form.startswith("md5:"):
            return hashlib.md5((v + self.form[4:]).encode()).hexdigest()
        if self.form.startswith("verifier:"):
            role = self.form.split(":", 1)[1]
            md5 = params.postgres["auth_method"] == "md5"
            return "'" + (roles.md5_verifier(v, role) if md5 else roles.scram_verifier(v)) + "'"
        return v

    def shown(self) -> str:
        return f"'{MASK}'" if self.form == "sql" or self.form.startswith("verifier:") else MASK

    def bash(self) -> str:
        """The same value computed in bash from the environment variable (commands.sh)."""
        ref = f'"${{{self.variable}}}"'
        if self.form == "sql":
            return f"$(sql_literal {ref})"
        if self.form == "pgpass":
            return f"$(pgpass_field {ref})"
        if self.form == "md5":
            return f"$(md5_of {ref})"
        if self.form.startswith("md5:"):
            return f"$(md5_of {ref}{shlex.quote(self.form[4:])})"
        if self.form.startswith("verifier:"):
            return f"$(pg_verifier {self.variable} {shlex.quote(self.form.split(':', 1)[1])})"
        return f"${{{self.variable}}}"


Piece = Union[str, Secret]


def text(*pieces: Piece) -> tuple[Piece, ...]:
    return tuple(pieces)


def resolve(pieces: Iterable[Piece], params) -> str:
    return "".join(p.value(params) if isinstance(p, Secret) else p for p in pieces)


def masked(pieces: Iterable[Piece]) -> str:
    return "".join(p.shown() if isinstance(p, Secret) else p for p in pieces)


def has_secret(pieces: Iterable[Piece]) -> bool:
    return any(isinstance(p, Secret) for p in pieces)


HEREDOC_END = "PGGUIDE_EOF"


def delimiter(base: str, text: str) -> str:
    """A here-document's end word that is no line of `text` (a file may hold our own word): `base`,
    else `base_1`, `base_2`, …, so that the same text always gets the same word."""
    lines, word, n = set(text.splitlines()), base, 0
    while word in lines:
        n += 1
        word = f"{base}_{n}"
    return word


def heredoc(pieces: Iterable[Piece]) -> str:
    """`<<…` redirection with `pieces` as its body. Without secrets the body is quoted and taken
    literally; with secrets it is unquoted, so literal text escapes \\, $ and `."""
    pieces = tuple(pieces)
    body = "".join(p if isinstance(p, str) else "" for p in pieces)
    end = delimiter(HEREDOC_END, body)
    if not has_secret(pieces):
        out = body
        mark = f"<<'{end}'"
    else:
        esc = lambda s: s.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")
        out = "".join(p.bash() if isinstance(p, Secret) else esc(p) for p in pieces)
        mark = f"<<{end}"
    return f"{mark}\n{out}{'' if out.endswith(chr(10)) else chr(10)}{end}"


def shell_word(script: str) -> str:
    """`script` as one bash word that reads as typed: '…' when it has no single quote, else a
    literal here-document inside $(…)."""
    if "'" not in script:
        return shlex.quote(script)
    end = delimiter("SH", script)
    return f"\"$(cat <<'{end}'\n{script}\n{end}\n)\""


# --- actions ----------------------------------------------------------------------------------------
@dataclass
class Action:
    """One literal thing done on a host. `user` None means the SSH (admin) user."""
    remote: object                      # lib.remote.Remote
    user: str | None
    # keyword-only, so that each kind's own fields follow (remote, user) positionally
    timeout: float = field(default=600, kw_only=True)
    hint: str | None = field(default=None, kw_only=True)

    handler = False

    @property
    def host(self) -> str:
        return self.remote.host.name

    def who(self) -> str:
        return self.user or self.remote.params.ssh["user"]

    def prompt(self) -> str:
        return f"{self.host} ({self.who()}) $ "

    # What each kind fills in:
    def script(self) -> str: raise NotImplementedError          # what bash runs on the host
    def stdin(self) -> tuple[Piece, ...]: return ()
    def display(self) -> str: raise NotImplementedError         # the transcript's command line(s)
    def what(self) -> str: raise NotImplementedError            # one line for summary.json

    def run(self) -> str:
        """Apply it; return the output to show under the command."""
        r = self.remote.run(self.script(), user=self.user, stdin=resolve(self.stdin(), self.remote.params) or None,
                            timeout=self.timeout, hint=self.hint)
        return (r.stdout + r.stderr).rstrip()

    def bash(self) -> str:
        """This action in commands.sh (`on HOST USER SCRIPT`, defined in its preamble)."""
        user = self.user or "-"
        redirect = heredoc(self.stdin()) if self.stdin() else "</dev/null"
        return f"on {self.host} {user} {shell_word(self.script())} {redirect}"

    def record(self) -> dict:
        return {"host": self.host, "user": self.who(), "what": self.remote.mask(self.what()),
                "shown": self.remote.mask(self.display()), "bash": self.bash()}


@dataclass
class Command(Action):
    """A shell command. `shown` is what the transcript prints when the script has plumbing a
    reader need not type (a wait, a password read from stdin); `input` is its stdin."""
    command: str = ""
    input: tuple[Piece, ...] = ()
    shown: str | None = None
    summary: str | None = None
    show_output: bool = True
    normalize: Callable[[str], str] | None = None
    handler: bool = False

    def script(self) -> str:
        return self.command

    def stdin(self):
        return self.input

    def display(self) -> str:
        return self.shown or self.command

    def what(self) -> str:
        return self.summary or self.display().splitlines()[0]

    def run(self) -> str:
        out = super().run()
        if not self.show_output:
            return ""
        return self.normalize(out) if self.normalize else out


@dataclass
class Sql(Action):
    """SQL through psql. By default as the postgres OS user over the local socket; with `login`
    (psql connection options such as '-h ADDR -p 9999 -U postgres') as the admin user with
    `password` fed on stdin, as a client would connect."""
    statement: tuple[Piece, ...] = ()
    database: str = "postgres"
    login: str = ""
    password: Secret | None = None
    session: str = ""                   # PGOPTIONS for the session, e.g. "-c password_encryption=md5"
    summary: str | None = None
    timeout: float = field(default=120, kw_only=True)

    def _psql(self) -> str:
        db = f" -d {shlex.quote(self.database)}" if self.database != "postgres" or self.login else ""
        options = f"PGOPTIONS={shlex.quote(self.session)} " if self.session else ""
        return f"{options}psql{(' ' + self.login) if self.login else ''}{db}"

    def script(self) -> str:
        psql = self._psql().replace("psql", "psql -X -v ON_ERROR_STOP=1", 1)
        return f"read -r PGPASSWORD; export PGPASSWORD; {psql}" if self.password else psql

    def stdin(self):
        sql = tuple(self.statement) + (() if masked(self.statement).endswith("\n") else ("\n",))
        return ((self.password, "\n") if self.password else ()) + sql

    def display(self) -> str:
        sql = masked(self.statement).strip()
        if "\n" not in sql and '"' not in sql and "\\" not in sql:
            return f'{self._psql()} -c "{sql}"'
        return f"{self._psql()} <<'SQL'\n{sql}\nSQL"

    def what(self) -> str:
        return self.summary or " ".join(masked(self.statement).split())[:160]


#: a command line longer than this is shown one command a line
READABLE_WIDTH = 120


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


@dataclass
class FileChange(Action):
    """Replace a file's text, atomically: a temporary file in the same directory, owner and mode
    set, then a rename. `owner`/`mode` when given (files that hold secrets), else the file's own
    (root:root 644 for a new one). The transcript shows the diff; `mask_line` hides the secret
    part of a line in files that hold secrets."""
    path: str = ""
    old: str | None = None              # None: the file does not exist yet
    new: tuple[Piece, ...] = ()
    owner: str | None = None
    mode: str | None = None
    mask_line: Callable[[str], str] | None = None
    original_kept: bool = False         # the copy of the file before our first change is there already

    def script(self) -> str:
        f = shlex.quote(self.path)
        if self.owner is None and self.old is not None:
            keep = f'chown --reference={f} "$t" && chmod --reference={f} "$t"'
        else:
            keep = f'chown {self.owner or "root:root"} "$t" && chmod {self.mode or "644"} "$t"'
        # A connection lost mid-write ends stdin early, and cat takes that for the end: only a text
        # that arrived whole, its end mark included, replaces the file.
        n = len(WRITE_COMPLETE)
        whole = f'[ "$(tail -c {n} "$t")" = {shlex.quote(WRITE_COMPLETE.strip())} ] && truncate -s -{n} "$t"'
        # the file as it was before our first change, kept once beside it (never overwritten)
        kept = shlex.quote(self.original)
        # a file that holds secrets: its copy is as private as the file is made now
        private = f" && chown {self.owner} {kept} && chmod {self.mode} {kept}" if self.owner and self.mode else ""
        original = f"{{ [ -e {kept} ] || {{ cp -p {f} {kept}{private}; }}; }} && " if self.old is not None else ""
        return (f't=$(mktemp {f}.XXXXXX) && cat > "$t" && {whole} && {keep} && {original}mv -f "$t" {f} '
                f'|| {{ rm -f "$t"; echo {shlex.quote(f"{self.path}: not written (its text did not arrive whole)")} >&2; exit 1; }}')

    @property
    def original(self) -> str:
        """Where the file as it was before our first change is kept."""
        return self.path + ORIGINAL_SUFFIX

    def stdin(self):
        return (*self.new, WRITE_COMPLETE)

    def bash(self) -> str:
        """In commands.sh: a new file from its copy in the record (files/), an edit of a file that is there as its
        changed lines (edit_lines, defined in the script's preamble, checks that the file is the text it was made
        from, and the result); a file that holds a secret written whole, the secret a variable."""
        if self.old is None and not has_secret(self.new) and not self.mask_line:
            user, _, group = (self.owner or "root:root").partition(":")
            install = f"install -m {self.mode or '644'} -o {user} -g {group} /dev/stdin {shlex.quote(self.path)}"
            return f'on {self.host} {self.user or "-"} {shlex.quote(install)} < "$FILES/{self.kept_as()}"'
        if self.old is None or has_secret(self.new) or self.mask_line:
            return super().bash()
        new = masked(self.new)
        script = line_edits(self.old, new)
        if not script or not new.endswith("\n") or not self.old.endswith("\n"):
            return super().bash()
        end = delimiter("EDIT", script)
        call = shlex.quote(f"; edit_lines {self.path} {text_sum(self.old)} {text_sum(new)}")
        return f'on {self.host} {self.user or "-"} "$EDIT_LINES"{call} <<\'{end}\'\n{script}{end}'

    def diff(self) -> list[str]:
        new = masked(self.new)
        lines = changed_lines(self.old or "", new)
        if self.mask_line:
            lines = [line[0] + self.mask_line(line[1:]) for line in lines]
        return lines

    def display(self) -> str:
        if self.old is None and not self.mask_line:
            return self._whole()
        access = f" (owner {self.owner or 'root:root'}, mode {self.mode or '644'})" if self.owner or self.old is None else ""
        head = (f"edit {self.path}" if self.old is not None else f"create {self.path}") + access + (
            f"    # as it was before our first change: {self.original}" if self.old is not None and not self.original_kept
            else "")
        return head + "".join("\n  " + line for line in self.diff())

    def _whole(self) -> str:
        """A new file as a command a person can copy: install(1) writes it from a here-document, with its owner
        and mode."""
        text = masked(self.new)
        end = next(e for e in ("EOF", "END_OF_FILE", "END_OF_FILE_1") if e not in text.splitlines())
        user, _, group = (self.owner or "root:root").partition(":")
        return (f"install -m {self.mode or '644'} -o {user} -g {group} /dev/stdin {shlex.quote(self.path)} <<'{end}'\n"
                + text + ("" if text.endswith("\n") else "\n") + end)

    def what(self) -> str:
        added = [l[1:].split("#")[0].strip() for l in self.diff() if l.startswith("+")]
        return f"{self.path}: " + ("; ".join(added[:8]) + (f"; … {len(added) - 8} more" if len(added) > 8 else "")
                                   if added else "lines removed")

    def run(self) -> str:
        super().run()
        return ""

    def kept_as(self) -> str:
        """Where commands.sh finds a new file's text: files/<host><path>, beside it in the run record."""
        return f"{self.host}{self.path}"

    def record(self) -> dict:
        new_file = self.old is None and not has_secret(self.new) and not self.mask_line
        return (super().record() | ({"original": self.original} if self.old is not None else {})
                | ({"file": {"name": self.kept_as(), "text": masked(self.new)},
                    "bash_whole": Action.bash(self)} if new_file else {}))


@dataclass
class Relay(Action):
    """Text read on one host and handed, through this machine, to a script on another: a key
    that must go from the host where it is made to the host that trusts it. (remote, user) is
    where `write` runs, with the text on its stdin; `read` runs on `source` as `source_user`."""
    source: object = None
    source_user: str | None = None
    read: str = ""
    write: str = ""
    summary: str | None = None

    def script(self) -> str:
        return self.write

    def display(self) -> str:
        who = self.source_user or self.source.params.ssh["user"]
        return f"{self.write}    # stdin: {self.source.host.name} ({who}) $ {self.read}"

    def what(self) -> str:
        return self.summary or self.display().splitlines()[0]

    def run(self) -> str:
        text = self.source.run(self.read, user=self.source_user).stdout
        self.remote.run(self.write, user=self.user, stdin=text, timeout=self.timeout, hint=self.hint)
        return ""

    def bash(self) -> str:
        return (f"on {self.source.host.name} {self.source_user or '-'} {shell_word(self.read)} </dev/null | "
                f"on {self.host} {self.user or '-'} {shell_word(self.write)}")


def service(remote, verb: str, unit: str, *, then: str = "", hint: str | None = None) -> Command:
    """A service action (handler): `systemctl VERB UNIT`, and `then` a bounded wait for its effect."""
    unit = shlex.quote(unit)
    command = f"systemctl {verb} {unit}" + (f" && {then}" if then else "")
    return Command(remote, "root", command, shown=f"systemctl {verb} {unit}", handler=True, hint=hint)


def wait_for(test: str, seconds: int, what: str) -> str:
    """A bounded shell loop: up to `seconds` for `test` to succeed, else fail naming `what`."""
    return (f"{{ for _ in $(seq {seconds * 10}); do {{ {test}; }} && break; sleep 0.1; done; {{ {test}; }} "
            f"|| {{ echo {shlex.quote(f'{what} after {seconds} s')} >&2; exit 1; }}; }}")


# --- a step ------------------------------------------------------------------------------------------
@dataclass
class Verification:
    describe: str
    run: Callable[[], str | None]       # prints nothing itself: returns the evidence text
    in_check: bool = True                # False: only after applying (a write, or a long test)


@dataclass
class Step:
    """What one guide step would do, found from facts: `plan` (actions, then handlers), `notes`
    (what was found in place), and verifications."""
    name: str
    actions: list[Action] = field(default_factory=list)
    handlers: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verifications: list[Verification] = field(default_factory=list)
    applied: list[Action] = field(default_factory=list)

    # building
    def do(self, *actions: Action) -> "Step":
        for a in actions:
            (self.notify if a.handler else self.actions.append)(a)
        return self

    def notify(self, handler: Action) -> "Step":
        if not any(h.host == handler.host and h.script() == handler.script() for h in self.handlers):
            self.handlers.append(handler)
        return self

    def note(self, remote, text: str) -> "Step":
        self.notes.append(f"{remote.host.name}: {text}")
        return self

    def verify(self, describe: str, run: Callable[[], str | None], *, in_check: bool = True) -> "Step":
        self.verifications.append(Verification(describe, run, in_check))
        return self

    @property
    def plan(self) -> list[Action]:
        return self.actions + self.handlers

    # applying
    def apply(self) -> None:
        """Run the plan, printing each action and its output, then the verifications' evidence.
        (Returns nothing, so that a cell ending in `.apply()` shows only the transcript.)"""
        for note in self.notes:
            print(note)
        if not self.plan and not self.notes and not self.verifications:
            print("nothing to change")
        lock = next((a.remote.cluster_lock for a in self.plan if getattr(a.remote, "cluster_lock", None)), None)
        with lock.changing() if lock else contextlib.nullcontext():     # one run at a time changes the cluster
            seen: dict = {}
            for action in self.plan:
                if action.remote.read_only:
                    raise CheckFailed(f"{action.host}: refusing to apply on a read-only connection: {action.what()}")
                print(self._shown(action, seen))
                output = action.run()
                if output:
                    print(action.remote.mask(output))
                self.applied.append(action)
                journal.applied(action.record())
        for v in self.verifications:
            evidence = v.run()
            if evidence:
                print(evidence)

    def preview(self) -> list[str]:
        """The plan as it would run, without running it."""
        seen: dict = {}
        return [self._shown(a, seen) for a in self.plan]

    @staticmethod
    def _shown(action: Action, seen: dict) -> str:
        """The action's transcript. A file change that repeats one shown before in the step, on another host
        (the same path, text before and after, owner and mode), is named, not printed again."""
        if isinstance(action, FileChange):
            key = (action.path, action.old, masked(action.new), action.owner, action.mode)
            if key in seen:
                verb = "edit" if action.old is not None else "create"
                return action.remote.mask(f"{action.prompt()}{verb} {action.path}: the same as on {seen[key]} above")
            seen[key] = action.host
        first, *rest = action.display().split("\n")
        return action.remote.mask(action.prompt() + "\n".join([readable(first), *rest]))

    # checking
    def drift(self) -> list[str]:
        """What a check reports: each planned action as it would run, and each failing
        verification's message. Nothing is applied."""
        out = self.preview()
        for v in self.verifications:
            if not v.in_check:
                continue
            try:
                v.run()
            except (CheckFailed, AssertionError) as e:
                out.append(str(e))
        return out


def guide_step(fn):
    """Marks a function that builds one guide step from `env` alone: `ci/provision --check`
    finds the calls to such functions in the notebooks' cells, under their step headings."""
    fn.guide_step = True
    return fn
