"""ci/provision (python -m lib.provision): run the guide's notebooks against an environment with papermill, one line
per step, stopping at the first failure (after a failover it first rejoins the former primary: lib.heal);
or check a live cluster (--check); or make a standby the primary (--switchover); or take the
cluster apart (--teardown). See `ci/provision --help`."""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import papermill

from lib import REPO, diagnose, heal, journal, lock, secrets, switchover
from lib import params as P
from lib.provision import check, engine, runbook, teardown
from lib.provision.notebooks import NOTEBOOKS, QUIET_KERNEL, guide_notebooks
from lib.provision.record import StepRecord, Summary, commands_sh, record_files, render_html
from lib.remote import Hosts

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


class Console:
    """Prints progress to the terminal and keeps the same lines for provision.log."""

    def __init__(self):
        self.lines: list[str] = []
        self._partial = ""

    def start(self, text: str) -> None:
        self._partial = text
        print(text, end="", flush=True)

    def end(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(self._partial + text)
        self._partial = ""

    def line(self, text: str = "") -> None:
        self.start(text)
        self.end()


class Progress:
    """nbclient's cell hooks: the journal lines a cell wrote say which hosts it used and
    what it changed; a unit's line is printed when its last cell has run."""

    def __init__(self, console: Console, units: list[runbook.Unit], records: dict[int, StepRecord],
                 journal_path: str, position: int, total: int):
        self.console, self.units, self.records = console, units, records
        self.by_cell = runbook.unit_of_cell(units)
        self.journal_path = journal_path
        self.offset = os.path.getsize(journal_path) if os.path.exists(journal_path) else 0
        self.position, self.total = position, total
        self.current: runbook.Unit | None = None
        self.cell_started = 0.0
        self.failure: tuple[runbook.Unit, str, str] | None = None

    def before(self, cell, cell_index, **_):
        unit = self.by_cell.get(cell.get("id"), self.current)   # papermill's injected cell: the unit before it
        if unit is not None and unit is not self.current:
            self.current = unit
            self.position += 1
            self.console.start(f"[{self.position:>2}/{self.total}] {unit.notebook[:2]} {unit.label:<54.54} ")
        self.cell_started = time.monotonic()

    def after(self, cell, cell_index, execute_reply, **_):

        unit = self.current
        if unit is None:            # a cell before any unit: nothing to report
            return
        record = self.records[id(unit)]
        events, self.offset = journal.read(self.journal_path, self.offset)
        record.add_events(events)
        record.seconds += time.monotonic() - self.cell_started
        error = execute_reply.get("content", {}).get("status") == "error"
        if error:
            content = execute_reply["content"]
            record.status = "failed"
            self.failure = (unit, content.get("ename", "Error"), content.get("evalue", ""))
        elif cell.get("id") == unit.cell_ids[-1]:
            record.status = "changed" if record.changes else "in place"
        else:
            return
        self.console.end(f"{', '.join(record.hosts) or '-':<14} {record.status:<9} {record.seconds:5.1f} s")


@contextlib.contextmanager
def kernels_stderr_to(path: Path):
    """The notebook kernels, started in here, write their stderr to `path` instead of the terminal:
    ipykernel 7 can log a harmless traceback while it shuts down (a ZMQ socket already closed).
    Kept in the record when not empty."""
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if path.exists() and path.stat().st_size == 0:
            path.unlink()


def provision(params_file: Path, prm, console: Console) -> int:
    import yaml

    started = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    record_dir = REPO / "runs" / prm.environment / stamp
    # a record names hosts, paths and commands, and may hold what a step printed: for the operator alone
    os.umask(0o077)
    record_dir.mkdir(parents=True, exist_ok=True)
    summary = Summary(prm.environment, shown(params_file))
    notebooks = [(p, runbook.units(nbformat.read(p, as_version=4), p.stem)) for p in guide_notebooks()]
    total = sum(len(u) for _, u in notebooks)
    records = {id(u): StepRecord(u.notebook, u.number, u.title) for _, units in notebooks for u in units}
    summary.steps = list(records.values())
    console.line(f"provision {prm.environment} from {shown(params_file)}: {total} steps in "
                 f"{len(notebooks)} notebooks; record in {shown(record_dir)}/")
    parameters = yaml.safe_load(params_file.read_text())
    position, failure, failed_nb = 0, None, None
    # Each notebook's HTML copy is rendered while the next notebook runs (about 2 s in all, mostly CPU
    # while the next notebook mostly waits on its hosts).
    renders, rendered = ThreadPoolExecutor(max_workers=1, thread_name_prefix="html"), []
    with renders, tempfile.TemporaryDirectory(prefix="pgguide-") as tmp:
        journal_path = os.path.join(tmp, "journal.jsonl")
        os.environ["PGGUIDE_JOURNAL"] = journal_path       # the kernel inherits it
        try:
            try:        # after a failover: the former primary rejoined first, then the roles as they are
                parameters = heal_after_failover(prm, parameters, console)
            except Exception as e:          # a refusal, or a rejoin that failed: nothing after it runs
                failure = (HEALING, type(e).__name__, str(e))
            for nb_path, units in ([] if failure else notebooks):
                progress = Progress(console, units, records, journal_path, position, total)
                out_path = record_dir / nb_path.name
                try:
                    with kernels_stderr_to(record_dir / "kernels.log"):
                        papermill.execute_notebook(
                            str(nb_path), str(out_path), parameters=parameters, cwd=str(NOTEBOOKS),
                            engine_name=engine.NAME, progress_bar=False, log_output=False, kernel_name="python3",
                            extra_arguments=QUIET_KERNEL,
                            execution_timeout=prm.options["step_timeout"] + 60,   # past the step's own bounds
                            on_cell_execute=progress.before, on_cell_executed=progress.after)
                except papermill.PapermillExecutionError:
                    failure, failed_nb = progress.failure, out_path
                finally:
                    position = progress.position
                    if out_path.exists():
                        rendered.append(renders.submit(render_html, out_path))
                if failure:
                    break
        finally:
            del os.environ["PGGUIDE_JOURNAL"]               # its directory goes with `tmp`
    for html in rendered:
        html.result()                                       # a rendering that failed fails the run
    if failure and failure[0] is HEALING:
        _, ename, evalue = failure
        summary.failure = {"notebook": "heal", "step": None, "title": "rejoin the former primary", "hosts": [],
                           "cause": f"{ename}: {evalue}"}
        summary.finish("failed", time.monotonic() - started)
        console.line()
        console.line("provision FAILED while rejoining the former primary after a failover:")
        for line in f"{ename}: {evalue}".splitlines():
            console.line(f"  {line}")
        console.line("Nothing after this ran.")
    elif failure:
        unit, ename, evalue = failure
        record = records[id(unit)]
        where = f"{unit.notebook}, {unit.label.replace('  ', ' — ', 1) if unit.number is not None else unit.title}"
        summary.failure = {"notebook": unit.notebook, "step": unit.number, "title": unit.title,
                           "hosts": record.hosts, "cause": f"{ename}: {evalue}"}
        summary.finish("failed", time.monotonic() - started)
        console.line()
        console.line(f"provision FAILED in {where} ({', '.join(record.hosts) or 'no host'}):")
        for line in f"{ename}: {evalue}".splitlines():
            console.line(f"  {line}")
        console.line(f"Nothing after this step ran. The executed notebook, with the error in place: "
                     f"{shown(failed_nb)} (and .html); summary: {shown(record_dir)}/summary.json")
    else:
        summary.finish("succeeded", time.monotonic() - started)
        in_place = sum(1 for s in summary.steps if s.status == "in place")
        console.line(f"provision succeeded in {summary.seconds:.1f} s: {summary.steps_changed} steps changed, "
                     f"{in_place} already in place. Record: {shown(record_dir)}/")
    summary.write(record_dir)
    by_hand = record_dir / "commands.sh"
    by_hand.write_text(commands_sh(summary, prm))
    by_hand.chmod(0o700)
    for name, text in record_files(summary).items():
        kept = record_dir / "files" / name
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(text)
    (record_dir / "provision.log").write_text("\n".join(console.lines) + "\n")
    return EXIT_FAILED if failure else 0


#: the failure's place when the rejoin after a failover (lib.heal) fails, instead of a notebook's step
HEALING = object()


def heal_after_failover(prm, parameters: dict, console: Console) -> dict:
    """After a failover: the former primary rejoined, and the parameters with the roles as they are."""
    env = Hosts(prm)
    try:
        return heal.heal(env, parameters, console.line) or parameters
    finally:
        env.close()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ci/provision", description=__doc__)
    ap.add_argument("params", type=Path, nargs="?", default=REPO / "params" / "lab.yaml",
                    help="parameter file (default: params/lab.yaml, the built-in lab)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="change nothing; report where the live cluster differs from the guide (exit 0: it matches)")
    mode.add_argument("--diagnose", action="store_true",
                      help="change nothing; find what is wrong with the running cluster, with cause and fix "
                           "(exit 0: healthy, 1: a check failed)")
    mode.add_argument("--switchover", metavar="HOST",
                      help="make the standby HOST the primary, losing nothing (a clean stop of the primary, "
                           "its hand-over, HOST promoted, the old primary rejoined as its standby)")
    mode.add_argument("--teardown", action="store_true",
                      help="stop pgpool and turn the standbys into standalone servers")
    ap.add_argument("--secrets", type=Path, metavar="FILE",
                    help="a file of VARIABLE=value secrets outside the repository (mode 600)")
    args = ap.parse_args(argv)


    console = Console()
    try:
        prm = P.load(args.params.resolve())
        if args.secrets:
            secrets.read_secrets_file(args.secrets)
            os.environ[secrets.FILE_VARIABLE] = str(args.secrets.expanduser().resolve())
        secrets.require_all(prm)
    except (P.ParamsError, secrets.MissingSecret, secrets.BadSecretsFile, secrets.WeakSecret) as e:
        print(f"ci/provision: {e}\nNothing was changed.", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.check:
        return check.main(prm, console.line)
    if args.diagnose:
        return diagnose.main(prm, console.line)
    if args.teardown:
        return teardown.main(prm, console.line)
    if args.switchover:
        return locked(prm, lambda: switchover.main(prm, args.switchover, console.line))
    if prm.is_lab:
        start_lab_if_down(args.params.resolve())
    return locked(prm, lambda: provision(args.params.resolve(), prm, console))


def locked(prm, run) -> int:
    """Run holding the cluster's lock (lib.lock), which the notebooks' kernels inherit. No lock, no
    run: a primary that cannot be reached (or whose sudo refuses) stops it here, before any change."""

    env = Hosts(prm, purpose=f"ci/provision {prm.environment}", whole_run=True)
    try:
        env.lock.hold()
    except lock.LockHeld as e:
        env.close()
        print(f"ci/provision: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:      # unreachable, wrong key, sudo: going on unlocked could interleave with another run
        env.close()
        print(f"ci/provision: could not take the cluster's lock on {prm.primary.label}, so nothing "
              f"was changed:\n{e}", file=sys.stderr)
        return EXIT_FAILED
    if env.lock.took_over:
        print(f"ci/provision: took over the lock left by {env.lock.took_over.describe()}, which is gone")
    if env.lock.holder:         # else a parent run holds it, and its line is already in the environment
        os.environ[lock.ENV_VARIABLE] = env.lock.holder.line()
    try:
        return run()
    finally:
        os.environ.pop(lock.ENV_VARIABLE, None)
        env.close()


def start_lab_if_down(params_file: Path) -> None:
    import subprocess
    lab = [str(REPO / "ci" / "lab")]
    if subprocess.run(lab + ["status", str(params_file)], capture_output=True).returncode != 0:
        subprocess.run(lab + ["up", str(params_file)], check=True)

