"""Notebook 03, Steps 40-43: what the guide leaves out, so that the cluster survives its primary.

pgpool detects a failed server (its health check, lib.pgpool_host.HEALTH_CHECK) and detaches it. For a
standby that is all. For the primary, pgpool runs `failover_command`: our failover.sh, as postgres
on the pgpool host, waits for a clean stop's hand-over, promotes the most advanced standby over SSH
and fences the old primary. Afterwards `follow_primary_command` (follow_primary.sh) points every
other running standby at the new primary, and `failback_command` (failback.sh) keeps a node attached
only once the primary sees it caught up. The failed primary itself comes back later, through
lib.rejoin (provisioning runs it, lib.heal): pg_rewind, which needs wal_log_hints (Part 1, Step 2).
"""
from __future__ import annotations

import shlex
from functools import partial

from lib import clone_guard, ops, part2, pgconf, pgpool_client, pgpoolconf, postgres, remote_commands, tls
from lib.ops import guide_step
from lib.part1 import PGPASS, REPLICATION_ROLE, pgpass_file
from lib.pgpool_host import HOME, LOG_DIR, PGPOOL_ROLE, conf
from lib.postgres import auth_method, conf_file, hba_type
from lib.roles import sql_literal
from lib.show import expect, prompt

#: postgres's own key on the pgpool host: failover.sh logs in with it to promote a server
SSH_DIR = f"{HOME}/.ssh"
KEY = f"{SSH_DIR}/id_ed25519_pgguide"
KNOWN_HOSTS = f"{SSH_DIR}/known_hosts"
KEY_COMMENT = "postgres@{}-pgguide"
AUTHORIZED_KEYS = f"{SSH_DIR}/authorized_keys"
FAILOVER_LOG = f"{LOG_DIR}/failover.log"
#: what pg_rewind reads on its source server, granted so that replicator need not be a superuser
#: what failover.sh runs on a server whose commits would wait for a standby that is gone (Step 44),
#: how failback.sh finds that it did, and how it undoes it
SUSPEND_SQL = "ALTER SYSTEM SET synchronous_standby_names = ''"
SUSPENDED_SQL = ("SELECT count(*) FROM pg_file_settings WHERE name = 'synchronous_standby_names' "
                 "AND sourcefile LIKE '%/postgresql.auto.conf'")
RESUME_SQL = "ALTER SYSTEM RESET synchronous_standby_names"
REWIND_FUNCTIONS = ("pg_catalog.pg_ls_dir(text, boolean, boolean)", "pg_catalog.pg_stat_file(text, boolean)",
                    "pg_catalog.pg_read_binary_file(text)",
                    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)")


def database_remotes(env) -> list:
    return [env.primary, *env.standbys]


def ssh_options() -> str:
    return (f"-i {KEY} -o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=yes "
            f"-o UserKnownHostsFile={KNOWN_HOSTS}")


def standby_conninfo(params, primary_address: str, name: str) -> str:
    """primary_conninfo without a password: libpq reads it from ~postgres/.pgpass."""
    return (f"host={primary_address} port={params.postgres['port']} user={REPLICATION_ROLE} "
            f"application_name={name} passfile={PGPASS} {tls.conninfo_text(params)}")


# --- Step 40 ---------------------------------------------------------------------------------------------
def peer_hba_lines(env, remote) -> list[str]:
    """On each server: replication and pg_rewind's session from each other server."""
    kind, method = hba_type(env.params), auth_method(env.params)
    return [f"{kind} {database} {REPLICATION_ROLE} {other.host.address}/32 {method}"
            for other in database_remotes(env) if other is not remote for database in ("replication", "postgres")]


@guide_step
def every_server_can_lead(env) -> ops.Step:
    step, p = ops.Step("ready to lead"), env.params
    wanted = postgres.primary_settings(p)
    for r in database_remotes(env):
        if r is not env.primary:
            postgres.edit_step(step, r, conf_file(r, "postgresql.conf"), lambda text: pgconf.set_settings(text, wanted))
        postgres.edit_step(step, r, conf_file(r, "pg_hba.conf"),
                           lambda text, r=r: pgconf.add_hba_records(text, peer_hba_lines(env, r)))
        pgpass_file(step, r)
    missing = [f for f in REWIND_FUNCTIONS if postgres.value(
        env.primary, f"SELECT has_function_privilege({sql_literal(REPLICATION_ROLE)}, {sql_literal(f)}, 'EXECUTE')") != "t"]
    if missing:
        step.do(ops.Sql(env.primary, "postgres", statement=("\n".join(
            f"GRANT EXECUTE ON FUNCTION {f} TO {REPLICATION_ROLE};" for f in missing),),
            summary=f"{REPLICATION_ROLE} may run what pg_rewind reads"))
    else:
        step.note(env.primary, f"{REPLICATION_ROLE} may already run what pg_rewind reads")
    for r in database_remotes(env):
        hba_edited = any(isinstance(a, ops.FileChange) and a.remote is r and a.path == conf_file(r, "pg_hba.conf")
                         for a in step.actions)
        if hba_edited and not postgres.settings_differing(r, wanted):
            step.notify(ops.service(r, "reload", p.postgres["service"]))     # new pg_hba lines take effect
        else:
            postgres.settle(step, r, wanted)

    def shown():
        rows = []
        for r in database_remotes(env):
            found = {n: postgres.value(r, f"SHOW {n}") for n in ("wal_log_hints", "max_wal_senders", "listen_addresses")}
            expect(found["wal_log_hints"] == "on", f"{r.host.name} runs with wal_log_hints = {found['wal_log_hints']}.",
                   "pg_rewind cannot rewind a server without it: provision again (Step 2, Step 40), which restarts it.")
            rows.append(f"{prompt(r, 'postgres')}psql -c \"SHOW wal_log_hints\"  →  {found['wal_log_hints']}")
        return "\n".join(rows)
    return step.verify("every server logs hint bits for pg_rewind", shown)


# --- Step 41 ---------------------------------------------------------------------------------------------
def host_key(remote) -> str:
    """The host's own ed25519 key (`ssh-ed25519 AAAA…`), read over our SSH connection, whose host
    key is already checked."""
    return " ".join(remote.run("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2])


def make_key(step: ops.Step, remote) -> ops.Step:
    """A key pair for postgres on `remote`, made there: its private half never travels."""
    k = shlex.quote(KEY)
    if remote.run(f"test -f {k} && test -f {k}.pub", user="root", check=False).ok:
        return step.note(remote, f"{KEY} exists")
    return step.do(ops.Command(remote, "postgres", f"install -d -m 700 {SSH_DIR} && "
                               f"ssh-keygen -q -t ed25519 -N '' -C {KEY_COMMENT.format(remote.host.name)} -f {k}",
                               summary=f"a key for postgres on {remote.host.name}"))


@guide_step
def postgres_key(env) -> ops.Step:
    """A key pair for postgres on the pgpool host."""
    return make_key(ops.Step("postgres key"), env.pgpool)


def trusted_line(source) -> str:
    """authorized_keys' options for the pgpool host's key: from its address only, nothing forwarded, and
    no shell: only the commands the scripts send (lib.remote_commands)."""
    return f'from="{source.host.address}",restrict,command="{remote_commands.PROGRAM}"'


def sent_commands(params) -> list[str]:
    """Every command postgres of the pgpool host sends to a server: the scripts' (Step 42), the hand-over
    watch, and the reachability and login checks."""
    scripts = [failover_script(params), follow_script(params), failback_script(params)]
    return remote_commands.patterns(scripts, [_handover_watch(params), "true", "hostname"])


def _replace_lines(path: str, drop: str, prefix: str, owner: str, mode: str) -> str:
    """Shell: in `path`, lines matching the grep pattern `drop` replaced by `prefix` and the text on stdin,
    written whole, with owner and mode (replace_line, lib.host_functions)."""
    return " ".join(["replace_line", *map(shlex.quote, (path, drop, owner, mode, prefix))])


def pin_host_keys(step: ops.Step, on, remotes) -> None:
    """postgres's known_hosts on `on` pins each remote's host key, read over our own checked SSH
    connections, never trusted on first use."""
    known = on.run(f"cat {KNOWN_HOSTS} 2>/dev/null || true", user="root").stdout.splitlines()
    for r in remotes:
        pinned = f"{r.host.address} {host_key(r)}"
        if pinned in known and not any(l.startswith(r.host.address + " ") and l != pinned for l in known):
            step.note(on, f"{KNOWN_HOSTS} pins {r.host.name}'s host key")
            continue
        step.do(ops.Relay(on, "root", source=r, read="cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub",
                          write=_replace_lines(KNOWN_HOSTS, f"^{r.host.address} ", f"{r.host.address} ",
                                               "postgres:postgres", "644"),
                          summary=f"{KNOWN_HOSTS}: {r.host.name}'s host key pinned"))


def authorize(step: ops.Step, target, source, options: str, said: str) -> None:
    """postgres on `target` lets postgres of `source` in with its key, under authorized_keys' `options`.
    The key goes from the host that has it to the host that trusts it (ops.Relay), so the run record's
    commands.sh works on other hosts too."""
    public = source.run(f"cat {shlex.quote(KEY)}.pub", user="root",
                        hint="the key is made just before: run that cell first").stdout.strip()
    have = target.run(f"cat {AUTHORIZED_KEYS} 2>/dev/null || true", user="root").stdout
    if f"{options} {public}" in have.splitlines():
        step.note(target, f"{AUTHORIZED_KEYS} lets postgres of {source.host.name} in, {said}")
        return
    step.do(ops.Relay(target, "root", source=source, source_user="root", read=f"cat {KEY}.pub",
                      write=f"install -d -o postgres -g postgres -m 700 {SSH_DIR} && " + _replace_lines(
                          AUTHORIZED_KEYS, f"{KEY_COMMENT.format(source.host.name)}$",
                          options + " ", "postgres:postgres", "600"),
                      summary=f"{AUTHORIZED_KEYS}: postgres of {source.host.name} may log in, {said}"))


@guide_step
def ssh_trust(env) -> ops.Step:
    """postgres on the pgpool host may log in as postgres on each server with that key, from the
    pgpool host's address only, to servers whose host keys are pinned."""
    vm3, step = env.pgpool, ops.Step("ssh trust")
    pin_host_keys(step, vm3, database_remotes(env))
    allowed = remote_commands.program(sent_commands(env.params))
    for r in database_remotes(env):
        postgres.ensure_file(step, r, remote_commands.PROGRAM, allowed, owner="root:root", mode="755", make_dir=True)
        authorize(step, r, vm3, trusted_line(vm3), "from its address only, for the failover scripts' commands only")

    def logs_in():
        lines = []
        for r in database_remotes(env):
            command = f"ssh {ssh_options()} postgres@{r.host.address} hostname"
            out = vm3.run(command, user="postgres", check=False)
            expect(out.ok, f"postgres on {vm3.host.name} cannot log in to {r.host.name}: "
                           f"{out.stderr.strip() or out.stdout.strip()}",
                   f"check {AUTHORIZED_KEYS} on {r.host.name} and {KNOWN_HOSTS} on {vm3.host.name} (provision again).")
            lines.append(f"{prompt(vm3, 'postgres')}{command}\n{out.stdout.strip()}")
        return "\n".join(lines)
    return step.verify("postgres on the pgpool host logs in to each server", logs_in)


# --- Step 42 ---------------------------------------------------------------------------------------------
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


def _handover_watch(params) -> str:
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
ended=$(ssh -o ConnectTimeout={ANSWER_S} {ssh_options()} postgres@"$failed_host" {shlex.quote(_handover_watch(params))} 2>/dev/null) || ended=silent
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
standbys() {{
    {_pcp(params, "pcp_node_info")} 2>/dev/null | awk -v failed="$failed" \\
        '{{ if (NR - 1 != failed && ($5 == "up" || $5 == "waiting")) print NR - 1, $1 }}'
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


@guide_step
def failover_commands(env) -> ops.Step:
    vm3, p, step = env.pgpool, env.params, ops.Step("failover commands")
    d = p.pgpool["conf_dir"]
    for name, text in ((FAILOVER_SCRIPT_NAME, failover_script(p)), (FOLLOW_SCRIPT_NAME, follow_script(p)),
                       (FAILBACK_SCRIPT_NAME, failback_script(p))):
        postgres.ensure_file(step, vm3, f"{d}/{name}", text, owner="root:postgres", mode="750")
    if not vm3.run(f"test -f {FAILOVER_LOG}", user="root", check=False).ok:
        step.do(ops.Command(vm3, "root", f"install -o postgres -g postgres -m 640 /dev/null {FAILOVER_LOG}",
                            summary=f"created {FAILOVER_LOG}"))
    postgres.edit_step(step, vm3, conf(p, "pgpool.conf"),
                       lambda text: pgpoolconf.set_settings(text, failover_settings(p)))
    return step


def running_commands(env) -> str:
    """pgpool runs with our commands (PGPOOL SHOW, through pgpool)."""
    lines = []
    with pgpool_client.via_pgpool(env)() as conn:
        for name, wanted in failover_settings(env.params).items():
            res = conn.pgconn.exec_(f"PGPOOL SHOW {name}".encode())
            value = res.get_value(0, 0).decode() if res.ntuples else ""
            expect(value == wanted, f"pgpool runs with {name} = {value!r}.",
                   "restart pgpool (Step 43) so that it reads pgpool.conf again.")
            lines.append(f"{name} = '{value}'")
    return f"{pgpool_client.through_pgpool_prompt(env)}PGPOOL SHOW …\n" + "\n".join(lines)


@guide_step
def failover_ready(env) -> ops.Step:
    return ops.Step("failover ready").verify("pgpool runs with the failover commands", partial(running_commands, env)) \
        .verify("every node up", partial(part2.nodes_as_wanted, env))


# --- Step 44 ---------------------------------------------------------------------------------------------
def synchronous_settings(params) -> dict:
    """postgresql.conf on every server. With postgres.synchronous a commit is acknowledged once any
    one standby has flushed it (ANY 1 of the servers' application names, the same list everywhere,
    so that whichever server leads waits for the others); otherwise once the primary has it, as
    the guide builds it."""
    names = ", ".join(f'"{name}"' for name in sorted(h.name for h in params.database_hosts))  # whatever the roles
    return {"synchronous_standby_names": f"ANY 1 ({names})" if params.postgres["synchronous"] else "",
            "synchronous_commit": "on"}


def suspended(remote) -> bool:
    """failover.sh has suspended synchronous commit on this server (postgresql.auto.conf)."""
    return postgres.value(remote, SUSPENDED_SQL) != "0"


def streaming_standbys(remote) -> int:
    return int(postgres.value(remote, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"))


@guide_step
def commit_acknowledgement(env) -> ops.Step:
    step, p = ops.Step("when a commit is acknowledged"), env.params
    wanted = synchronous_settings(p)
    for r in database_remotes(env):
        path = conf_file(r, "postgresql.conf")
        postgres.edit_step(step, r, path, lambda text: pgconf.set_settings(text, wanted))
        if suspended(r):
            expect(r is not env.primary or streaming_standbys(r) > 0,
                   f"failover.sh suspended synchronous commit on {r.host.name} when no standby was left, and still "
                   f"no standby streams from it: making commits wait now would stop every write.",
                   "bring a standby back (notebook 04: rejoin); attaching it resumes synchronous commit (failback.sh).")
            step.do(ops.Sql(r, "postgres", statement=(f"{RESUME_SQL};\nSELECT pg_reload_conf();",),
                            summary=f"synchronous commit resumed on {r.host.name} (failover.sh had suspended it)"))
        elif any(isinstance(a, ops.FileChange) and a.remote is r for a in step.actions) \
                or postgres.settings_differing(r, wanted):
            step.notify(ops.service(r, "reload", p.postgres["service"]))     # both settings take a reload
        else:
            step.note(r, "configuration unchanged and in effect: no reload needed")

    def shown():
        primary = env.primary
        names = postgres.value(primary, "SHOW synchronous_standby_names")
        expect(names == wanted["synchronous_standby_names"],
               f"{primary.host.name} runs with synchronous_standby_names = '{names}'.",
               "provision again (Step 44), which reloads it.")
        rows = postgres.psql_read(primary, "SELECT application_name, state, sync_state FROM pg_stat_replication "
                                           "ORDER BY application_name")
        states = [l.split("|")[-1].strip() for l in rows.splitlines()[3:-1]]
        want = "quorum" if p.postgres["synchronous"] else "async"
        expect(states and all(s == want for s in states), f"the standbys' sync_state is {states}, not {want}.",
               "check that each standby's application_name (primary_conninfo) is its host name.")
        return (f"{prompt(primary, 'postgres')}psql -c \"SHOW synchronous_standby_names\"  →  '{names}'\n{rows}")
    return step.verify("commits wait for a standby" if p.postgres["synchronous"] else
                       "commits are acknowledged by the primary alone", shown)
