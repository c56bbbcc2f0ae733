"""A former primary back as a standby of the current primary, losing nothing unseen.

First a look (what it holds past the switch point, counted with pg_waldump, its WAL kept aside;
options.refuse_diverged refuses instead), then pg_rewind (a new base backup when it cannot, the old
data directory moved aside, never deleted), primary_conninfo with a passfile, started, and attached in
pgpool once the primary sees it streaming and caught up. Notebook 04 runs it after each primary drill,
provisioning after a failover (lib.heal), and a switchover (lib.switchover).
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from functools import partial

from lib import clone_guard, failover_scripts, ops, pgpool_host, postgres, tls
from lib.cluster import all_up, node_id, the_primary, timeline_history
from lib.part1 import REPLICATION_ROLE
from lib.show import expect, positions_named


#: when pg_rewind fails, the old data directory is moved aside under this suffix and a time, never deleted
SET_ASIDE = ".set-aside-"


def rejoin_proof(remote, primary) -> str:
    """Why `remote` may be rewound (or, failing that, cloned) from `primary`, read from both hosts:
    the same cluster (system identifier), and the primary promoted past it (a later timeline).
    Raises CheckFailed otherwise."""
    found = clone_guard.read(remote)               # the control file, read the way Part 1's guard reads it
    mine, my_timeline = found.system_id, found.timeline or 0
    theirs = postgres.value(primary, "SELECT system_identifier FROM pg_control_system()")
    timeline = int(postgres.value(primary, "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))"
                                           "::bit(32)::int"))
    expect(mine == theirs, f"{remote.host.name} holds another cluster (system identifier {mine}, the primary's "
                           f"is {theirs}): not rejoined.", "this is not a former member of this cluster; nothing was changed.")
    expect(timeline > my_timeline, f"{primary.host.name} is on timeline {timeline}, {remote.host.name} on {my_timeline}: "
                                   f"{primary.host.name} was not promoted past it, so rewinding could lose writes.",
           "find out which server has the latest writes before anything is wiped; nothing was changed.")
    return f"same system identifier; {primary.host.name} promoted past {remote.host.name}'s timeline"


@dataclass
class Diverged:
    """What a former primary holds past the switch point, where the current primary's history left the
    former primary's timeline: commits the current primary never received, which a rewind discards."""
    host: str
    primary: str
    timeline: int
    switch_point: str
    commits: int
    first_segment: str           # the former primary's WAL file that holds the switch point

    def said(self) -> str:
        """Stable words for the stored output; the count itself is a measured figure."""
        if not self.commits:
            return f"no commit past the switch point that {self.primary} lacks: the rewind discards nothing"
        return (f"commits past the switch point that {self.primary} never received: the rewind discards them, so "
                "they are counted (with the figures below) and the WAL from there is kept aside first")


#: the figure under which a drill (or provisioning's heal) gets the count of commits only the former primary held
COUNTED = "commits only the old primary held"
#: the pg_waldump lines of a committed transaction
COMMIT_RECORD = "desc: COMMIT"


def count_commits(params, timeline, start) -> str:
    """Shell, as postgres on a former primary: how many commits its own WAL holds on `timeline` from `start` on
    (both may be shell words such as "$switch"). pg_waldump stops with an error at the end of the WAL: its
    count is what it read up to there; grep exits 1 when it counts none."""
    p = params.postgres
    data = shlex.quote(p["data_dir"].rstrip("/"))
    return (f"/usr/lib/postgresql/{int(p['version'])}/bin/pg_waldump --path={data}/pg_wal --timeline={timeline} "
            f"--start={start} 2>/dev/null | grep -c {shlex.quote(COMMIT_RECORD)}")


def wal_files_from(first: str) -> str:
    """awk over `ls` of pg_wal: the WAL files of `first`'s timeline from `first` on (a shell word). Compared as
    strings: awk would take the names for numbers, too long for a float's precision."""
    return f"awk -v f={first} 'length($0) == 24 && substr($0, 1, 8) == substr(f, 1, 8) && ($0 \"\") >= (f \"\")'"


def diverged(remote, primary, timeline: int) -> Diverged:
    """Count, with pg_waldump on the former primary's own WAL, the commits it wrote on `timeline`
    past the point where `primary`'s history left that timeline (read from its .history file)."""
    switch = dict(timeline_history(primary)).get(timeline)
    expect(switch is not None, f"{primary.host.name}'s timeline history does not say where it left timeline "
                               f"{timeline}, {remote.host.name}'s: what {remote.host.name} holds past it cannot be told.",
           f"look at pg_wal/*.history on {primary.host.name}; nothing was changed.")
    out = remote.run(f"{count_commits(remote.params, timeline, switch)} || true", user="postgres").stdout
    segment = postgres.value(primary, f"SELECT pg_walfile_name('{switch}')")
    return Diverged(remote.host.name, primary.host.name, timeline, switch, int(out.strip() or 0),
                    f"{timeline:08X}{segment[8:]}")


#: the former primary's WAL past the switch point is copied beside its data directory, under this suffix
DIVERGED = ".diverged-"


def keep_diverged(remote, found: Diverged) -> ops.Command:
    """Copy the former primary's WAL files from the one holding the switch point on, of its timeline,
    beside its data directory, before the rewind discards them."""
    data = remote.params.postgres["data_dir"].rstrip("/")
    aside = f"{data}{DIVERGED}$(date -u +%Y%m%dT%H%M%SZ)"
    pick = wal_files_from(found.first_segment)
    return ops.Command(remote, "postgres", f"a={aside} && mkdir \"$a\" && cd {shlex.quote(data)}/pg_wal && "
                       f"ls | {pick} | xargs -r cp -p -t \"$a\" && echo \"kept in $a: $(ls \"$a\" | wc -l) WAL files\"",
                       shown=f"a={aside} && mkdir \"$a\" && cp -p <its WAL files from the switch point on> \"$a\"",
                       normalize=lambda out: re.sub(rf"{re.escape(DIVERGED)}\d{{8}}T\d{{6}}Z: \d+ WAL files",
                                                    f"{DIVERGED}<time>: its WAL files", out),
                       summary=f"{remote.host.name}'s WAL past the switch point kept aside")


def rewind_output(text: str) -> str:
    """pg_rewind's own lines, with WAL positions and timeline numbers (different on every run) named.
    The server's log lines from the crash recovery it runs first (time stamps, pids) are summed up."""
    lines = [l for l in text.splitlines() if l.startswith(("pg_rewind", "pg_basebackup"))]
    lines = [l.replace('pg_rewind: executing "', "pg_rewind: executing ").split('" for target server')[0]
             + (" for target server to complete crash recovery" if "for target server" in l else "") for l in lines]
    text = positions_named("\n".join(lines))
    text = re.sub(rf"{re.escape(SET_ASIDE)}\d{{8}}T\d{{6}}Z", f"{SET_ASIDE}<time>", text)
    # Whether there is anything to copy back is a race (did the old primary's last WAL record reach
    # the standby before it was promoted?): both ends are one outcome, the old primary in step.
    in_step = "pg_rewind: in step with the new primary (rewound from the last common checkpoint, or nothing to rewind)"
    text = text.replace("pg_rewind: no rewind required", in_step)
    return re.sub(r"pg_rewind: rewinding from last common checkpoint at <lsn> on timeline <n>(\npg_rewind: Done!)?",
                  in_step, text)


def rewind_or_clone(params, primary_address: str) -> tuple[str, str, str]:
    """Shell, as postgres on the former primary (down): pg_rewind from the primary; the fallback, a new
    base backup after the old data directory is moved to "$aside"; and the expression for that place."""
    p = params.postgres
    data, bin_dir = shlex.quote(p["data_dir"]), f"/usr/lib/postgresql/{int(p['version'])}/bin"
    verified = f" {tls.conninfo_text(params)}" if tls.on(params) else ""      # the same TLS checks as the standby's
    source = f"host={primary_address} port={p['port']} user={REPLICATION_ROLE} dbname=postgres{verified}"
    # standby.signal (failover.sh's fence) would make pg_rewind's single-user crash recovery refuse to run;
    # the server is down, and the file is written again (standby_of) before it starts
    rewind = (f"rm -f {data}/standby.signal && {bin_dir}/pg_rewind -D {data} --source-server=\"{source}\" "
              f"--config-file={shlex.quote(p['conf_dir'])}/postgresql.conf")
    clone = (f"mv {data} \"$aside\" && install -d -m 700 {data} && {bin_dir}/pg_basebackup -h {primary_address} "
             f"-p {p['port']} -U {REPLICATION_ROLE} -D {data} -X stream -c fast" + (f" -d '{verified[1:]}'" if verified else ""))
    return rewind, clone, f"{p['data_dir'].rstrip('/')}{SET_ASIDE}$(date -u +%Y%m%dT%H%M%SZ)"


def standby_of(params, primary_address: str, name: str) -> str:
    """Shell, as postgres: the server's data directory set up as a standby of the primary."""
    data = shlex.quote(params.postgres["data_dir"])
    conninfo = failover_scripts.standby_conninfo(params, primary_address, name)
    auto = f"{data}/postgresql.auto.conf"
    return (f"sed -i '/^primary_conninfo/d; /^synchronous_standby_names/d' {auto} && "
            f"echo \"primary_conninfo = '{conninfo}'\" >> {auto} && touch {data}/standby.signal")


def count_into(outcome, step: ops.Step, remote, commits: int) -> None:
    """The drill's figure of commits only the old primary held, which must cover the rows its writer lost."""
    outcome.measured[COUNTED] = commits
    if outcome.lost and outcome.lost.in_flight:
        expect(len(outcome.lost.in_flight) <= commits,
               f"the writer lost {len(outcome.lost.in_flight)} acknowledged rows, but {remote.host.name} holds only "
               f"{commits} commits past the switch point.", "the loss is not explained by the rows in "
               "flight: read both servers' logs.")
        step.note(remote, "every acknowledged row the drill lost is among them: yes")


def former_primary(env, remote, outcome=None) -> ops.Step:
    """The failed primary `remote` as a standby of the current primary: first a look at what it holds
    past the switch point (counted, its WAL kept aside; options.refuse_diverged refuses instead), then
    pg_rewind (falling back to a new base backup when it cannot, the old data directory moved aside),
    primary_conninfo with passfile, started, attached in pgpool once caught up. With the drill's
    `outcome`, the count is among its figures and must cover the rows the writer lost."""
    primary, step = the_primary(env), ops.Step("rejoin")
    p, name = env.params.postgres, remote.host.name
    state = postgres.cluster_state(remote)
    if state == "online,recovery" and clone_guard.streaming_from_primary(remote, primary) == "streaming":
        step.note(remote, f"already a standby streaming from {primary.host.name}")
    else:
        expect(state in ("down", "down,recovery", "online,recovery"), f"{name} is {state}: it runs as a primary beside "
               f"{primary.host.name}, and may hold writes that {primary.host.name} lacks. Not rejoined.",
               f"decide which server's writes to keep; stop the other (systemctl stop on {name}) and rejoin it.")
        step.note(remote, rejoin_proof(remote, primary))
        look = diverged(remote, primary, clone_guard.read(remote).timeline or 0)
        expect(not (look.commits and env.params.options["refuse_diverged"]),
               f"{name} holds {look.commits} commits past the switch point {look.switch_point} that "
               f"{primary.host.name} never received; options.refuse_diverged is set: not rejoined, nothing was changed.",
               f"decide whether those commits matter (pg_waldump on {name}), keep what you need, then rejoin "
               "without refuse_diverged.")
        step.note(remote, look.said())
        if outcome is not None:
            count_into(outcome, step, remote, look.commits)
        if look.commits:
            step.do(keep_diverged(remote, look))
        if state.startswith("online"):       # a plain command, not a handler: it must stop before the rewind
            step.do(ops.Command(remote, "root", f"systemctl stop {shlex.quote(p['service'])}",
                                summary=f"{name} stopped for the rewind"))
        step.do(ops.Sql(primary, "postgres", statement=("CHECKPOINT;",),
                        summary="checkpoint: pg_rewind reads the new timeline from the control file"))
        rewind, clone, aside = rewind_or_clone(env.params, primary.host.address)
        step.do(ops.Command(remote, "postgres", f"{rewind} 2>&1 || {{ aside={aside}; echo \"pg_rewind failed: the old data "
                            f"directory is kept as $aside; a new base backup instead\"; {clone}; }}",
                            shown=f"{rewind}    # if it fails: {clone.replace('$aside', aside)}",
                            normalize=rewind_output, summary=f"{name} rewound to {primary.host.name}'s history",
                            timeout=env.params.options["step_timeout"]))
        step.do(ops.Command(remote, "postgres", standby_of(env.params, primary.host.address, name),
                            summary=f"{name} configured as a standby of {primary.host.name}"))
        step.do(ops.Command(remote, "root", f"systemctl start {shlex.quote(p['service'])} && "
                            f"rm -f {shlex.quote(clone_guard.fence_marker(env.params))}",
                            summary=f"{name} started as a standby", hint=f"read {p['log_file']} on {name}"))
    # attached only once the primary itself sees it streaming and caught up (a forked standby never is)
    caught_up = ops.wait_for(f"[ \"$(psql -XAtc {shlex.quote(failover_scripts.caught_up_sql(name))})\" = t ]", 60,
                             f"{primary.host.name} does not see {name} streaming and caught up")
    step.do(ops.Command(primary, "postgres", caught_up, show_output=False,
                        shown=f"psql -XAtc \"{failover_scripts.caught_up_sql(name)}\"    # until it says t",
                        summary=f"{primary.host.name} sees {name} streaming and caught up",
                        hint=f"read {p['log_file']} on {name}: a standby that forked off cannot stream"))
    n = node_id(env, remote)
    attach = pgpool_host.pcp(env, "pcp_attach_node", f"-n {n}")
    step.do(ops.Command(env.pgpool, "postgres",
                        f"[ \"$({pgpool_host.pcp(env, 'pcp_node_info', f'-n {n}')} | cut -d' ' -f5)\" != down ] || {attach}",
                        shown=f"{attach}    # unless auto_failback has attached it already", show_output=False,
                        summary=f"node {n} ({name}) attached"))
    return step.verify("every node up in pgpool", partial(all_up, env))

