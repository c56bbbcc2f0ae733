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

Secrets are `Secret` pieces (lib.plan_secrets), never plain text in a plan: shown as `********`, sent to the
host on stdin, and written into commands.sh as `${PGGUIDE_...}` references.
"""
from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass, field
from typing import Callable

from lib import facts, host_functions, journal
from lib.by_hand import conf_settings, delimiter, for_people, heredoc, line_edits, readable, shell_word, text_sum
from lib.pgconf import changed_lines
from lib.plan_secrets import Piece, Secret, has_secret, masked, resolve
from lib.show import CheckFailed, prompt

#: beside a file we edit: the file as it was before our first change
ORIGINAL_SUFFIX = facts.ORIGINAL_SUFFIX
#: ends the text a FileChange sends; stripped on the host, which writes nothing without it
WRITE_COMPLETE = "#pgguide: end of text\n"


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
        return prompt(self.host, self.who())

    # What each kind fills in:
    def script(self) -> str: raise NotImplementedError          # what bash runs on the host
    def stdin(self) -> tuple[Piece, ...]: return ()
    def display(self) -> str: raise NotImplementedError         # the transcript's command line(s)
    def what(self) -> str: raise NotImplementedError            # one line for summary.json

    def run(self) -> str:
        """Apply it; return the output to show under the command."""
        script = host_functions.defined(self.script(), self.remote.params)     # with the functions it calls
        r = self.remote.run(script, user=self.user, stdin=resolve(self.stdin(), self.remote.params) or None,
                            timeout=self.timeout, hint=self.hint)
        return (r.stdout + r.stderr).rstrip()

    def bash(self) -> str:
        """This action in commands.sh (`on HOST USER SCRIPT`, defined in its preamble, which also defines the
        host functions the script calls)."""
        on = self.on()
        script = for_people(self.script(), self.remote.params)
        if self.stdin():
            return f"{on} {shell_word(script)} {heredoc(self.stdin())}"
        if "\n" in script or "'" in script:     # a script of several lines is on on's stdin, as typed
            end = delimiter("SH", script)
            return f"{on} <<'{end}'\n{script}\n{end}"
        return f"{on} {shell_word(script)} </dev/null"

    def on(self) -> str:
        """commands.sh's `on HOST USER` for this action ("-": the SSH user)."""
        return f"on {self.host} {self.user or '-'}"

    def typed(self) -> str | None:
        """What a person would type, in commands.sh above the script, when the script is not that: the
        command on one line, without the guards and waits around it."""
        shown = self.display()
        return shown if "\n" not in shown and shown != self.script() else None

    def record(self) -> dict:
        typed = self.typed()
        return {"host": self.host, "user": self.who(), "what": self.remote.mask(self.what()),
                "shown": self.remote.mask(self.display()), "bash": self.bash()} | (
            {"typed": self.remote.mask(typed)} if typed else {})


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

    def _one_line(self) -> str | None:
        """The statement, when commands.sh can give it to psql -c as the transcript shows it."""
        sql = masked(self.statement).strip()
        plain = not (self.password or has_secret(self.statement) or "\n" in sql or set(sql) & set("\"'\\$`"))
        return sql if plain else None

    def bash(self) -> str:
        sql = self._one_line()
        if sql is None:
            return super().bash()
        command = f'{self.script()} -c "{sql}"'
        return f"{self.on()} {shell_word(command)} </dev/null"

    def typed(self) -> str | None:
        return None if self._one_line() is not None else super().typed()


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
    by_hand: tuple[str, tuple[Piece, ...]] | None = None   # commands.sh's way, when the file is a host's own:
                                                          # a script and its stdin, instead of the whole text

    def script(self) -> str:
        """write_file (lib.host_functions): only a text that arrived whole, its end mark included, replaces the
        file; the file as it was before our first change is kept once beside it, as private as the file is made."""
        if self.owner is None and self.old is not None:
            owner, mode = "same", "same"
        else:
            owner, mode = self.owner or "root:root", self.mode or "644"
        original = "none" if self.old is None else "private" if self.owner and self.mode else "keep"
        return f"write_file {shlex.quote(self.path)} {shlex.quote(owner)} {shlex.quote(mode)} {original}"

    @property
    def original(self) -> str:
        """Where the file as it was before our first change is kept."""
        return self.path + ORIGINAL_SUFFIX

    def stdin(self):
        return (*self.new, WRITE_COMPLETE)

    def bash(self) -> str:
        """In commands.sh: a new file from its copy in the record (files/); a change of settings as set_conf
        and the settings; another edit of a file that is there as its changed lines (edit_lines checks that the
        file is the text it was made from, and the result); a file that holds a secret written whole, the secret
        a variable. lib.host_functions defines set_conf and edit_lines."""
        people = lambda script: shell_word(for_people(script, self.remote.params))
        on = self.on()
        if self.old is None and not has_secret(self.new) and not self.mask_line:
            user, _, group = (self.owner or "root:root").partition(":")
            install = f"install -m {self.mode or '644'} -o {user} -g {group} /dev/stdin {shlex.quote(self.path)}"
            return f'{on} {people(install)} < "$FILES/{self.kept_as()}"'
        if self.by_hand:
            script, stdin = self.by_hand
            return f"{on} {people(script)} {heredoc(stdin)}"
        if self.old is None or has_secret(self.new) or self.mask_line:
            return super().bash()
        new = masked(self.new)
        settings = conf_settings(self.old, new)
        if settings:
            end = delimiter("CONF", "\n".join(settings))
            return f"{on} {people('set_conf ' + shlex.quote(self.path))} <<'{end}'\n" + "".join(
                line + "\n" for line in settings) + end
        script = line_edits(self.old, new)
        if not script or not new.endswith("\n") or not self.old.endswith("\n"):
            return super().bash()
        end = delimiter("EDIT", script)
        call = f"edit_lines {shlex.quote(self.path)} {text_sum(self.old)} {text_sum(new)}"
        return f"{on} {people(call)} <<'{end}'\n{script}{end}"

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
        added = [text for l in self.diff() if l.startswith("+") and (text := l[1:].split("#")[0].strip())]
        return f"{self.path}: " + ("; ".join(added[:8]) + (f"; … {len(added) - 8} more" if len(added) > 8 else "")
                                   if added else "lines removed")

    def run(self) -> str:
        super().run()
        return ""

    def typed(self) -> None:        # the lines below show the change itself
        return None

    def kept_as(self) -> str:
        """Where commands.sh finds a new file's text: files/<host><path>, beside it in the run record."""
        return f"{self.host}{self.path}"

    def record(self) -> dict:
        new_file = self.old is None and not has_secret(self.new) and not self.mask_line
        return (super().record() | {"path": self.path} | ({"original": self.original} if self.old is not None else {})
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
        return f"{self.write}    # stdin: {prompt(self.source, who)}{self.read}"

    def what(self) -> str:
        return self.summary or self.display().splitlines()[0]

    def run(self) -> str:
        text = self.source.run(host_functions.defined(self.read, self.remote.params), user=self.source_user).stdout
        self.remote.run(host_functions.defined(self.write, self.remote.params), user=self.user, stdin=text, timeout=self.timeout, hint=self.hint)
        return ""

    def typed(self) -> None:        # the two commands are below, joined by a pipe
        return None

    def bash(self) -> str:
        people = lambda script: shell_word(for_people(script, self.remote.params))
        return (f"on {self.source.host.name} {self.source_user or '-'} {people(self.read)} </dev/null | "
                f"{self.on()} {people(self.write)}")


def service(remote, verb: str, unit: str, *, then: str = "", hint: str | None = None) -> Command:
    """A service action (handler): `systemctl VERB UNIT`, and `then` a bounded wait for its effect."""
    unit = shlex.quote(unit)
    command = f"systemctl {verb} {unit}" + (f" && {then}" if then else "")
    return Command(remote, "root", command, shown=f"systemctl {verb} {unit}", handler=True, hint=hint)


wait_for = host_functions.wait_for


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
            journal.verified(v.describe, evidence or "")

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
