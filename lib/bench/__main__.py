"""ci/bench: bring up a fresh lab, measure, write bench/results.json, the plots and book/performance.md's
Performance section, and take the lab down. Run as root, with no other use of that lab."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from lib import REPO
from lib import params as P
from lib.bench import balance, compare, memory, pgpool_cost, provisioning, replication, report
from lib.remote import Hosts

SECTIONS = ("provisioning", "image", "memory", "replication", "pgpool", "balance")


def machine(env) -> dict:
    mem_kib = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
    pg = env.primary.psql("SHOW server_version").stdout.strip().split()[0]
    pgpool = env.pgpool.run("pgpool --version 2>&1 | head -1", user="root").stdout.strip()
    return {"cores": os.cpu_count(), "memory_gib": mem_kib / 1024 / 1024, "kernel": f"Linux {platform.release()}",
            "python": platform.python_version(), "postgres": pg, "pgpool": pgpool}


def bench_access(env) -> list[str]:
    """The bench's own pg_hba lines (the lab is the bench's to change): postgres from this machine on
    each server, for the latency client, which reads the primary and a standby directly; and the
    pgpool role from the standby host on the primary, where pgbench runs (the pgpool host has no
    pgbench: only PostgreSQL's client is installed there)."""
    p = env.params
    hba = f"{p.postgres['conf_dir']}/pg_hba.conf"
    wanted = [(server, f"host all postgres {p.lab['gateway']}/32 scram-sha-256   # ci/bench")
              for server in (env.primary, *env.standbys)]
    wanted.append((env.primary, f"host all {pgpool_cost.USER} {p.standbys[0].address}/32 scram-sha-256   # ci/bench"))
    for server, line in wanted:
        server.run(f"grep -qF {shlex.quote(line)} {hba} || echo {shlex.quote(line)} >> {hba}", user="root")
    for server in (env.primary, *env.standbys):
        server.psql("SELECT pg_reload_conf()")
    return [f"{server.host.name}: {line}" for server, line in wanted]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ci/bench", description=__doc__)
    ap.add_argument("--params", type=Path, default=REPO / "params" / "lab.yaml", help="a lab's parameter file")
    ap.add_argument("--rounds", type=int, default=2, help="fresh-lab provisioning rounds (default 2)")
    ap.add_argument("--rows", type=int, default=1000, help="commits timed per synchronous_commit setting")
    ap.add_argument("--seconds", type=int, default=3, help="seconds per pgbench run")
    ap.add_argument("--repeats", type=int, default=2, help="pgbench runs per configuration")
    ap.add_argument("--sessions", type=int, default=1000, help="sessions per weight setting")
    ap.add_argument("--cold-image", action="store_true", help="also build the lab image from nothing")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    ap.add_argument("--no-page", action="store_true", help="write bench/results.json but leave book/performance.md alone")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("ci/bench: run as root (it starts the lab)", file=sys.stderr)
        return 2
    only = set(a.only.split(","))
    unknown = only - set(SECTIONS)
    if unknown:
        print(f"ci/bench: unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    params = P.load(a.params)
    if not params.is_lab:
        print(f"ci/bench: {a.params} is not a lab: the bench changes the hosts it measures", file=sys.stderr)
        return 2

    def say(text):
        print(text, flush=True)
    started = time.monotonic()
    results: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "command": "ci/bench " + " ".join(argv) if argv else "ci/bench", "parameters": str(a.params.relative_to(REPO)
                                                                                          if a.params.is_relative_to(REPO) else a.params)}
    if "image" in only:
        say("lab image")
        results["image"] = provisioning.image(a.cold_image, say)
    if only == {"image"}:               # the image alone needs no lab, and no provisioning
        return finish(results, only, a, started, say)
    say("provisioning: fresh lab, again, --check" if "provisioning" in only else "a fresh, provisioned lab")
    results["provisioning"] = provisioning.measure(a.params, a.rounds if "provisioning" in only else 1, say)
    if "provisioning" not in only:
        del results["provisioning"]
    env = Hosts(params)
    try:
        results["machine"] = machine(env)
        if "memory" in only:
            time.sleep(5)
            results["memory"] = {"idle": memory.now(params)}
        if only & {"replication", "pgpool"}:
            results["bench pg_hba lines"] = bench_access(env)
        if "replication" in only:
            say("replication visibility")
            results["replication"] = replication.measure(params, a.rows, say)
        if "pgpool" in only:
            say("pgbench, direct and through pgpool")
            with memory.Peak(params) as peak:
                results["pgpool"] = pgpool_cost.measure(env, a.seconds, a.repeats, say)
            if "memory" in results:
                results["memory"]["peak"] = peak.peak
        elif "memory" in results:
            results["memory"]["peak"] = results["memory"]["idle"]
    finally:
        env.close()
    if "balance" in only:
        say("load-balancing accuracy")
        results["balance"] = balance.measure(a.params, a.sessions, say)
    provisioning.timed(provisioning.LAB, "down", a.params)
    return finish(results, only, a, started, say)


def finish(results: dict, only: set, a, started: float, say) -> int:
    """Record the results (merged into the earlier ones when only some sections ran), the plots and the
    book/performance.md's section."""
    results["seconds"] = round(time.monotonic() - started, 1)
    report.RESULTS.parent.mkdir(exist_ok=True)
    if only == set(SECTIONS) and report.RESULTS.exists():   # the run before: how far this one's figures are
        repeat = compare.compare(json.loads(report.RESULTS.read_text()), results)
        if repeat:
            results["repeatability"] = repeat
    if only != set(SECTIONS) and report.RESULTS.exists():      # some sections again: keep the others
        earlier = json.loads(report.RESULTS.read_text())
        remeasured = {"date": results["date"], "command": results["command"], "sections": sorted(only)}
        results = {**earlier, **{k: v for k, v in results.items() if k not in ("date", "command", "seconds")},
                   "updated": [*earlier.get("updated", []), remeasured]}
    report.RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    report.plots(results, report.RESULTS.parent)
    if not a.no_page:
        report.update_page(results)
    say("")
    say(report.console(results))
    say(f"bench done in {time.monotonic() - started:.0f} s: {report.RESULTS.relative_to(REPO)}"
        + ("" if a.no_page else ", book/performance.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
