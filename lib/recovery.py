"""Notebook 03, Step 45: pgpool's own way to bring a failed server back, `pcp_recovery_node`.

pgpool asks the primary to run `recovery_1st_stage` from its data directory (the pgpool_recovery
extension, Debian's postgresql-NN-pgpool2), then `pgpool_remote_start`, then attaches the node. Both
scripts only ask the server being recovered, over SSH, to do one thing: its postgres accepts the
other servers' key for exactly one program, `rejoin-standby` (authorized_keys `command=`), which
does what lib.rejoin does: it proves that it may, counts and keeps aside what only it held, rewinds
(or clones, the old data directory moved aside), and starts as a standby through systemd (a sudoers
line for that one command). What it did is appended to its own log, which the notebook reads.
"""
from __future__ import annotations

import re
import shlex
from datetime import datetime
from functools import partial

from lib import (clone_guard, cluster, failover, failover_scripts, ops, pgpool_client, pgpool_host, pgpoolconf,
                 postgres, rejoin, system)
from lib.ops import guide_step
from lib.part1 import REPLICATION_ROLE
from lib.show import expect, positions_named, prompt

#: the one program a peer's key may run on a database server
REJOIN_PROGRAM = "/usr/local/lib/pgguide/rejoin-standby"
#: what rejoin-standby did, a line each, on the server it recovered
REJOIN_LOG = "/var/log/postgresql/pgguide-rejoin.log"
FIRST_STAGE = "recovery_1st_stage"
REMOTE_START = "pgpool_remote_start"
SUDOERS = "/etc/sudoers.d/pgguide-recovery"
#: how long pgpool_remote_start waits for the primary to see the new standby streaming and caught up
STREAMING_WITHIN_S = 60
#: the drill's figure: from rejoin-standby's first line to the server started (whole seconds, its log's clock)
RECOVERY_TOOK = "pcp_recovery_node, rejoin to started"


def package(params) -> str:
    return f"postgresql-{int(params.postgres['version'])}-pgpool2"


def recovery_settings(params) -> dict:
    """pgpool.conf: the recovery runs as postgres (pgpool_recovery() wants a superuser), its password
    from pool_passwd (an empty recovery_password); streaming replication needs no second stage."""
    return {"recovery_user": "postgres", "recovery_password": "", "recovery_1st_stage_command": FIRST_STAGE,
            "recovery_2nd_stage_command": ""}


def start_command(params) -> str:
    """What postgres may run as root through sudo, and nothing else: start this server's cluster. The
    instance unit too: after a crash the umbrella unit may still count as active while its cluster is down."""
    p = params.postgres
    units = [f"postgresql@{int(p['version'])}-{p['cluster']}.service"]
    if p["service"] not in (units[0], units[0].removesuffix(".service")):
        units.append(p["service"])
    return "/usr/bin/systemctl start " + " ".join(units)


def sudoers(params) -> str:
    return ("# pgpool's online recovery (pgpool_remote_start): postgres may start its cluster, nothing more (pgguide)\n"
            f"postgres ALL=(root) NOPASSWD: {start_command(params)}\n")


def peer_options(peer) -> str:
    """authorized_keys' options for another database server's key: from its address, one program only."""
    return f'from="{peer.host.address}",restrict,command="{REJOIN_PROGRAM}"'


def rejoin_program(params) -> str:
    """rejoin-standby, the same on every server (each finds its name by its address). The
    SSH_ORIGINAL_COMMAND a peer sent is one of
      ready           say so (the step's check)
      rejoin ADDRESS  this server back as a standby of the primary at ADDRESS (recovery_1st_stage)
      start           start it and wait until it streams (pgpool_remote_start)."""
    p = params.postgres
    data, bin_dir = shlex.quote(p["data_dir"].rstrip("/")), f"/usr/lib/postgresql/{int(p['version'])}/bin"
    peers = "|".join(sorted(h.address for h in params.database_hosts))
    source = f"host=$primary port={p['port']} user={REPLICATION_ROLE} dbname=postgres"
    rewind, clone, aside = rejoin.rewind_or_clone(params, "$primary")
    diverged = f"{p['data_dir'].rstrip('/')}{rejoin.DIVERGED}$(date -u +%Y%m%dT%H%M%SZ)"
    refuse_diverged = "yes" if params.options["refuse_diverged"] else "no"
    return f"""#!/bin/bash
# The one program another database server's postgres may run here over SSH (authorized_keys command=),
# for pgpool's online recovery (pcp_recovery_node). Written by pgguide.
set -uo pipefail
refuse_diverged={refuse_diverged}    # options.refuse_diverged: yes keeps a server that holds commits the primary lacks out
name=
for address in $(ip -o addr show | awk '{{split($4, a, "/"); print a[1]}}'); do
  case $address in   # this server's name: its application_name as a standby
{failover_scripts.application_names(params)}
  esac
done
[ -n "$name" ] || {{ echo "refused: none of this host's addresses is one of the cluster's servers" >&2; exit 2; }}
say() {{ echo "$*"; echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $*" >> {REJOIN_LOG}; }}
refuse() {{ say "refused: $*; nothing was changed"; exit 1; }}
failed() {{ say "failed: $*; $name is left down, its data kept (read {REJOIN_LOG})"; exit 1; }}
read -r verb primary rest <<< "${{SSH_ORIGINAL_COMMAND:-}}"
case "$verb" in
  ready) echo "$name: ready to be recovered"; exit 0 ;;
  start)
    sudo -n {start_command(params)} || {{ say "failed: systemd did not start the server"; exit 1; }}
    rm -f {shlex.quote(clone_guard.fence_marker(params))}
    say "started"; exit 0 ;;
  rejoin) ;;
  *) echo "refused: only ready, start or rejoin ADDRESS" >&2; exit 2 ;;
esac
case "$primary" in {peers}) ;; *) refuse "$primary is none of this cluster's servers" ;; esac
[ -z "$rest" ] || refuse "unexpected words: $rest"
say "pcp_recovery_node: $name to rejoin as a standby of $primary"
state=$(pg_lsclusters --no-header {postgres.cluster_words(p)} | awk '{{print $4}}')
case "$state" in
  down*) ;;
  online,recovery) pg_ctlcluster {postgres.cluster_words(p)} stop -m fast || refuse "the standby would not stop"
                   say "a standby pgpool had detached: stopped for the rewind" ;;
  *) refuse "$name is $state: it runs as a primary and may hold writes that $primary lacks" ;;
esac
# the proof: the same cluster, and the primary promoted past this server's timeline
control=$(LC_ALL=C {bin_dir}/pg_controldata -D {data})
mine=$(sed -n 's/^Database system identifier: *//p' <<< "$control")
my_timeline=$(sed -n "s/^Latest checkpoint's TimeLineID: *//p" <<< "$control")
IFS='|' read -r theirs timeline _ <<< "$(psql "{source} replication=true" -XAtc IDENTIFY_SYSTEM)"
[ -n "$theirs" ] || refuse "$primary does not answer the replication connection"
[ "$mine" = "$theirs" ] || refuse "$name holds another cluster (system identifier $mine, the primary's $theirs)"
[ "$timeline" -gt "$my_timeline" ] || refuse "$primary is on timeline $timeline, $name on $my_timeline: not promoted past it"
say "proof: same system identifier; $primary promoted past $name's timeline $my_timeline (it is on timeline $timeline)"
# the look: commits this server wrote past the switch point, which the rewind discards
history=$(psql "{source}" -XAtc "SELECT convert_from(pg_read_binary_file('pg_wal/' || lpad(upper(to_hex($timeline)), 8, '0') || '.history'), 'UTF8')")
switch=$(awk -v t="$my_timeline" '$1 == t {{print $2}}' <<< "$history")
[ -n "$switch" ] || refuse "$primary's timeline history does not say where it left timeline $my_timeline"
commits=$({rejoin.count_commits(params, '"$my_timeline"', '"$switch"')})
say "switch point $switch on timeline $my_timeline: $name holds $commits commits past it that $primary never received"
if [ "$commits" -gt 0 ]; then
  [ "$refuse_diverged" = no ] || refuse "options.refuse_diverged is set"
  segment=$(psql "{source}" -XAtc "SELECT pg_walfile_name('$switch')")
  first=$(printf '%08X' "$my_timeline")${{segment:8}}
  a={diverged}
  mkdir "$a" && (cd {data}/pg_wal && ls | {rejoin.wal_files_from('"$first"')} \\
    | xargs -r cp -p -t "$a") || refuse "its WAL could not be kept aside in $a"
  say "kept in $a: $(ls "$a" | wc -l) WAL files"
fi
if out=$({rewind} 2>&1); then
  grep '^pg_rewind' <<< "$out" | while read -r line; do say "$line"; done
  ! grep -q 'no rewind required' <<< "$out" || [ "$commits" -eq 0 ] || failed "pg_rewind found nothing to rewind, yet $name holds $commits commits past the switch point"
else
  aside={aside}
  say "pg_rewind failed: the old data directory is kept as $aside; a new base backup instead"
  {clone} || failed "pg_basebackup failed too"
fi
{rejoin.standby_of(params, "$primary", "$name")} || failed "the standby's settings could not be written"
say "configured as a standby of $primary"
"""


def first_stage_script(params) -> str:
    return f"""#!/bin/bash
# pgpool's online recovery, first stage: pgpool_recovery() runs it as postgres on the primary (pgguide).
# $2: the server to recover, $4: this server's port, $7: its address. That server does the work itself.
set -u
# pg_rewind reads the primary's timeline from its control file, which a promotion updates at the next checkpoint
psql -p "$4" -XAtqc CHECKPOINT || exit 1
exec ssh {failover_scripts.ssh_options()} postgres@"$2" "rejoin $7"
"""


def remote_start_script(params) -> str:
    """Starts the recovered server (it does so itself), then, here on the primary, waits until the primary
    sees it streaming and caught up: only then may pgpool attach it. A standby that forked off never is."""
    return f"""#!/bin/bash
# pgpool's online recovery, last stage: pgpool_remote_start() runs it as postgres on the primary (pgguide).
# $1: the recovered server. pgpool attaches it once this script ends well.
set -u
host=$1
ssh {failover_scripts.ssh_options()} postgres@"$host" start || exit 1
case $host in   # the name this primary sees in pg_stat_replication
{failover_scripts.application_names(params)}
esac
for _ in $(seq {STREAMING_WITHIN_S * 2}); do
  [ "$(psql -p {params.postgres['port']} -XAtc "{failover_scripts.caught_up_sql('$name')}")" = t ] && exit 0
  sleep 0.5
done
echo "pgpool_remote_start: $host is not streaming from this server, caught up, after {STREAMING_WITHIN_S} s" >&2
exit 1
"""


@guide_step
def server_keys(env) -> ops.Step:
    """pgpool's extension on every server, and a key for its postgres (the next step hands it out)."""
    step = ops.Step("recovery packages and keys")
    for r in failover.database_remotes(env):
        system.packages_step(step, r, [package(env.params)])
        failover.make_key(step, r)
    return step


@guide_step
def online_recovery(env) -> ops.Step:
    p, step, servers = env.params, ops.Step("online recovery"), failover.database_remotes(env)
    data = p.postgres["data_dir"].rstrip("/")
    for r in servers:
        postgres.ensure_file(step, r, REJOIN_PROGRAM, rejoin_program(p), owner="root:root", mode="755",
                             make_dir=True)
        postgres.ensure_file(step, r, SUDOERS, sudoers(p), owner="root:root", mode="440")
        postgres.ensure_file(step, r, f"{data}/{FIRST_STAGE}", first_stage_script(p), owner="postgres:postgres", mode="700")
        postgres.ensure_file(step, r, f"{data}/{REMOTE_START}", remote_start_script(p), owner="postgres:postgres",
                             mode="700")
    for r in servers:
        peers = [o for o in servers if o is not r]
        failover.pin_host_keys(step, r, peers)
        for other in peers:
            failover.authorize(step, r, other, peer_options(other), f"to run {REJOIN_PROGRAM} only")
    for database in ("template1", "postgres"):   # pgpool up to 4.3 calls the functions in template1, later in postgres
        if postgres.known(env.primary, "SELECT count(*) FROM pg_extension WHERE extname = 'pgpool_recovery'",
                          database=database).value == "0":
            step.do(ops.Sql(env.primary, "postgres", database=database, statement=("CREATE EXTENSION pgpool_recovery;",),
                            summary=f"pgpool_recovery in {database}"))
        else:
            step.note(env.primary, f"pgpool_recovery is in {database}")
    vm3, path = env.pgpool, pgpool_host.conf(p, "pgpool.conf")
    change = postgres.edit(vm3, path, lambda text: pgpoolconf.set_settings(text, recovery_settings(p)))
    if change:
        pgpool_host.restart_pgpool(step.do(change), env)
    else:
        step.note(vm3, f"{path} already names the recovery commands")
    return step.verify("each server may ask each other to rejoin, and pgpool knows how", partial(ready, env))


def ready(env) -> str:
    lines = []
    for r in failover.database_remotes(env):
        for other in failover.database_remotes(env):
            if other is r:
                continue
            command = f"ssh {failover_scripts.ssh_options()} postgres@{other.host.address} ready"
            out = r.run(command, user="postgres", check=False, reads_only=True)
            expect(out.ok and "ready" in out.stdout, f"postgres on {r.host.name} cannot ask {other.host.name}: "
                   f"{out.stderr.strip() or out.stdout.strip()}", "provision again (Step 45): keys, known_hosts and "
                   f"{REJOIN_PROGRAM} on every server.")
            lines.append(f"{prompt(r, 'postgres')}ssh … postgres@{other.host.address} ready\n{out.stdout.strip()}")
    with pgpool_client.via_pgpool(env)() as conn:
        res = conn.pgconn.exec_(b"PGPOOL SHOW recovery_1st_stage_command")
        value = res.get_value(0, 0).decode() if res.ntuples else ""
    expect(value == FIRST_STAGE, f"pgpool runs with recovery_1st_stage_command = {value!r}.",
           "restart pgpool (systemctl restart pgpool2) so that it reads pgpool.conf again.")
    lines.append(f"{pgpool_client.through_pgpool_prompt(env)}PGPOOL SHOW "
                 f"recovery_1st_stage_command\n{value}")
    return "\n".join(lines)


# --- the drill's way back --------------------------------------------------------------------------------
def log_lines(remote) -> int:
    return int(remote.run(f"cat {REJOIN_LOG} 2>/dev/null | wc -l", user="root").stdout.strip() or 0)


def recover_node(env, remote, outcome=None) -> ops.Step:
    """The failed primary back through pgpool: pcp_recovery_node, then what its rejoin-standby logged
    (with the drill's `outcome`, the count of commits only it held among the figures), then every node up."""
    step, name = ops.Step("pcp_recovery_node"), remote.host.name
    n, before = cluster.node_id(env, remote), log_lines(remote)
    command = pgpool_host.pcp(env, "pcp_recovery_node", f"-n {n}")
    step.do(ops.Command(env.pgpool, "postgres", command, summary=f"node {n} ({name}) recovered by pgpool",
                        timeout=env.params.options["step_timeout"],
                        hint=f"read {REJOIN_LOG} on {name} and the primary's PostgreSQL log"))

    def what_it_did():
        logged = [l.split(" ", 1) for l in remote.run(f"tail -n +{before + 1} {REJOIN_LOG}", user="root").lines if " " in l]
        said = [text for _, text in logged]
        counted = [l for l in said if " commits past it that " in l]
        expect(counted and said[-1].startswith("started"), f"{REJOIN_LOG} on {name} does not end with the server "
               f"started, or does not say what {name} held past the switch point: {said}", f"read {REJOIN_LOG} on {name}.")
        if outcome is not None:
            rejoin.count_into(outcome, step, remote, int(counted[-1].split(" holds ")[1].split()[0]))
            stamps = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t, _ in logged]
            outcome.measured[RECOVERY_TOOK] = (stamps[-1] - stamps[0]).total_seconds()
        return f"{name}: {REJOIN_LOG}:\n" + "\n".join(f"  {l}" for l in stable(said, name))
    return step.verify(f"what {name} did", what_it_did).verify("every node up in pgpool", partial(cluster.all_up, env))


def stable(said: list[str], name: str) -> list[str]:
    """rejoin-standby's lines as the stored output shows them: positions, timelines, times and counts named."""
    out, rewind = [], []
    for line in said + [""]:
        if line.startswith(("pg_rewind", "pg_basebackup")):
            rewind.append(line)
            continue
        if rewind:
            out.extend(rejoin.rewind_output("\n".join(rewind)).splitlines())
            rewind = []
        if " commits past it that " in line:
            line = (f"switch point <lsn> on timeline <n>: {name} holds <n> commits past it that the new primary never "
                    "received (counted among the figures)")
        line = re.sub(rf"{re.escape(rejoin.DIVERGED)}\d{{8}}T\d{{6}}Z: \d+ WAL files", f"{rejoin.DIVERGED}<time>: its WAL files", line)
        if line:
            out.append(positions_named(line))
    return out
