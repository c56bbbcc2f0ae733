"""The commands pgpool runs when a server fails or comes back (Step 42): failover.sh, follow_primary.sh and
failback.sh, written from the parameters, with the SQL they send and the bounds they keep. They run as postgres
on the pgpool host and reach the servers over SSH with postgres's own key (Step 41)."""
from __future__ import annotations

import shlex

from lib import clone_guard, tls
from lib.part1 import PGPASS, REPLICATION_ROLE
from lib.pgpool_host import HOME, LOG_DIR, PGPOOL_ROLE

#: postgres's own key on the pgpool host: failover.sh logs in with it to promote a server
SSH_DIR = f"{HOME}/.ssh"
KEY = f"{SSH_DIR}/id_ed25519_pgguide"
KNOWN_HOSTS = f"{SSH_DIR}/known_hosts"
FAILOVER_LOG = f"{LOG_DIR}/failover.log"
#: what failover.sh runs on a server whose commits would wait for a standby that is gone (Step 44),
#: how failback.sh finds that it did, and how it undoes it
SUSPEND_SQL = "ALTER SYSTEM SET synchronous_standby_names = ''"
SUSPENDED_SQL = ("SELECT count(*) FROM pg_file_settings WHERE name = 'synchronous_standby_names' "
                 "AND sourcefile LIKE '%/postgresql.auto.conf'")
RESUME_SQL = "ALTER SYSTEM RESET synchronous_standby_names"


def standby_conninfo(params, primary_address: str, name: str) -> str:
    """primary_conninfo without a password: libpq reads it from ~postgres/.pgpass."""
    return (f"host={primary_address} port={params.postgres['port']} user={REPLICATION_ROLE} "
            f"application_name={name} passfile={PGPASS} {tls.conninfo_text(params)}")


def ssh_options() -> str:
    return (f"-i {KEY} -o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=yes "
            f"-o UserKnownHostsFile={KNOWN_HOSTS}")


def _pcp(params, tool: str) -> str:
    """A pcp command in the scripts: postgres on the pgpool host, its password from ~/.pcppass."""
    return f"{tool} -h localhost -p {params.pgpool['pcp_port']} -U {PGPOOL_ROLE} -w"


def application_names(params) -> str:
    """A shell case's branches: each server's address sets name= to its application_name."""
    return "\n".join(f"    {h.address}) name={h.name} ;;" for h in sorted(params.database_hosts, key=lambda h: h.address))


def _functions() -> str:
    """What the scripts share: a log line, and a command as postgres on a server over SSH."""
    return f"""log() {{ echo "$(date +%s.%N) $*" >> {FAILOVER_LOG}; }}
on() {{ ssh {ssh_options()} postgres@"$1" "$2"; }}"""


#: psql on a server: synchronous commit suspended (failover.sh) or resumed (failback.sh), Step 44
_Q = '\\"'            # a double quote inside the scripts' double-quoted remote commands
SUSPEND = f"psql -Xq -c {_Q}{SUSPEND_SQL}{_Q} -c 'SELECT pg_reload_conf()'"
RESUME = f"psql -Xq -c {_Q}{RESUME_SQL}{_Q} -c 'SELECT pg_reload_conf()'"
#: how long failover.sh waits for a failed primary whose host still answers to hand its WAL over (a clean
#: shutdown sends every record up to its shutdown checkpoint to the standbys still connected)
HANDOVER_S = 10
#: a standby stops receiving from the failed primary (its WAL receiver ends; follow_primary.sh re-points it)
UNFOLLOW_SQL = "ALTER SYSTEM SET primary_conninfo = ''"
#: how long it waits for the failed primary's host to answer SSH at all: past that, promote at once
ANSWER_S = 2
#: a standby is attached (follow_primary.sh, rejoin) only once the primary sees it streaming with replay
#: within this many bytes of the primary's WAL position
ATTACH_LAG_BYTES = 1024 * 1024
#: a primary whose host did not answer is fenced once it answers again, if it does within this; failover.sh
#: leaves a watcher behind for that, which asks every WATCH_EVERY_S
FENCE_WATCH_S = 900
WATCH_EVERY_S = 2
#: on the pgpool host: a planned switchover (lib.switchover) names its target here, as "ADDRESS EXPIRY" (epoch
#: seconds); failover.sh promotes it when it holds as much WAL as the most advanced standby, and removes the file
SWITCHOVER_TO = f"{HOME}/pgguide-switchover-to"
#: 'in recovery|timeline' of a running server: a primary's from the WAL file it writes now (pg_control's
#: timeline waits for the first checkpoint after a promotion), 0 for a standby
TIMELINE_SQL = ("SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN 0 "
                "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END")


def replicating_sql(name: str) -> str:
    """On the primary: 't' when the standby whose application_name is `name` replicates from it (its WAL
    sender streams or catches up); a standby that forked off never gets that far."""
    return (f"SELECT count(*) > 0 FROM pg_stat_replication WHERE application_name = '{name}' "
            "AND state IN ('streaming', 'catchup')")


def caught_up_sql(name: str) -> str:
    """On the primary: 't' when the standby whose application_name is `name` streams from it and has
    replayed to within ATTACH_LAG_BYTES of its WAL position, else nothing or 'f'."""
    return (f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) <= {ATTACH_LAG_BYTES} FROM pg_stat_replication "
            f"WHERE application_name = '{name}' AND state = 'streaming'")


def handover_watch(params) -> str:
    """Shell, run as postgres on the failed primary's host: waits up to HANDOVER_S for its server to
    end, and prints how it ended: `shutdown LSN` (cleanly, its last checkpoint), `crashed` (its
    postmaster is gone without a clean shutdown), or `running` (it still runs)."""
    p = params.postgres
    data, controldata = shlex.quote(p["data_dir"].rstrip("/")), f"/usr/lib/postgresql/{int(p['version'])}/bin/pg_controldata"
    return (f"d={data}; for _ in $(seq 1 {HANDOVER_S * 5}); do "
            f"pid=$(head -1 $d/postmaster.pid 2>/dev/null); "
            f"if [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null; then sleep 0.2; continue; fi; "
            f"c=$(LC_ALL=C {controldata} -D $d); "
            f"if echo \"$c\" | grep -q '^Database cluster state: *shut down$'; then "
            f"echo \"shutdown $(echo \"$c\" | sed -n 's/^Latest checkpoint location: *//p')\"; else echo crashed; fi; exit 0; "
            f"done; echo running")


def failover_script(params) -> str:
    """When the primary fails: wait for its hand-over if its host answers (bounded), promote the
    standby holding the most WAL (ties: the lowest node id), fence the failed primary so that it can
    start only as a standby. pgpool then finds the new primary itself (its primary search), whichever
    node that is. With postgres.synchronous it also suspends synchronous commit where commits would
    otherwise wait for a standby that is gone."""
    p, synchronous = params.postgres, params.postgres["synchronous"]
    promoted = ", with synchronous commit suspended until a standby is attached" if synchronous else ""
    promote = f"pg_ctlcluster {int(p['version'])} {p['cluster']} promote"
    standby_failed = """    log "node $failed ($failed_host) detached: a standby; nothing to promote"
    exit 0"""
    if synchronous:
        others = ("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
                  "AND host(client_addr) <> '$failed_host'")
        standby_failed = f"""    log "node $failed ($failed_host) detached: a standby; nothing to promote"
    # synchronous commit (Step 44): with no other standby streaming, every commit would wait for ever.
    # One SSH round trip (asked and suspended on the primary): pgpool takes no new session meanwhile.
    if [ "$(on "$primary_host" "[ \\$(psql -XAtc \\"{others}\\") = 0 ] && {SUSPEND} >/dev/null && echo suspended")" = suspended ]; then
        log "synchronous commit suspended on $primary_host: no standby left to wait for"
    fi
    exit 0"""
        # suspended before the promotion: the new primary's first commits must not wait for the failed one
        promote = f"{SUSPEND} >/dev/null; {promote}"
    data = shlex.quote(p["data_dir"].rstrip("/"))
    fence = (f"touch {data}/standby.signal && sed -i '/^primary_conninfo/d' {data}/postgresql.auto.conf && "
             f"echo \\\"fenced_at=\\$(date +%s) new_primary=$best_host\\\" > {shlex.quote(clone_guard.fence_marker(params))}")
    timeline = f"psql -XAtc {_Q}{TIMELINE_SQL}{_Q}"
    stop = f"pg_ctlcluster {int(p['version'])} {p['cluster']} stop -m fast"
    position = ("SELECT pg_is_in_recovery(), l, l - '0/0'::pg_lsn, coalesce((SELECT status FROM pg_stat_wal_receiver), "
                "'none') FROM (SELECT coalesce(greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), '0/0') AS l) AS s")
    return f"""#!/bin/bash
# pgpool runs this as postgres on the pgpool host when it detaches a node (written by pgguide):
#   failover_command = '{FAILOVER_SCRIPT} %d %h %P %m %H %N'
# %d: the node detached, %h: its host, %P: the primary before, %m: the new main node, %H: its host,
# %N: the primary's host before
set -u
# shellcheck disable=SC2034  # every argument pgpool passes is named here, the ones this script needs or not
failed=$1 failed_host=$2 old_primary=$3 new_main=$4 new_host=$5 primary_host=$6
{_functions()}
if [ "$failed" != "$old_primary" ]; then
{standby_failed}
fi
log "primary node $failed ($failed_host) failed"
bytes() {{ echo $(( (16#${{1%/*}} << 32) + 16#${{1#*/}} )); }}

# 1. The hand-over. A primary that shuts down cleanly sends every WAL record, up to its shutdown checkpoint,
#    to the standbys still connected before it exits: promoting a standby before that ends the hand-over and
#    throws away what it had not yet received. So when the failed primary's host answers, wait for it.
ended=$(ssh -o ConnectTimeout={ANSWER_S} {ssh_options()} postgres@"$failed_host" {shlex.quote(handover_watch(params))} 2>/dev/null) || ended=silent
checkpoint=
case $ended in
    shutdown*) checkpoint=${{ended#shutdown }}
               log "node $failed ($failed_host) shut down cleanly: its last checkpoint is $checkpoint" ;;
    crashed)   log "node $failed ($failed_host) stopped without a clean shutdown: no hand-over" ;;
    running)   log "node $failed ($failed_host) still runs after {HANDOVER_S} s: promoting without its hand-over" ;;
    *)         log "node $failed ($failed_host): its host does not answer: promoting at once" ;;
esac

# 2. The standbys pgpool uses, and how much WAL each holds; the most advanced one is promoted (ties: the
#    lower node id), so that with synchronous commit (ANY 1) the new primary holds every acknowledged commit.
#    pgpool is asked one node at a time, never about the failed one: for each node it asks, pgpool also asks the
#    server itself, and a host that does not answer holds that for connect_timeout (10 s, measured).
standbys() {{
    local id count
    count=$({_pcp(params, "pcp_node_count")} 2>/dev/null) || return 0
    for ((id = 0; id < count; id++)); do
        [ "$id" = "$failed" ] && continue
        {_pcp(params, "pcp_node_info")} -n "$id" 2>/dev/null | awk -v id="$id" \\
            '{{ if ($5 == "up" || $5 == "waiting") print id, $1 }}'
    done
}}
# a planned switchover's target (lib.switchover), while it has not expired: preferred among the most advanced
read -r wanted until < {SWITCHOVER_TO} 2>/dev/null && [ "${{until:-0}}" -ge "$(date +%s)" ] || wanted=
choose() {{
    best='' best_host='' best_bytes=-1 held='' streaming=0
    while read -r id host; do
        row=$(on "$host" "psql -XAtc \\"{position}\\"" </dev/null 2>/dev/null) || continue
        IFS='|' read -r recovery lsn at receiver <<< "$row"
        [ "$recovery" = t ] || continue
        [ "$receiver" = streaming ] && streaming=$((streaming + 1))
        held="$held, node $id ($host) $lsn"
        if [ "$at" -gt "$best_bytes" ] || {{ [ "$at" -eq "$best_bytes" ] && [ "$host" = "$wanted" ]; }}; then
            best=$id best_host=$host best_bytes=$at
        fi
    done < <(standbys)
}}
choose
if [ -n "$checkpoint" ]; then
    until [ -z "$best" ] || [ "$best_bytes" -ge "$(bytes "$checkpoint")" ] || [ "$SECONDS" -ge {HANDOVER_S} ]; do
        sleep 0.2; choose
    done
    if [ -n "$best" ] && [ "$best_bytes" -ge "$(bytes "$checkpoint")" ]; then
        log "hand-over complete: node $best ($best_host) has received the shutdown checkpoint"
    else
        log "hand-over incomplete after {HANDOVER_S} s: no standby has received up to $checkpoint"
    fi
fi
# WAL the old primary sent before it went may still wait in a standby's socket, unread (its WAL receiver
# busy or stalled): that standby would end up ahead of the one promoted, forked off. Its receiver stops
# streaming only once it has read up to the closed connection, so wait for that (not for a silent host,
# whose connections stay open until wal_receiver_timeout).
if [ "$ended" != silent ] && [ "$ended" != running ]; then
    until [ "$streaming" -eq 0 ] || [ "$SECONDS" -ge {HANDOVER_S} ]; do
        sleep 0.2; choose
    done
    if [ "$streaming" -eq 0 ]; then
        log "every standby has read all that reached it of node $failed's WAL"
    else
        log "$streaming standby(s) still stream after {HANDOVER_S} s: deciding on what they hold now"
    fi
fi
# A primary that did not stop may still send WAL: a silent host once its network is back (its connections
# outlive a short outage), one still running. A standby that received it after the promotion would have
# forked off. So every standby stops listening to it first, and its position is read again after that.
if [ "$ended" = silent ] || [ "$ended" = running ]; then
    while read -r id host; do
        on "$host" "psql -XAtqc \\"{UNFOLLOW_SQL}\\" -c 'SELECT pg_reload_conf()'" </dev/null >/dev/null 2>&1 &&
            log "node $id ($host) stopped receiving from node $failed"
    done < <(standbys)
    sleep 0.5; choose
fi
if [ -z "$best" ]; then
    log "no standby is left to promote"
    exit 1
fi
log "standbys:${{held#,}}"
if [ -n "$wanted" ]; then
    rm -f {SWITCHOVER_TO}
    [ "$best_host" = "$wanted" ] && log "a planned switchover to $wanted: it holds as much WAL as any standby" || \
        log "a planned switchover to $wanted: it holds less WAL than node $best ($best_host), which is promoted instead"
fi
log "promoting node $best ($best_host): the most advanced standby"

# 3. The fence: started again, the failed primary comes up as a standby that follows nobody, read-only,
#    never a second primary, until it is rejoined (its WAL may run past the promotion: only a rewind can tell).
if [ "$ended" != silent ] && on "$failed_host" "{fence}"; then
    log "node $failed ($failed_host) fenced: it can start only as a standby that follows nobody, until it is rejoined"
fi
if on "$best_host" "{promote}" >> {FAILOVER_LOG} 2>&1; then
    log "node $best ($best_host) promoted{promoted}"
else
    log "promoting node $best ($best_host) FAILED"
    exit 1
fi
[ "$ended" = silent ] || exit 0

# 4. A host that did not answer may still run its server as a primary, on the old timeline: when it answers
#    again, stop and fence it, once both servers prove it (the new primary on a later timeline), and log
#    what it found. In the background, detached: pgpool waits for this script.
fence_when_back() {{
    local old new
    until ssh -o ConnectTimeout={ANSWER_S} {ssh_options()} postgres@"$failed_host" true </dev/null 2>/dev/null; do
        [ "$SECONDS" -lt {FENCE_WATCH_S} ] || {{
            log "node $failed ($failed_host) did not answer within {FENCE_WATCH_S} s: not fenced; fence it before it runs again"
            return; }}
        sleep {WATCH_EVERY_S}
    done
    old=$(on "$failed_host" "{timeline}" </dev/null 2>/dev/null)
    new=$(on "$best_host" "{timeline}" </dev/null 2>/dev/null)
    case $old in
        '') on "$failed_host" "{fence}" </dev/null && \\
                log "node $failed ($failed_host) answers again, its server down: fenced" ;;
        t\\|*) log "node $failed ($failed_host) answers again, in recovery: left as it is" ;;
        *) if [ "${{new%%|*}}" = f ] && [ "${{new#*|}}" -gt "${{old#*|}}" ] && \\
                on "$failed_host" "{stop} && {fence}" </dev/null >> {FAILOVER_LOG} 2>&1; then
               log "node $failed ($failed_host) answers again, a primary on timeline ${{old#*|}} beside node $best ($best_host) on timeline ${{new#*|}}: stopped and fenced"
           else
               log "node $failed ($failed_host) answers again, a primary (timeline ${{old#*|}}); node $best ($best_host) answers '$new': left running, for a person to decide"
           fi ;;
    esac
}}
log "node $failed ($failed_host) not fenced: its host does not answer; fenced when it does (within {FENCE_WATCH_S} s)"
fence_when_back </dev/null >/dev/null 2>&1 & disown
"""


def failback_script(params) -> str:
    """Logs the attachment; with postgres.synchronous it also resumes synchronous commit where
    failover.sh suspended it, once a standby streams again."""
    resume = ""
    if params.postgres["synchronous"]:
        due = (f"SELECT ({SUSPENDED_SQL}) > 0 AND "
               "(SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming') > 0")
        resume = f"""
# synchronous commit (Step 44): failover.sh suspended it, and a standby streams again
if [ "$(on "$primary_host" "[ \\$(psql -XAtc \\"{due}\\") = t ] && {RESUME} >/dev/null && echo resumed")" = resumed ]; then
    log "synchronous commit resumed on $primary_host: commits wait for a standby again"
fi"""
    return f"""#!/bin/bash
# pgpool runs this as postgres on the pgpool host when a node is attached again (auto_failback,
# pcp_attach_node, follow_primary.sh) (written by pgguide):
#   failback_command = '{FAILBACK_SCRIPT} %d %h %N'
# %d: the node attached, %h: its host, %N: the primary's host.
set -u
node=$1 host=$2 primary_host=$3
{_functions()}
log "node $node ($host) attached"
# A standby stays attached only if the primary itself sees it replicating (streaming, or catching up
# after a reconnect: lag is for load balancing to weigh, not a reason to detach). auto_failback judges by
# the replication state of pgpool's last check, which during a failover is the old primary's: it can
# attach a standby that has not yet followed the new primary, or that forked off and never will.
case $host in   # the name the primary sees in pg_stat_replication (backend_application_nameN)
{application_names(params)}
esac
if [ "$host" != "$primary_host" ] && [ "$(on "$primary_host" "psql -XAtc \\"{replicating_sql("$name")}\\"" 2>/dev/null)" != t ]; then
    log "node $node ($host) does not stream from $primary_host: detached again until it does"
    # detached once this attachment is over: pgpool handles one request at a time
    (sleep 1; {_pcp(params, "pcp_detach_node")} -n "$node") </dev/null >/dev/null 2>&1 &
    exit 0
fi{resume}
exit 0
"""


def follow_script(params) -> str:
    p = params.postgres
    conninfo = standby_conninfo(params, "$new_host", "$name").replace(f"port={p['port']}", "port=$new_port")
    return f"""#!/bin/bash
# pgpool runs this as postgres on the pgpool host after a new primary took over, once for each other
# node, which it has detached (written by pgguide):
#   follow_primary_command = '{FOLLOW_SCRIPT} %d %h %H %r'
# %d: the node, %h: its host, %H: the new primary's host, %r: its port.
# A running standby is pointed at the new primary and attached again; a server that is down (the
# failed primary) is left for a person to rejoin (pg_rewind: notebook 04).
set -u
node=$1 host=$2 new_host=$3 new_port=$4
{_functions()}
if ! on "$host" "pg_lsclusters --no-header {int(p['version'])} {p['cluster']}" 2>/dev/null | grep -q 'online,recovery'; then
    log "node $node ($host) is not a running standby: left detached (rejoin it with pg_rewind)"
    exit 0
fi
case $host in   # the name pgpool matches in pg_stat_replication (backend_application_nameN)
{application_names(params)}
esac
log "node $node ($host): following the new primary $new_host"
on "$host" "psql -XAtqc \\"ALTER SYSTEM SET primary_conninfo = '{conninfo}'\\" -c 'SELECT pg_reload_conf()'" >/dev/null 2>> {FAILOVER_LOG} || {{
    log "node $node ($host): could not set primary_conninfo"; exit 1; }}
# attached only once the new primary itself sees it streaming and caught up: a standby that forked off
# (ahead of the new primary) connects but never streams, and one that lags would serve stale reads
for _ in $(seq 1 30); do
    if [ "$(on "$new_host" "psql -XAtc \\"{caught_up_sql("$name")}\\"" 2>/dev/null)" = t ]; then
        {_pcp(params, "pcp_attach_node")} -n "$node" >/dev/null 2>> {FAILOVER_LOG}
        log "node $node ($host) streams from $new_host and has replayed its WAL: attached"
        exit 0
    fi
    sleep 1
done
log "node $node ($host) does not stream from $new_host, or lags: left detached (if it forked off, pg_rewind it)"
exit 1
"""


FAILOVER_SCRIPT_NAME, FOLLOW_SCRIPT_NAME, FAILBACK_SCRIPT_NAME = "failover.sh", "follow_primary.sh", "failback.sh"
FAILOVER_SCRIPT = f"/etc/pgpool2/{FAILOVER_SCRIPT_NAME}"
FOLLOW_SCRIPT = f"/etc/pgpool2/{FOLLOW_SCRIPT_NAME}"
FAILBACK_SCRIPT = f"/etc/pgpool2/{FAILBACK_SCRIPT_NAME}"


def failover_settings(params) -> dict:
    d = params.pgpool["conf_dir"]
    return {"failover_command": f"{d}/{FAILOVER_SCRIPT_NAME} %d %h %P %m %H %N",
            "follow_primary_command": f"{d}/{FOLLOW_SCRIPT_NAME} %d %h %H %r",
            "failback_command": f"{d}/{FAILBACK_SCRIPT_NAME} %d %h %N"}
